// A run's steps, per mode, from its view (`GET /v1/runs/{id}`, `moot.views`): every text as text.
//
// `ctx.streamed(callId)` is what a call still streaming has written so far (a debate's verdict),
// `ctx.details(key, summary, ...body)` a disclosure that stays open across redraws.

import { h, s } from "./dom.js";
import { confidence, label, percent, usageLine } from "./format.js";

const heading = (level, ...children) => h(`h${Math.min(level, 6)}`, {}, ...children);

/** A model's text, as text (white space kept by the style sheet). */
export function textBlock(text, extra = {}) {
  return h("div", { class: "text", ...extra }, text ?? "");
}

function callMeta(call) {
  const parts = [call.status];
  if (call.status !== "pending") parts.push(usageLine(call.usage));
  if (call.latency_ms) parts.push(`${(call.latency_ms / 1000).toFixed(1)} s`);
  if (call.attempts > 1) parts.push(`${call.attempts} attempts`);
  return h("p", { class: "meta" }, parts.join(" · "));
}

/** One model call: its title, status and usage, its text (or error), and anything `extra`. */
function callCard(call, title, level, ...extra) {
  let content;
  if (call.status === "failed") content = h("p", { class: "error" }, `Failed: ${call.error || "no reason given"}`);
  else if (call.status === "pending") content = h("p", { class: "waiting" }, "Waiting for the answer…");
  else content = textBlock(call.text);
  return h(
    "article",
    { class: `call call-${call.status}`, "data-call": call.call_id },
    heading(level, title),
    callMeta(call),
    content,
    ...extra,
  );
}

function section(level, title, cls, ...children) {
  return h("section", { class: cls }, heading(level, title), ...children);
}

function definitions(pairs) {
  const items = pairs.filter(([, value]) => value !== null && value !== undefined && value !== "");
  return h(
    "dl",
    { class: "facts" },
    items.map(([term, value]) => h("div", {}, h("dt", {}, term), h("dd", {}, value))),
  );
}

// ---------------------------------------------------------------------------------------------
// Consortium

/** Confidence per iteration as bars against the threshold; every value also written as text. */
export function confidenceChart(iterations, threshold) {
  const width = 320;
  const height = 150;
  const top = 18;
  const bottom = 24;
  const left = 32;
  const plot = height - top - bottom;
  const y = (v) => top + plot * (1 - v);
  const step = (width - left - 8) / Math.max(iterations.length, 1);
  const bar = Math.min(40, step * 0.6);
  const values = iterations.map((it) => it.verdict?.confidence ?? null);
  const summary = values
    .map(
      (v, i) => `iteration ${i + 1}: ${v === null ? (iterations[i].verdict ? "unreadable" : "pending") : v.toFixed(2)}`,
    )
    .join("; ");
  const titleId = `chart-title`;
  const descId = `chart-desc`;
  const svg = s(
    "svg",
    {
      class: "chart",
      viewBox: `0 0 ${width} ${height}`,
      role: "img",
      "aria-labelledby": `${titleId} ${descId}`,
    },
    s("title", { id: titleId }, "Arbiter confidence by iteration"),
    s("desc", { id: descId }, `${summary}; threshold ${threshold.toFixed(2)}`),
    [0, 0.5, 1].map((v) => [
      s("line", { class: "grid", x1: left, x2: width - 4, y1: y(v), y2: y(v) }),
      s("text", { class: "axis", x: left - 4, y: y(v) + 4, "text-anchor": "end" }, v.toFixed(1)),
    ]),
    s("line", { class: "threshold", x1: left, x2: width - 4, y1: y(threshold), y2: y(threshold) }),
    s("text", { class: "axis", x: width - 4, y: y(threshold) - 4, "text-anchor": "end" }, `threshold ${threshold}`),
    values.map((v, i) => {
      const x = left + step * i + (step - bar) / 2;
      const cx = x + bar / 2;
      const mark =
        v === null
          ? s("rect", { class: "bar unknown", x, y: y(0) - 2, width: bar, height: 2 })
          : s("rect", { class: "bar", x, y: y(v), width: bar, height: Math.max(plot * v, 1) });
      return [
        mark,
        s(
          "text",
          { class: "value", x: cx, y: (v === null ? y(0) : y(v)) - 4, "text-anchor": "middle" },
          v === null ? "?" : v.toFixed(2),
        ),
        s("text", { class: "axis", x: cx, y: height - 6, "text-anchor": "middle" }, `#${i + 1}`),
      ];
    }),
  );
  return svg;
}

