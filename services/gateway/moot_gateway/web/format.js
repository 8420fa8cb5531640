// How numbers, times and usage read on the page and in the Markdown export.

export function tokens(n) {
  return (n || 0).toLocaleString("en-US");
}

/** US dollars with enough digits for a cheap call; "—" when the provider has no price. */
export function usd(cost) {
  if (cost === null || cost === undefined) return "—";
  if (cost === 0) return "$0";
  if (cost < 0.01) return `$${cost.toPrecision(2)}`;
  return `$${cost.toFixed(cost < 1 ? 4 : 2)}`;
}

export function usageLine(usage) {
  const u = usage || {};
  return `${tokens(u.input_tokens)} in · ${tokens(u.output_tokens)} out · ${usd(u.cost_usd)}`;
}

/** A date in the reader's locale, to the second; "" for none. */
export function when(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
}

export function percent(share) {
  return share === null || share === undefined ? "—" : `${Math.round(share * 100)}%`;
}

export function confidence(value) {
  return value === null || value === undefined ? "unreadable" : value.toFixed(2);
}

export function firstLine(text, most = 120) {
  const line = (text || "").split(/\r?\n/, 1)[0].trim();
  return line.length > most ? `${line.slice(0, most - 1)}…` : line;
}

/** A member instance as the protocols name it: `model#instance`. */
export function label(call) {
  return call.label || `${call.model}#${call.instance}`;
}

/** The models a request names, as "m1 ×2, m2; arbiter arb". */
export function membersOf(request) {
  if (!request || typeof request !== "object") return "";
  const list = (specs) => (specs || []).map((m) => (m.count > 1 ? `${m.model} ×${m.count}` : m.model)).join(", ");
  const parts = [];
  if (request.layers) parts.push(request.layers.map((layer, i) => `layer ${i + 1}: ${list(layer)}`).join("; "));
  else parts.push(list(request.members));
  for (const role of ["arbiter", "judge", "chairman", "aggregator"]) {
    if (request[role]) parts.push(`${role} ${request[role]}`);
  }
  return parts.join("; ");
}
