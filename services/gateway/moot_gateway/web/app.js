// The page: which view the address names, the sign-in form, and navigation without reloads.

import { ApiError, api, session } from "./api.js";
import { fill, h, uid } from "./dom.js";
import { showNewRun } from "./new.js";
import { showRun } from "./run.js";
import { showRuns } from "./runs.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
let leave = null; // what the current view stops (polling, an event stream) when left

function route(path) {
  const run = /^\/runs\/([^/]+)\/?$/.exec(path);
  if (run) return (ctx) => showRun(main, decodeURIComponent(run[1]), ctx);
  if (path === "/new") return (ctx) => showNewRun(main, ctx);
  if (path === "/" || path === "/runs" || path === "/runs/") return (ctx) => showRuns(main, ctx);
  return null;
}

/** Go to a path of the page, as a new entry of the history. */
function navigate(path) {
  history.pushState(null, "", path);
  window.scrollTo(0, 0);
  render({ focus: true });
}

function render({ focus = false, notice = null } = {}) {
  if (leave) leave();
  leave = null;
  const signedIn = Boolean(session.key());
  nav.hidden = !signedIn;
  if (!signedIn) {
    showSignIn(notice);
    return;
  }
  if (location.pathname === "/") history.replaceState(null, "", `/runs${location.search}`);
  const show = route(location.pathname);
  if (!show) {
    document.title = "Not found · moot";
    fill(main, h("h1", {}, "Not found"), h("p", {}, h("a", { href: "/runs" }, "See your runs")));
    return;
  }
  leave = show({ navigate, refused }) || null;
  if (focus) main.focus({ preventScroll: true });
}

/** What a view calls when the API refused the key: back to the sign-in form, saying why. */
function refused(error) {
  if (error instanceof ApiError && error.status === 401) {
    session.signOut();
    render({ notice: error.message });
    return true;
  }
  return false;
}

function showSignIn(notice) {
  document.title = "Sign in · moot";
  const inputId = uid("api-key");
  const errorId = uid("sign-in-error");
  const error = h("p", { id: errorId, class: "field-error", role: "alert" }, notice || "");
  const input = h("input", {
    id: inputId,
    name: "api_key",
    type: "password",
    autocomplete: "off",
    spellcheck: "false",
    required: true,
    "aria-describedby": errorId,
  });
  const button = h("button", { type: "submit" }, "Sign in");
  const form = h(
    "form",
    { class: "sign-in", novalidate: true },
    h("h1", {}, "Sign in"),
    h(
      "p",
      {},
      "Use an API key of this gateway: the one `moot up` printed, or one from `moot keys create`. ",
      "It is kept in this tab only (session storage) and sent with each request.",
    ),
    h("div", { class: "field" }, h("label", { for: inputId }, "API key"), input, error),
    button,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = input.value.trim();
    if (!key) {
      error.textContent = "Enter an API key.";
      input.setAttribute("aria-invalid", "true");
      input.focus();
      return;
    }
    button.disabled = true;
    error.textContent = "";
    try {
      await api("/v1/runs?limit=1", { key }); // any request the key may make tells whether it works
      session.signIn(key);
      render({ focus: true });
    } catch (exc) {
      error.textContent = exc instanceof ApiError ? exc.message : String(exc);
      input.setAttribute("aria-invalid", "true");
      input.focus();
    } finally {
      button.disabled = false;
    }
  });
  fill(main, form);
  input.focus();
}

document.addEventListener("click", (event) => {
  const link = event.target.closest("a[href]");
  if (!link || event.defaultPrevented || event.button !== 0) return;
  if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey || link.hasAttribute("download")) return;
  const url = new URL(link.href, location.href);
  if (url.origin !== location.origin || !route(url.pathname) || link.target) return;
  event.preventDefault();
  navigate(url.pathname + url.search);
});

document.getElementById("sign-out").addEventListener("click", () => {
  session.signOut();
  history.pushState(null, "", "/");
  render({ focus: true });
});

window.addEventListener("popstate", () => render({ focus: true }));

render();