function arbiterCard(iteration, level, ctx) {
  const call = iteration.arbiter;
  const verdict = iteration.verdict;
  if (!call) return null;
  if (!verdict) return callCard(call, `Arbiter ${call.model}`, level);
  const extra = [
    definitions([
      ["Confidence", confidence(verdict.confidence)],
      [
        "Asks for another iteration",
        verdict.needs_iteration === null ? "not said" : verdict.needs_iteration ? "yes" : "no",
      ],
      ["Synthesis by", verdict.synthesis_from === "members" ? "the members (the arbiter's was unreadable)" : null],
    ]),
    verdict.dissent ? h("div", { class: "dissent" }, heading(level + 1, "Dissent"), textBlock(verdict.dissent)) : null,
    verdict.refinement_areas?.length
      ? h(
          "div",
          { class: "refinement" },
          heading(level + 1, "Refinement areas"),
          h(
            "ul",
            {},
            verdict.refinement_areas.map((area) => h("li", {}, area)),
          ),
        )
      : null,
    verdict.analysis ? ctx.details(`analysis-${call.call_id}`, "Analysis", textBlock(verdict.analysis)) : null,
    verdict.problems?.length
      ? h("p", { class: "problems" }, `Could not read all of it: ${verdict.problems.join("; ")}`)
      : null,
  ];
  return h(
    "article",
    { class: "call synthesis", "data-call": call.call_id },
    heading(level, `Synthesis by the arbiter ${call.model}`),
    callMeta(call),
    textBlock(verdict.synthesis),
    ...extra,
  );
}

function consortium(view, ctx, level) {
  const iterations = view.iterations || [];
  const threshold = view.request?.confidence_threshold ?? 0.8;
  return [
    iterations.length ? section(level, "Confidence", "chart-box", confidenceChart(iterations, threshold)) : null,
    iterations.map((it) =>
      section(
        level,
        `Iteration ${it.number}`,
        "iteration",
        it.decision
          ? h("p", { class: "decision" }, `Decision: ${it.decision}${it.reason ? ` (${it.reason})` : ""}`)
          : null,
        h(
          "div",
          { class: "answers" },
          it.members.map((m) => callCard(m, `${m.model}#${m.instance}`, level + 1, memberConfidence(m))),
        ),
        arbiterCard(it, level + 1, ctx),
      ),
    ),
  ];
}

function memberConfidence(call) {
  return call.confidence === null || call.confidence === undefined
    ? null
    : h("p", { class: "meta" }, `Stated confidence ${call.confidence.toFixed(2)}`);
}

// ---------------------------------------------------------------------------------------------
// Debate

function debaterLabel(view, call) {
  if (call.label) return call.label;
  const debater = (view.debaters || []).find((d) => d.number === call.debater_number);
  return debater ? debater.label : `${call.model}#${call.instance}`;
}

function verdict(view, ctx, level) {
  const final = view.final;
  if (!final) return null;
  const by = final.debater_number ? `Summary by ${debaterLabel(view, final)}` : `Verdict by the judge ${final.model}`;
  const streaming = final.status === "pending";
  const text = final.text ?? ctx.streamed(final.call_id) ?? "";
  let state = null;
  if (streaming) state = text ? "Writing…" : "Waiting for the first words…";
  if (final.status === "failed") state = `Failed: ${final.error || "no reason given"}`;
  return h(
    "section",
    { class: "verdict", id: "verdict", "aria-busy": streaming ? "true" : "false" },
    heading(level, by),
    callMeta(final),
    textBlock(text, { id: "verdict-text", "data-call": final.call_id }),
    state ? h("p", { class: "waiting", id: "verdict-state" }, state) : null,
  );
}

