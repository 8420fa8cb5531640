// Nodes built from data. Every string becomes a text node or an attribute value: no HTML is ever
// parsed from what the API returns (model text is untrusted), and the page's Content-Security-Policy
// (Trusted Types with no policy) makes the browser refuse it if anything tried.

const SVG_NS = "http://www.w3.org/2000/svg";

// Attributes that would run or load something, or style from data: never set from here.
const REFUSED = /^(on|style$|srcdoc$|formaction$)/i;

function appendAll(parent, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) appendAll(parent, child);
    else if (child instanceof Node) parent.append(child);
    else parent.append(document.createTextNode(String(child)));
  }
}

function setAttributes(el, attrs) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (typeof value === "function") {
      if (!name.startsWith("on")) throw new Error(`attribute ${name} is a function`);
      el.addEventListener(name.slice(2), value);
      continue;
    }
    if (REFUSED.test(name)) throw new Error(`attribute ${name} is not set from data`);
    if ((name === "href" || name === "src") && !safeUrl(String(value))) continue;
    el.setAttribute(name, value === true ? "" : String(value));
  }
}

/** A link target the page may use: a path of this site, or an http(s) URL. */
export function safeUrl(url) {
  if (url.startsWith("/") && !url.startsWith("//")) return true;
  try {
    const parsed = new URL(url);
    return parsed.protocol === "https:" || parsed.protocol === "http:" || parsed.protocol === "blob:";
  } catch {
    return false;
  }
}

/** An HTML element: h("p", {class: "x"}, "text", child, [more]). Functions `onX` are listeners. */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttributes(el, attrs);
  appendAll(el, children);
  return el;
}

/** An SVG element, built the same way. */
export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttributes(el, attrs);
  appendAll(el, children);
  return el;
}

/** Replace every child of `el` with `children`. */
export function fill(el, ...children) {
  el.replaceChildren();
  appendAll(el, children);
  return el;
}

let counter = 0;
/** A fresh id for a label's `for` or an `aria-describedby`. */
export function uid(prefix) {
  counter += 1;
  return `${prefix}-${counter}`;
}
