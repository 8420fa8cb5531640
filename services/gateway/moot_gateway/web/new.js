// /new: a run of any mode, or of a saved configuration with overrides. The API validates; its
// 422 names each wrong field (`error.errors[].param`, e.g. `members.0.model`), shown beside it.

import { ApiError, api } from "./api.js";
import { fill, h, uid } from "./dom.js";
import { MODES } from "./runs.js";

const SAVED = "saved";

// The fields of each mode besides the prompt and the members (or layers), as the request names
// them (`moot.requests`). `when` shows a field only while another has a value.
const number = (param, label, extra = {}) => ({ param, label, kind: "number", ...extra });
const text = (param, label, extra = {}) => ({ param, label, kind: "text", ...extra });
const area = (param, label, extra = {}) => ({ param, label, kind: "textarea", ...extra });
const choice = (param, label, options, extra = {}) => ({ param, label, kind: "select", options, ...extra });

const CALLS = [
  area("system", "System prompt", { optional: true }),
  number("temperature", "Temperature", { step: "0.1", min: "0", max: "2", optional: true }),
  number("max_tokens", "Max tokens per answer", { step: "1", min: "1", optional: true }),
];
const BUDGET = [
  number("budget.seconds", "Time limit (seconds)", { step: "1", min: "1", byDefault: "900" }),
  number("budget.usd", "Spend limit (USD)", { step: "0.01", min: "0", optional: true }),
];

const FIELDS = {
  consortium: [
    text("arbiter", "Arbiter model", { model: true }),
    number("confidence_threshold", "Confidence threshold", { step: "0.05", min: "0", max: "1", byDefault: "0.8" }),
    number("min_iterations", "Minimum iterations", { step: "1", min: "1", max: "20", byDefault: "1" }),
    number("max_iterations", "Maximum iterations", { step: "1", min: "1", max: "20", byDefault: "3" }),
    ...CALLS,
  ],
  debate: [
    choice("format", "Format", ["free_discussion", "structured_opposition", "iterative_improvement", "custom"]),
    area("custom_prompt", "Custom prompt template", { when: ["format", "custom"] }),
    choice("judge_mode", "Judge mode", ["external_judge", "self_convergence", "display_only"]),
    text("judge", "Judge model", { model: true, when: ["judge_mode", "external_judge"] }),
    number("max_rounds", "Maximum rounds", { step: "1", min: "1", max: "20", byDefault: "3" }),
  ],
  council: [text("chairman", "Chairman model", { model: true }), ...CALLS],
  vote: [
    choice("answer_format", "Answer format", ["free", "number", "choice", "yes_no"]),
    area("choices", "Choices, one per line", { lines: true, when: ["answer_format", "choice"] }),
    number("agreement_threshold", "Agreement threshold", { step: "0.05", min: "0", max: "1", byDefault: "0.6" }),
    choice("escalate.mode", "Below the threshold, go on as", ["", "consortium", "debate"], {
      labels: { "": "nothing (the majority wins)" },
    }),
    text("escalate.arbiter", "Escalation arbiter model", { model: true, when: ["escalate.mode", "consortium"] }),
    number("escalate.max_iterations", "Escalation maximum iterations", {
      step: "1",
      min: "1",
      max: "20",
      byDefault: "3",
      when: ["escalate.mode", "consortium"],
    }),
    text("escalate.judge", "Escalation judge model (none: every round is played)", {
      model: true,
      optional: true,
      when: ["escalate.mode", "debate"],
    }),
    number("escalate.max_rounds", "Escalation maximum rounds", {
      step: "1",
      min: "1",
      max: "20",
      byDefault: "3",
      when: ["escalate.mode", "debate"],
    }),
    ...CALLS,
  ],
  moa: [text("aggregator", "Aggregator model", { model: true }), ...CALLS],
};

/** Where errors go: a map from `param` to its field, the nearest enclosing param found first. */
class Fields {
  constructor(general) {
    this.general = general;
    this.byParam = new Map();
  }

  /** An error line for `control` at the end of `container`, not yet under any param. */
  make(container, control) {
    const error = h("p", { class: "field-error", id: uid("error") });
    container.append(error);
    if (control) {
      const described = control.getAttribute("aria-describedby");
      control.setAttribute("aria-describedby", described ? `${described} ${error.id}` : error.id);
    }
    return { control, error };
  }

  add(param, container, control) {
    const entry = this.make(container, control);
    this.byParam.set(param, entry);
    return entry;
  }

