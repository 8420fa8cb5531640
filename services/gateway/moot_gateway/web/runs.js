// /runs: the caller's runs, newest first, filtered by status and mode, their status kept current.

import { api } from "./api.js";
import { fill, h, uid } from "./dom.js";
import { firstLine, tokens, usd, when } from "./format.js";

export const MODES = ["consortium", "debate", "council", "vote", "moa"];
export const STATUSES = ["running", "completed", "failed", "cancelled"];
// How often the list is asked again (not while the tab is hidden): a run started elsewhere
// appears, and a status changes, within this.
const POLL_MS = 3000;
const LIMIT = 100;

/** A status as a word with a mark, so that it reads without colour too. */
export function statusBadge(status) {
  const marks = { running: "◌", completed: "✓", failed: "✗", cancelled: "■" };
  return h("span", { class: `status status-${status}` }, `${marks[status] || ""} ${status}`.trim());
}

function select(labelText, name, options, value) {
  const id = uid(name);
  const el = h(
    "select",
    { id, name },
    h("option", { value: "" }, "all"),
    options.map((o) => h("option", { value: o, selected: o === value }, o)),
  );
  return { field: h("div", { class: "field inline" }, h("label", { for: id }, labelText), el), el };
}

export function showRuns(main, { refused }) {
  document.title = "Runs · moot";
  const params = new URLSearchParams(location.search);
  const status = select("Status", "status", STATUSES, params.get("status") || "");
  const mode = select("Mode", "mode", MODES, params.get("mode") || "");
  const note = h("p", { class: "note", role: "status" });
  const body = h("div", { class: "runs" });
  fill(
    main,
    h("div", { class: "title-row" }, h("h1", {}, "Runs"), h("a", { class: "button", href: "/new" }, "New run")),
    h("form", { class: "filters", "aria-label": "Filter runs" }, status.field, mode.field),
    note,
    body,
  );

  let runs = null;
  let timer = null;
  let stopped = false;
  const controller = new AbortController();

  function draw() {
    if (runs === null) return;
    const wanted = runs.filter(
      (r) => (!status.el.value || r.status === status.el.value) && (!mode.el.value || r.mode === mode.el.value),
    );
    if (!runs.length) {
      fill(body, h("p", {}, "No runs yet. ", h("a", { href: "/new" }, "Start one"), "."));
      return;
    }
    if (!wanted.length) {
      fill(body, h("p", {}, "No run matches these filters."));
      return;
    }
    const members = runs.some((r) => r.members);
    fill(
      body,
      h(
        "table",
        { class: "run-list" },
        h("caption", {}, `Your ${wanted.length} run${wanted.length === 1 ? "" : "s"}, newest first`),
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            ["Prompt", "Mode", "Status", members && "Members", "Created", "Tokens", "Cost"]
              .filter(Boolean)
              .map((c) => h("th", { scope: "col" }, c)),
          ),
        ),
        h(
          "tbody",
          {},
          wanted.map((r) =>
            h(
              "tr",
              { "data-run": r.id },
              h(
                "td",
                { "data-label": "Prompt" },
                h("a", { href: `/runs/${encodeURIComponent(r.id)}` }, firstLine(r.prompt) || r.id),
              ),
              h("td", { "data-label": "Mode" }, r.mode || "—"),
              h("td", { "data-label": "Status" }, statusBadge(r.status)),
              members &&
                h("td", { "data-label": "Members" }, Array.isArray(r.members) ? r.members.join(", ") : r.members || ""),
              h("td", { "data-label": "Created" }, h("time", { datetime: r.created_at || "" }, when(r.created_at))),
              h(
                "td",
                { "data-label": "Tokens", class: "num" },
                `${tokens((r.input_tokens || 0) + (r.output_tokens || 0))}`,
              ),
              h("td", { "data-label": "Cost", class: "num" }, usd(r.cost_usd)),
            ),
          ),
        ),
      ),
    );
  }

  async function poll() {
    if (!document.hidden) {
      try {
        const answer = await api(`/v1/runs?limit=${LIMIT}`, { signal: controller.signal });
        runs = answer.data;
        note.textContent = "";
        draw();
      } catch (exc) {
        if (exc.name === "AbortError" || refused(exc)) return;
        note.textContent = `Could not load the runs: ${exc.message}`;
      }
    }
    if (!stopped) timer = setTimeout(poll, POLL_MS);
  }

  for (const control of [status.el, mode.el]) {
    control.addEventListener("change", () => {
      const query = new URLSearchParams();
      if (status.el.value) query.set("status", status.el.value);
      if (mode.el.value) query.set("mode", mode.el.value);
      const search = query.toString();
      history.replaceState(null, "", `/runs${search ? `?${search}` : ""}`);
      draw();
    });
  }
  poll();
  return () => {
    stopped = true;
    clearTimeout(timer);
    controller.abort();
  };
}
