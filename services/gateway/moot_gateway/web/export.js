// A run as a file: its view as JSON (what `GET /v1/runs/{id}` answered), or as Markdown to read.

import { callsOf, answerOf } from "./render.js";
import { confidence, label, membersOf, percent, tokens, usd, usageLine } from "./format.js";

function block(text) {
  // Model text goes in as it was written; a fence would break on the text's own fences.
  return `${(text ?? "").trim()}\n`;
}

function call(title, c) {
  if (c.status === "failed") return [`#### ${title}`, "", `*Failed:* ${c.error || "no reason given"}`, ""];
  return [`#### ${title}`, "", `*${usageLine(c.usage)}*`, "", block(c.text)];
}

const SECTIONS = {
  consortium(view) {
    const out = [];
    for (const it of view.iterations || []) {
      out.push(`### Iteration ${it.number}`, "");
      if (it.decision) out.push(`Decision: ${it.decision}${it.reason ? ` (${it.reason})` : ""}`, "");
      for (const m of it.members) out.push(...call(`${m.model}#${m.instance}`, m));
      if (it.verdict && it.arbiter) {
        const v = it.verdict;
        out.push(
          `#### Synthesis by the arbiter ${it.arbiter.model}`,
          "",
          `Confidence: ${confidence(v.confidence)}`,
          "",
        );
        out.push(block(v.synthesis));
        if (v.dissent) out.push("Dissent:", "", block(v.dissent));
        if (v.refinement_areas?.length)
          out.push("Refinement areas:", "", ...v.refinement_areas.map((a) => `- ${a}`), "");
      }
    }
    return out;
  },
  debate(view) {
    const out = [];
    for (const r of view.rounds || []) {
      out.push(`### Round ${r.number}`, "");
      for (const t of r.turns) out.push(...call(`${t.label || `${t.model}#${t.instance}`} (${t.model})`, t));
      if (r.decision) out.push(`Judge ${r.judge?.model || ""}: ${r.decision}`, "", block(r.decision_reason));
      for (const c of r.convictions || []) {
        out.push(
          `- ${c.label || c.model}: ${c.convinced ? `convinced by ${c.convinced_by || "another"}` : "not convinced"}`,
        );
      }
      if (r.eliminated?.length) out.push("", `Eliminated: ${r.eliminated.join(", ")}`, "");
    }
    if (view.final) {
      const by = view.final.debater_number
        ? `Summary by ${view.final.label || view.final.model}`
        : `Verdict by the judge ${view.final.model}`;
      out.push(`### ${by}`, "", block(view.final.text));
    }
    return out;
  },
  council(view) {
    const out = ["### Answers", ""];
    for (const a of view.answers || []) out.push(...call(label(a), a));
    out.push("### Reviews", "");
    for (const r of view.reviews || []) {
      out.push(`- ${r.label}: ${r.ranking ? r.ranking.join(" > ") : r.problem || "no ranking"}`);
    }
    out.push("", "### Aggregate ranking", "", "| Rank | Answer | Score | Reviews |", "| --- | --- | --- | --- |");
    for (const r of view.ranking || []) out.push(`| ${r.rank} | ${r.label} | ${r.score} | ${r.reviews} |`);
    out.push("");
    if (view.chairman) out.push(...call(`Chairman ${view.chairman.model}`, view.chairman));
    return out;
  },
  vote(view) {
    const out = ["### Votes", ""];
    for (const v of view.votes || []) out.push(...call(v.label, v), `Counted as: ${v.normalized ?? "not counted"}`, "");
    out.push("### Tally", "", "| Answer | Votes | Voters |", "| --- | --- | --- |");
    for (const t of view.tally || []) out.push(`| ${t.answer} | ${t.count} | ${t.voters.join(", ")} |`);
    out.push("", `Agreement: ${percent(view.agreement)}`, "");
    if (view.escalation)
      out.push(`### Escalated to a ${view.escalation.mode}`, "", ...SECTIONS[view.escalation.mode](view.escalation));
    return out;
  },
  moa(view) {
    const out = [];
    for (const layer of view.layers || []) {
      out.push(`### Layer ${layer.number}`, "");
      for (const c of layer.calls) out.push(...call(label(c), c));
    }
    if (view.aggregator) out.push(...call(`Aggregator ${view.aggregator.model}`, view.aggregator));
    return out;
  },
};

/** The run as a Markdown document: facts, prompt, answer, every step, usage. */
export function markdown(view) {
  const u = view.usage || {};
  const request = view.request || {};
  const out = [
    `# moot ${view.mode} run ${view.id}`,
    "",
    `- Status: ${view.status}${view.reason ? ` (${view.reason})` : ""}`,
    `- Created: ${view.created_at || ""}`,
    `- Finished: ${view.finished_at || ""}`,
    `- Models: ${membersOf(request)}`,
    `- Tokens: ${tokens(u.input_tokens)} in, ${tokens(u.output_tokens)} out; cost ${usd(u.cost_usd)}`,
  ];
  if (view.trace_id) out.push(`- Trace: ${view.trace_id}`);
  out.push("", "## Prompt", "", block(request.prompt));
  const answer = answerOf(view);
  if (answer !== null) out.push("## Answer", "", block(answer));
  out.push("## Steps", "", ...(SECTIONS[view.mode]?.(view) || []));
  out.push(
    "## Usage",
    "",
    "| Step | Role | Model | Status | Input | Output | Cost |",
    "| --- | --- | --- | --- | --- | --- | --- |",
  );
  for (const { step, role, call: c } of callsOf(view)) {
    const usage = c.usage || {};
    const cells = [step, role, `${c.model}#${c.instance}`, c.status, usage.input_tokens || 0, usage.output_tokens || 0];
    out.push(`| ${[...cells, usd(usage.cost_usd)].join(" | ")} |`);
  }
  out.push(`| total | | | | ${u.input_tokens || 0} | ${u.output_tokens || 0} | ${usd(u.cost_usd)} |`, "");
  return out.join("\n");
}

/** Offer `content` as a file to save. */
export function download(name, type, content) {
  const url = URL.createObjectURL(new Blob([content], { type }));
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}