  clear() {
    for (const { control, error } of this.byParam.values()) {
      error.textContent = "";
      control?.removeAttribute("aria-invalid");
    }
    fill(this.general);
  }

  /** Show each `{param, message}` next to its field (or its nearest ancestor's); the rest above. */
  show(errors, fallback = null) {
    const loose = [];
    let first = null;
    for (const { param, message } of errors) {
      const parts = String(param || "").split(".");
      let target = null;
      while (parts.length && !target) {
        target = this.byParam.get(parts.join(".")) || null;
        parts.pop();
      }
      target = target || (fallback && this.byParam.get(fallback)) || null;
      if (!target) {
        loose.push(param ? `${param}: ${message}` : message);
        continue;
      }
      target.error.textContent = target.error.textContent ? `${target.error.textContent} ${message}` : message;
      target.control?.setAttribute("aria-invalid", "true");
      first = first || target;
    }
    if (loose.length)
      fill(
        this.general,
        h(
          "ul",
          {},
          loose.map((m) => h("li", {}, m)),
        ),
      );
    (loose.length ? this.general : first?.control)?.focus();
  }
}

function setPath(target, path, value) {
  const keys = path.split(".");
  let at = target;
  for (const key of keys.slice(0, -1)) at = at[key] = at[key] || {};
  at[keys[keys.length - 1]] = value;
}

/** A list of models with a count each (`members`, `layers.N`, `reviewers`), as rows to add and remove. */
function membersEditor(fields, param, { legend, noun, minRows = 1, datalist }) {
  const rows = h("div", { class: "member-rows" });
  const fieldset = h("fieldset", { class: "members", "data-param": param }, h("legend", {}, legend), rows);
  const add = h("button", { type: "button", class: "secondary" }, `Add ${noun}`);
  fieldset.append(add);
  fields.add(param, fieldset, add);
  let entries = [];

  function renumber() {
    for (const entry of entries) entry.forget();
    entries.forEach((entry, i) => entry.setIndex(i));
  }

  function addRow(model = "", count = "") {
    const modelId = uid("model");
    const countId = uid("count");
    const modelInput = h("input", { id: modelId, type: "text", list: datalist, autocomplete: "off", value: model });
    const countInput = h("input", { id: countId, type: "number", min: "1", max: "16", step: "1", value: count });
    const modelName = h("span", { class: "visually-hidden" });
    const countName = h("span", { class: "visually-hidden" });
    const modelField = h("div", { class: "field" }, h("label", { for: modelId }, modelName, "model"), modelInput);
    const countField = h("div", { class: "field count" }, h("label", { for: countId }, countName, "count"), countInput);
    const remove = h("button", { type: "button", class: "secondary" }, "Remove");
    const row = h("div", { class: "member-row" }, modelField, countField, remove);
    const modelEntry = fields.make(modelField, modelInput);
    const countEntry = fields.make(countField, countInput);
    const entry = {
      index: null,
      value: () => {
        const member = { model: modelInput.value.trim() };
        if (countInput.value !== "") member.count = Number(countInput.value);
        return member;
      },
      forget() {
        fields.byParam.delete(`${param}.${entry.index}.model`);
        fields.byParam.delete(`${param}.${entry.index}.count`);
      },
      setIndex(i) {
        const name = `${noun[0].toUpperCase()}${noun.slice(1)} ${i + 1} `;
        modelName.textContent = name;
        countName.textContent = name;
        remove.setAttribute("aria-label", `Remove ${noun} ${i + 1}`);
        entry.index = i;
        fields.byParam.set(`${param}.${i}.model`, modelEntry);
        fields.byParam.set(`${param}.${i}.count`, countEntry);
      },
    };
    remove.addEventListener("click", () => {
      entry.forget();
      entries = entries.filter((e) => e !== entry);
      row.remove();
      renumber();
      add.focus();
    });
    entries.push(entry);
    rows.append(row);
    renumber();
    return modelInput;
  }

  add.addEventListener("click", () => addRow().focus());
  for (let i = 0; i < minRows; i += 1) addRow();
  return {
    element: fieldset,
    value: () => entries.map((e) => e.value()),
    empty: () => entries.every((e) => !e.value().model),
  };
}

