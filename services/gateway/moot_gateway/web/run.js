// /runs/{id}: a run, live. What is drawn is always the run's view (`GET /v1/runs/{id}`, built from
// the run's current state), asked again shortly after each event of its stream; only a streaming
// verdict's `final.chunk` deltas are drawn as they come. So a reload shows the same page: the view
// holds every step, and the stream, read again from its start, gives back the verdict's words.

import { ApiError, TERMINAL, api, follow } from "./api.js";
import { fill, h, safeUrl } from "./dom.js";
import { download, markdown } from "./export.js";
import { membersOf, tokens, usd, when } from "./format.js";
import { answerOf, callsOf, renderSteps, textBlock } from "./render.js";
import { statusBadge } from "./runs.js";

// Events come in bursts (a round's turns): the view is asked once per burst, this long after its first event.
const REFRESH_MS = 150;

let settingsPromise = null;
function webSettings() {
  settingsPromise = settingsPromise || api("/web/settings").catch(() => ({ trace_url_template: null, models: [] }));
  return settingsPromise;
}

const TITLES = {
  consortium: "Consortium",
  debate: "Debate",
  council: "Council",
  vote: "Vote",
  moa: "Mixture-of-Agents",
};

export function showRun(main, runId, { refused }) {
  document.title = `Run ${runId} · moot`;
  const path = `/v1/runs/${encodeURIComponent(runId)}`;
  const controller = new AbortController();
  const title = h("h1", {}, "Run");
  const connection = h("p", { class: "connection", role: "status" }, "Loading…");
  const notice = h("p", { class: "notice", role: "alert" });
  const cancel = h("button", { type: "button", class: "danger", hidden: true }, "Cancel run");
  const exportMd = h("button", { type: "button", class: "secondary", disabled: true }, "Export Markdown");
  const exportJson = h("button", { type: "button", class: "secondary", disabled: true }, "Export JSON");
  const facts = h("div", { class: "run-facts" });
  const body = h("div", { class: "run-body" });
  fill(
    main,
    h("div", { class: "title-row" }, title, connection),
    h("div", { class: "actions" }, cancel, exportMd, exportJson),
    notice,
    facts,
    body,
  );

  let view = null;
  let settings = { trace_url_template: null };
  const chunks = new Map(); // call id -> Map(index -> delta): a streaming answer's words so far
  const open = new Set(); // disclosures the reader opened, kept open across redraws

  const ctx = {
    streamed(callId) {
      const parts = chunks.get(callId);
      if (!parts) return null;
      return [...parts.entries()]
        .sort((a, b) => a[0] - b[0])
        .map(([, delta]) => delta)
        .join("");
    },
    details(key, summary, ...content) {
      const el = h("details", { open: open.has(key) }, h("summary", {}, summary), ...content);
      el.addEventListener("toggle", () => (el.open ? open.add(key) : open.delete(key)));
      return el;
    },
  };

  function traceLink() {
    const template = settings.trace_url_template;
    if (!template || !view.trace_id) return null;
    const url = template.replaceAll("{trace_id}", encodeURIComponent(view.trace_id));
    if (!safeUrl(url)) return null;
    return h("a", { href: url, target: "_blank", rel: "noopener noreferrer", class: "trace" }, "Open its trace");
  }

  function drawFacts() {
    const u = view.usage || {};
    const request = view.request || {};
    const rows = [
      ["Status", statusBadge(view.status)],
      ["Models", membersOf(request)],
      ["Created", when(view.created_at)],
      ["Finished", when(view.finished_at)],
      [
        "Configuration",
        view.config ? `${view.config.name}${view.config.version ? ` version ${view.config.version}` : ""}` : null,
      ],
      [
        "Continues",
        view.continued_from
          ? h("a", { href: `/runs/${encodeURIComponent(view.continued_from)}` }, view.continued_from)
          : null,
      ],
      ["Tokens", `${tokens(u.input_tokens)} in, ${tokens(u.output_tokens)} out`],
      ["Cost", usd(u.cost_usd)],
      ["Trace", traceLink()],
      ["Run id", h("code", {}, view.id)],
    ].filter(([, v]) => v !== null && v !== undefined && v !== "");
    fill(
      facts,
      h(
        "dl",
        { class: "facts" },
        rows.map(([term, value]) => h("div", {}, h("dt", {}, term), h("dd", {}, value))),
      ),
      view.reason
        ? h(
            "p",
            { class: "reason" },
            // A debate's verdict streams after the judge has stopped it: ending, not ended yet.
            `${view.status === "running" ? "Why it is ending" : "Why it ended"}: ${view.reason}`,
            view.stop_reason ? ` (stopped by its ${view.stop_reason})` : "",
          )
        : null,
      h("section", { class: "prompt" }, h("h2", {}, "Prompt"), textBlock(request.prompt)),
    );
  }

  function usageTable() {
    const calls = callsOf(view);
    if (!calls.length) return null;
    const u = view.usage || {};
    return h(
      "section",
      { class: "usage" },
      h("h2", {}, "Usage"),
      h(
        "div",
        { class: "scroll" },
        h(
          "table",
          {},
          h("caption", {}, `Tokens and cost of each of its ${calls.length} model calls`),
          h(
            "thead",
            {},
            h(
              "tr",
              {},
              ["Step", "Role", "Model", "Status", "Input tokens", "Output tokens", "Cost", "Time"].map((c) =>
                h("th", { scope: "col" }, c),
              ),
            ),
          ),
          h(
            "tbody",
            {},
            calls.map(({ step, role, call }) =>
              h(
                "tr",
                {},
                h("td", {}, step),
                h("td", {}, role),
                h("td", {}, `${call.model}#${call.instance}`),
                h("td", {}, call.status),
                h("td", { class: "num" }, tokens(call.usage?.input_tokens)),
                h("td", { class: "num" }, tokens(call.usage?.output_tokens)),
                h("td", { class: "num" }, usd(call.usage?.cost_usd)),
                h("td", { class: "num" }, call.latency_ms ? `${(call.latency_ms / 1000).toFixed(1)} s` : "—"),
              ),
            ),
          ),
          h(
            "tfoot",
            {},
            h(
              "tr",
              {},
              h("th", { scope: "row", colspan: "4" }, "Total"),
              h("td", { class: "num" }, tokens(u.input_tokens)),
              h("td", { class: "num" }, tokens(u.output_tokens)),
              h("td", { class: "num" }, usd(u.cost_usd)),
              h("td", {}, ""),
            ),
          ),
        ),
      ),
    );
  }

  function draw() {
    title.textContent = `${TITLES[view.mode] || view.mode} run`;
    document.title = `${TITLES[view.mode] || view.mode}: ${(view.request?.prompt || runId).slice(0, 60)} · moot`;
    cancel.hidden = view.status !== "running";
    exportMd.disabled = exportJson.disabled = false;
    drawFacts();
    const answer = answerOf(view);
    fill(
      body,
      answer !== null
        ? h("section", { class: "answer" }, h("h2", {}, "Answer"), textBlock(answer, { id: "answer-text" }))
        : null,
      h("div", { class: "steps" }, renderSteps(view, ctx, 2)),
      usageTable(),
    );
  }

  /** Take a view the API answered, unless the page already shows the run ended (a late answer). */
  function accept(next) {
    if (view && view.status !== "running" && next.status === "running") return;
    view = { ...next, trace_id: next.trace_id ?? view?.trace_id ?? null };
    draw();
  }

  async function refresh() {
    try {
      accept(await api(path, { signal: controller.signal }));
    } catch (exc) {
      if (exc.name === "AbortError" || refused(exc)) return;
      notice.textContent = `Could not load the run: ${exc.message}`;
    }
  }

  // One refresh at a time; events during it ask for one more after it.
  let timer = null;
  let running = null;
  let again = false;
  function refreshSoon() {
    if (running) {
      again = true;
      return;
    }
    if (timer) return;
    timer = setTimeout(async () => {
      timer = null;
      running = refresh();
      await running;
      running = null;
      if (again) {
        again = false;
        refreshSoon();
      }
    }, REFRESH_MS);
  }

  function onChunk(data) {
    let parts = chunks.get(data.call_id);
    if (!parts) chunks.set(data.call_id, (parts = new Map()));
    parts.set(data.index, data.delta);
    const target = document.getElementById("verdict-text");
    if (target && target.dataset.call === data.call_id && view.final?.status !== "completed") {
      target.textContent = ctx.streamed(data.call_id);
      const state = document.getElementById("verdict-state");
      if (state) state.textContent = "Writing…";
    }
  }

  function onEvent(event) {
    if (event.type === "final.chunk") onChunk(event.data);
    else if (TERMINAL.has(event.type)) {
      if (event.data.run) accept(event.data.run);
      refresh(); // the trace id and links, which the end event's view does not carry
    } else refreshSoon();
  }

  async function start() {
    settings = await webSettings();
    try {
      view = await api(path, { signal: controller.signal });
    } catch (exc) {
      if (exc.name === "AbortError" || refused(exc)) return;
      connection.textContent = "";
      notice.textContent =
        exc instanceof ApiError && exc.status === 404
          ? `There is no run ${runId} of yours.`
          : `Could not load the run: ${exc.message}`;
      return;
    }
    draw();
    if (view.status !== "running") {
      connection.textContent = "Ended";
      return;
    }
    connection.textContent = "Live";
    try {
      await follow(runId, {
        onEvent,
        onConnection: (state) => {
          connection.textContent = state === "live" ? "Live" : "Connection lost; reconnecting…";
        },
        signal: controller.signal,
      });
    } catch (exc) {
      if (refused(exc)) return;
      notice.textContent = `The run's events stopped: ${exc.message}`;
    }
    if (!controller.signal.aborted) connection.textContent = "Ended";
  }

  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    cancel.textContent = "Cancelling…";
    try {
      accept(await api(`${path}/cancel`, { method: "POST", signal: controller.signal }));
      notice.textContent = "";
    } catch (exc) {
      if (exc.name === "AbortError" || refused(exc)) return;
      notice.textContent = `Not cancelled: ${exc.message}`;
      refresh();
    } finally {
      cancel.disabled = false;
      cancel.textContent = "Cancel run";
    }
  });
  exportMd.addEventListener("click", () =>
    download(`moot-${view.mode}-${view.id}.md`, "text/markdown", markdown(view)),
  );
  exportJson.addEventListener("click", () =>
    download(`moot-${view.mode}-${view.id}.json`, "application/json", `${JSON.stringify(view, null, 2)}\n`),
  );

  start();
  return () => {
    controller.abort();
    clearTimeout(timer);
  };
}