function debate(view, ctx, level) {
  const request = view.request || {};
  return [
    section(
      level,
      "Debaters",
      "debaters",
      h(
        "ul",
        {},
        (view.debaters || []).map((d) =>
          h(
            "li",
            {},
            `${d.label} (${d.model}): `,
            d.active
              ? "in"
              : `eliminated in round ${d.eliminated_in}${d.convinced_by ? `, convinced by ${d.convinced_by}` : ""}`,
          ),
        ),
      ),
      h(
        "p",
        { class: "meta" },
        [
          request.format || "free_discussion",
          `${request.judge_mode || "display_only"}${request.judge ? ` by ${request.judge}` : ""}`,
          `up to ${request.max_rounds || 3} rounds`,
        ].join("; "),
      ),
    ),
    (view.rounds || []).map((round) =>
      section(
        level,
        `Round ${round.number}`,
        "round",
        h(
          "ol",
          { class: "transcript" },
          round.turns.map((turn) =>
            h("li", {}, callCard(turn, `${debaterLabel(view, turn)} (${turn.model})`, level + 1)),
          ),
        ),
        round.judge ? judgeCard(round, level + 1) : null,
        round.convictions?.length
          ? h(
              "div",
              { class: "convictions" },
              heading(level + 1, "Convictions"),
              h(
                "ul",
                {},
                round.convictions.map((c) =>
                  h(
                    "li",
                    {},
                    `${debaterLabel(view, c)}: `,
                    c.status === "failed"
                      ? "no answer (counts as not convinced)"
                      : c.convinced
                        ? `convinced${c.convinced_by ? ` by ${c.convinced_by}` : ""}`
                        : c.status === "pending"
                          ? "asked…"
                          : "not convinced",
                  ),
                ),
              ),
            )
          : null,
        round.eliminated?.length ? h("p", { class: "eliminated" }, `Eliminated: ${round.eliminated.join(", ")}`) : null,
        round.kept ? h("p", {}, `Kept in (everyone was convinced): ${round.kept}`) : null,
      ),
    ),
    verdict(view, ctx, level),
  ];
}

function judgeCard(round, level) {
  const judge = round.judge;
  const decided = round.decision ? `: ${round.decision}` : "";
  return h(
    "article",
    { class: "call judge", "data-call": judge.call_id },
    heading(level, `Judge ${judge.model}${decided}`),
    callMeta(judge),
    round.decision_reason
      ? textBlock(round.decision_reason)
      : judge.status === "pending"
        ? h("p", { class: "waiting" }, "Deciding…")
        : null,
    round.decision_readable === false
      ? h("p", { class: "problems" }, "The answer named neither CONTINUE nor STOP.")
      : null,
    judge.status === "failed" ? h("p", { class: "error" }, `Failed: ${judge.error}`) : null,
  );
}

// ---------------------------------------------------------------------------------------------
// Council

function council(view, ctx, level) {
  return [
    section(
      level,
      "Answers",
      "stage",
      h(
        "div",
        { class: "answers" },
        (view.answers || []).map((a) => callCard(a, label(a), level + 1)),
      ),
    ),
    view.reviews?.length
      ? section(
          level,
          "Reviews",
          "stage",
          h(
            "div",
            { class: "answers" },
            view.reviews.map((r) =>
              h(
                "article",
                { class: `call review call-${r.status}`, "data-call": r.call_id },
                heading(level + 1, `Review by ${r.label}`),
                callMeta(r),
                r.ranking
                  ? h(
                      "ol",
                      { class: "ranking" },
                      r.ranking.map((l) => h("li", {}, l)),
                    )
                  : h(
                      "p",
                      { class: "problems" },
                      r.problem || (r.status === "pending" ? "Waiting for the review…" : "No ranking"),
                    ),
                r.status === "failed" ? h("p", { class: "error" }, `Failed: ${r.error}`) : null,
                ctx.details(
                  `letters-${r.call_id}`,
                  "Letters it saw",
                  h(
                    "ul",
                    {},
                    Object.entries(r.letters || {}).map(([letter, who]) => h("li", {}, `${letter}: ${who}`)),
                  ),
                ),
                r.text ? ctx.details(`review-${r.call_id}`, "Its review", textBlock(r.text)) : null,
              ),
            ),
          ),
        )
      : null,
    view.ranking?.length
      ? section(
          level,
          "Aggregate ranking",
          "stage",
          h(
            "div",
            { class: "scroll" },
            h(
              "table",
              {},
              h("caption", {}, "Borda count over the readable reviews"),
              h(
                "thead",
                {},
                h(
                  "tr",
                  {},
                  ["Rank", "Answer", "Score", "Reviews", "Mean place"].map((c) => h("th", { scope: "col" }, c)),
                ),
              ),
              h(
                "tbody",
                {},
                view.ranking.map((r) =>
                  h(
                    "tr",
                    {},
                    h("td", {}, String(r.rank)),
                    h("td", {}, r.label),
                    h("td", { class: "num" }, String(r.score)),
                    h("td", { class: "num" }, String(r.reviews)),
                    h("td", { class: "num" }, r.average_position === null ? "—" : r.average_position.toFixed(2)),
                  ),
                ),
              ),
            ),
          ),
        )
      : null,
    view.chairman
      ? section(level, "Chairman", "stage", callCard(view.chairman, `Chairman ${view.chairman.model}`, level + 1))
      : null,
  ];
}

// ---------------------------------------------------------------------------------------------
// Vote