function control(spec, datalist) {
  const id = uid(spec.param.replace(/\W/g, "-"));
  let el;
  if (spec.kind === "select") {
    el = h(
      "select",
      { id, name: spec.param },
      spec.options.map((o) => h("option", { value: o }, spec.labels?.[o] ?? o)),
    );
  } else if (spec.kind === "textarea") {
    el = h("textarea", { id, name: spec.param, rows: spec.param === "system" ? 2 : 4 });
  } else {
    el = h("input", {
      id,
      name: spec.param,
      type: spec.kind === "number" ? "number" : "text",
      step: spec.step,
      min: spec.min,
      max: spec.max,
      list: spec.model ? datalist : null,
      autocomplete: "off",
    });
  }
  return { id, el };
}

function readValue(spec, el) {
  const raw = el.value;
  if (spec.kind === "number") {
    if (raw === "") return undefined;
    // Not a number (a browser lets some through): sent as written, so the API names the field.
    return Number.isFinite(Number(raw)) ? Number(raw) : raw;
  }
  if (spec.lines) {
    const lines = raw
      .split(/\r?\n/)
      .map((l) => l.trim())
      .filter(Boolean);
    return lines.length ? lines : undefined;
  }
  if (spec.kind === "select") return raw === "" ? undefined : raw;
  return raw.trim() === "" ? undefined : raw;
}

export function showNewRun(main, { navigate, refused }) {
  document.title = "New run · moot";
  const general = h("div", { class: "form-errors", role: "alert", tabindex: "-1" });
  const fields = new Fields(general);
  const datalist = uid("models");
  const models = h("datalist", { id: datalist });
  const controller = new AbortController();

  const modeId = uid("mode");
  const mode = h(
    "select",
    { id: modeId, name: "mode" },
    MODES.map((m) => h("option", { value: m }, m)),
    h("option", { value: SAVED }, "saved configuration"),
  );
  const promptId = uid("prompt");
  const prompt = h("textarea", { id: promptId, name: "prompt", rows: 4, required: true });
  const promptField = h("div", { class: "field" }, h("label", { for: promptId }, "Prompt"), prompt);
  fields.add("prompt", promptField, prompt);

  const modeArea = h("div", { class: "mode-fields" });
  const submit = h("button", { type: "submit" }, "Start run");
  const form = h(
    "form",
    { class: "new-run", novalidate: true },
    h("div", { class: "field" }, h("label", { for: modeId }, "Mode"), mode),
    promptField,
    modeArea,
    general,
    submit,
  );
  fill(main, h("h1", {}, "New run"), form, models);

  let collect = () => ({});
  let savedConfigs = null;

  function specField(spec, into) {
    const { id, el } = control(spec, datalist);
    // An empty field is not sent: the API's default applies, which the hint says.
    const hint = spec.byDefault ? ` (default ${spec.byDefault})` : spec.optional ? " (optional)" : "";
    const label = h("label", { for: id }, spec.label, hint ? h("span", { class: "hint" }, hint) : null);
    const container = h("div", { class: "field", "data-param": spec.param }, label, el);
    fields.add(spec.param, container, el);
    into.append(container);
    return { spec, el, container };
  }

  function modeFields(which) {
    const parts = [];
    const box = h("div");
    let members = null;
    let reviewers = null;
    const layers = [];
    const layerBox = h("div", { class: "layers" });
    if (which === "moa") {
      const addLayer = h("button", { type: "button", class: "secondary" }, "Add layer");
      const layerField = h("div", { "data-param": "layers" }, layerBox, addLayer);
      fields.add("layers", layerField, addLayer);
      const newLayer = () => {
        const n = layers.length + 1;
        const editor = membersEditor(fields, `layers.${n - 1}`, {
          legend: `Layer ${n} proposers`,
          noun: `layer ${n} proposer`,
          datalist,
        });
        layers.push(editor);
        layerBox.append(editor.element);
        return editor;
      };
      addLayer.addEventListener("click", () => newLayer().element.querySelector("input").focus());
      newLayer();
      box.append(layerField);
    } else {
      const legend = { debate: "Debaters", vote: "Voters" }[which] || "Members";
      members = membersEditor(fields, "members", { legend, noun: legend.toLowerCase().slice(0, -1), datalist });
      box.append(members.element);
    }
    for (const spec of FIELDS[which]) parts.push(specField(spec, box));
    if (which === "council") {
      reviewers = membersEditor(fields, "reviewers", {
        legend: "Reviewers (optional: the members by default)",
        noun: "reviewer",
        minRows: 0,
        datalist,
      });
      box.append(reviewers.element);
    }
    for (const spec of BUDGET) parts.push(specField(spec, box));

    const sync = () => {
      for (const { spec, container } of parts) {
        if (!spec.when) continue;
        const [param, value] = spec.when;
        const other = parts.find((p) => p.spec.param === param);
        container.hidden = other.el.value !== value;
      }
    };
    box.addEventListener("change", sync);
    sync();
    fill(modeArea, box);

    collect = () => {
      const body = { mode: which };
      if (members) body.members = members.value();
      if (reviewers && !reviewers.empty()) body.reviewers = reviewers.value();
      if (layers.length) body.layers = layers.map((l) => l.value());
      for (const { spec, el, container } of parts) {
        if (container.hidden) continue;
        const value = readValue(spec, el);
        if (value !== undefined) setPath(body, spec.param, value);
      }
      return body;
    };
  }

  async function savedFields() {
    const box = h("div");
    fill(modeArea, box);
    if (savedConfigs === null) {
      try {
        savedConfigs = (await api("/v1/consortiums", { signal: controller.signal })).data;
      } catch (exc) {
        if (exc.name === "AbortError" || refused(exc)) return;
        fill(box, h("p", { class: "field-error" }, `Could not list the saved configurations: ${exc.message}`));
        return;
      }
    }
    if (!savedConfigs.length) {
      fill(
        box,
        h(
          "p",
          {},
          "No saved configuration yet: save one with `moot save` or PUT /v1/consortiums/{name}, then start it here.",
        ),
      );
      collect = () => ({ config: "" });
      return;
    }
    const config = specField(
      choice(
        "config",
        "Configuration",
        savedConfigs.map((c) => c.name),
        {
          labels: Object.fromEntries(
            savedConfigs.map((c) => [c.name, `${c.name} (${c.config.mode || "consortium"}, version ${c.version})`]),
          ),
        },
      ),
      box,
    );
    const version = specField(number("config_version", "Version", { step: "1", min: "1", optional: true }), box);
    const overrides = specField(
      area("overrides", 'Overrides: a JSON object of request fields, e.g. {"max_iterations": 2}', { optional: true }),
      box,
    );
    overrides.el.setAttribute("placeholder", "{}");
    collect = () => {
      const body = {};
      const written = overrides.el.value.trim();
      if (written) {
        let parsed;
        try {
          parsed = JSON.parse(written);
        } catch (exc) {
          throw new LocalError("overrides", `not JSON: ${exc.message}`);
        }
        if (!parsed || typeof parsed !== "object" || Array.isArray(parsed)) {
          throw new LocalError("overrides", 'write a JSON object: {"field": value, ...}');
        }
        Object.assign(body, parsed);
      }
      body.config = config.el.value;
      const v = readValue(version.spec, version.el);
      if (v !== undefined) body.config_version = v;
      return body;
    };
  }

  function switchMode() {
    for (const param of [...fields.byParam.keys()]) if (param !== "prompt") fields.byParam.delete(param);
    fields.clear();
    if (mode.value === SAVED) savedFields();
    else modeFields(mode.value);
  }
  mode.addEventListener("change", switchMode);
  switchMode();

  api("/web/settings", { signal: controller.signal })
    .then((settings) =>
      fill(
        models,
        settings.models.map((m) => h("option", { value: m })),
      ),
    )
    .catch((exc) => exc.name === "AbortError" || refused(exc));

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    fields.clear();
    let body;
    try {
      body = collect();
    } catch (exc) {
      if (!(exc instanceof LocalError)) throw exc;
      fields.show([{ param: exc.param, message: exc.message }]);
      return;
    }
    body.prompt = prompt.value;
    submit.disabled = true;
    try {
      const accepted = await api("/v1/runs", { method: "POST", body, signal: controller.signal });
      navigate(`/runs/${encodeURIComponent(accepted.id)}`);
    } catch (exc) {
      if (exc.name === "AbortError" || refused(exc)) return;
      if (exc instanceof ApiError && exc.status === 422 && exc.errors.length) {
        fields.show(exc.errors, mode.value === SAVED ? "overrides" : null);
      } else {
        fields.show([{ param: "", message: exc.message }]);
      }
    } finally {
      submit.disabled = false;
    }
  });
  return () => controller.abort();
}

class LocalError extends Error {
  constructor(param, message) {
    super(message);
    this.param = param;
  }
}