function vote(view, ctx, level) {
  const request = view.request || {};
  return [
    section(
      level,
      "Votes",
      "stage",
      h(
        "div",
        { class: "answers" },
        (view.votes || []).map((v) =>
          callCard(
            v,
            v.label,
            level + 1,
            v.status === "completed"
              ? h(
                  "p",
                  { class: "meta" },
                  v.normalized === null ? "Not counted: unreadable" : `Counted as: ${v.normalized}`,
                )
              : null,
          ),
        ),
      ),
    ),
    view.tally?.length
      ? section(
          level,
          "Tally",
          "stage",
          h(
            "div",
            { class: "scroll" },
            h(
              "table",
              {},
              h(
                "thead",
                {},
                h(
                  "tr",
                  {},
                  ["Answer", "Votes", "Voters"].map((c) => h("th", { scope: "col" }, c)),
                ),
              ),
              h(
                "tbody",
                {},
                view.tally.map((t) =>
                  h(
                    "tr",
                    {},
                    h("td", {}, t.answer),
                    h("td", { class: "num" }, String(t.count)),
                    h("td", {}, t.voters.join(", ")),
                  ),
                ),
              ),
            ),
          ),
          h(
            "p",
            { class: "agreement" },
            `Agreement ${percent(view.agreement)} (threshold ${percent(request.agreement_threshold ?? 0.6)})`,
            view.majority !== null && view.majority !== undefined ? `; majority: ${view.majority}` : "",
          ),
        )
      : null,
    view.escalation
      ? section(
          level,
          `Escalated to a ${view.escalation.mode}`,
          "escalation",
          h("p", {}, "Agreement was below the threshold: the votes became its first step."),
          renderSteps(view.escalation, ctx, level + 1),
        )
      : null,
  ];
}

// ---------------------------------------------------------------------------------------------
// Mixture-of-Agents

function moa(view, ctx, level) {
  return [
    (view.layers || []).map((layer) =>
      section(
        level,
        `Layer ${layer.number}`,
        "stage",
        h(
          "div",
          { class: "answers" },
          layer.calls.map((c) => callCard(c, label(c), level + 1)),
        ),
      ),
    ),
    view.aggregator
      ? section(
          level,
          "Aggregator",
          "stage",
          callCard(view.aggregator, `Aggregator ${view.aggregator.model}`, level + 1),
        )
      : null,
  ];
}

const RENDERERS = { consortium, debate, council, vote, moa };

/** The steps of a run of any mode, headed from `level`. */
export function renderSteps(view, ctx, level = 2) {
  const render = RENDERERS[view.mode];
  return render ? render(view, ctx, level) : h("p", {}, `This page does not know the mode ${view.mode}.`);
}

/** The run's answer, whatever its mode; null before it has one. */
export function answerOf(view) {
  if (!view.result) return null;
  if (view.mode === "consortium") return view.result.synthesis;
  return view.result.text;
}

/** Every call of the run, in order, with the step and role it had: for the usage table. */
export function callsOf(view) {
  const out = [];
  const add = (step, role, call) => call && out.push({ step, role, call });
  switch (view.mode) {
    case "consortium":
      for (const it of view.iterations || []) {
        for (const m of it.members) add(`iteration ${it.number}`, "member", m);
        add(`iteration ${it.number}`, "arbiter", it.arbiter);
      }
      break;
    case "debate":
      for (const r of view.rounds || []) {
        for (const t of r.turns) add(`round ${r.number}`, "debater", t);
        add(`round ${r.number}`, "judge", r.judge);
        for (const c of r.convictions || []) add(`round ${r.number}`, "conviction", c);
      }
      add("end", view.final?.debater_number ? "summary" : "verdict", view.final);
      break;
    case "council":
      for (const a of view.answers || []) add("answers", "member", a);
      for (const r of view.reviews || []) add("reviews", "reviewer", r);
      add("chairman", "chairman", view.chairman);
      break;
    case "vote":
      for (const v of view.votes || []) add("votes", "voter", v);
      if (view.escalation) {
        // The escalation's first iteration or round is the votes: listed once, above.
        const seen = new Set(out.map((c) => c.call.call_id));
        for (const c of callsOf(view.escalation)) if (!seen.has(c.call.call_id)) out.push(c);
      }
      break;
    case "moa":
      for (const layer of view.layers || []) for (const c of layer.calls) add(`layer ${layer.number}`, "proposer", c);
      add("aggregate", "aggregator", view.aggregator);
      break;
    default:
      break;
  }
  return out;
}
