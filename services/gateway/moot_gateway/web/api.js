// The gateway's API as the page uses it: the key from session storage as a bearer header (never
// in a URL), errors in the API's one shape, and a run's events read from a fetch() stream, since
// EventSource cannot send headers. A dropped stream is resumed with Last-Event-ID.

const KEY = "moot.apiKey";

export const session = {
  key() {
    return sessionStorage.getItem(KEY);
  },
  signIn(key) {
    sessionStorage.setItem(KEY, key);
  },
  signOut() {
    sessionStorage.removeItem(KEY);
  },
};

/** A refusal from the API (`{"error": {message, type, param, code, errors}}`), or no answer (status 0). */
export class ApiError extends Error {
  constructor(status, error, retryAfter = null) {
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.type = error.type || null;
    this.param = error.param || null;
    this.code = error.code || null;
    this.errors = error.errors || (error.param ? [{ param: error.param, message: error.message }] : []);
    this.retryAfter = retryAfter;
  }
}

function headers(extra) {
  const key = session.key();
  return { Accept: "application/json", ...(key ? { Authorization: `Bearer ${key}` } : {}), ...extra };
}

async function refusal(response) {
  let error = { message: `${response.status} ${response.statusText}` };
  try {
    const body = await response.json();
    if (body && typeof body.error === "object" && body.error) error = body.error;
  } catch {
    // not JSON (a proxy's page): the status says enough
  }
  const retry = Number(response.headers.get("Retry-After"));
  return new ApiError(response.status, error, Number.isFinite(retry) && retry > 0 ? retry : null);
}

/** Call the API: the answer's JSON (null for 204), or an ApiError. */
export async function api(path, { method = "GET", body, signal, key } = {}) {
  const extra = body === undefined ? {} : { "Content-Type": "application/json" };
  if (key) extra.Authorization = `Bearer ${key}`;
  let response;
  try {
    response = await fetch(path, {
      method,
      headers: headers(extra),
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      cache: "no-store",
    });
  } catch (exc) {
    if (exc.name === "AbortError") throw exc;
    throw new ApiError(0, { message: "The gateway cannot be reached; try again in a moment." });
  }
  if (!response.ok) throw await refusal(response);
  return response.status === 204 ? null : response.json();
}

/**
 * Server-sent events from a byte stream: yields {event, data, id} per event (data as text).
 * Comments (keep-alives) are skipped; lines end in \n, \r\n or \r, as the format allows.
 */
export async function* readEvents(stream) {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = { event: "message", data: [], id: null };
  const dispatch = () => {
    const out = event.data.length ? { event: event.event, data: event.data.join("\n"), id: event.id } : null;
    event = { event: "message", data: [], id: null };
    return out;
  };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let match;
      // A lone \r at the very end may be the first half of \r\n: wait for more.
      while ((match = /\r\n|\n|\r(?!$)/.exec(buffer))) {
        const line = buffer.slice(0, match.index);
        buffer = buffer.slice(match.index + match[0].length);
        if (line === "") {
          const ready = dispatch();
          if (ready) yield ready;
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "event") event.event = value;
        else if (field === "data") event.data.push(value);
        else if (field === "id" && !value.includes("\0")) event.id = value;
      }
    }
  } finally {
    reader.releaseLock();
  }
}

export const TERMINAL = new Set(["run.completed", "run.failed", "run.cancelled"]);

const sleep = (ms, signal) =>
  new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener(
      "abort",
      () => {
        clearTimeout(timer);
        resolve();
      },
      { once: true },
    );
  });

/**
 * Follow a run's events until its end event: `onEvent({type, data, id})` for each (data parsed).
 * A stream that drops before the end is opened again with `Last-Event-ID: <last id seen>`, so
 * nothing is missed and nothing comes twice. `onConnection(state)` says "live", "reconnecting".
 * Resolves when the run has ended or `signal` aborts; rejects on a refusal (401, 404).
 */
export async function follow(runId, { onEvent, onConnection = () => {}, signal, startAfter = null }) {
  let lastId = startAfter;
  let delay = 500;
  const path = `/v1/runs/${encodeURIComponent(runId)}/events`;
  while (!signal?.aborted) {
    let response = null;
    try {
      const extra = { Accept: "text/event-stream" };
      if (lastId !== null) extra["Last-Event-ID"] = lastId;
      response = await fetch(path, { headers: headers(extra), signal, cache: "no-store" });
    } catch {
      if (signal?.aborted) return;
    }
    if (response && !response.ok) {
      const error = await refusal(response);
      if (![429, 502, 503, 504].includes(error.status)) throw error;
      delay = Math.max(delay, (error.retryAfter || 1) * 1000);
      response = null;
    }
    if (response) {
      onConnection("live");
      try {
        for await (const message of readEvents(response.body)) {
          if (message.id !== null) lastId = message.id;
          delay = 500;
          const data = JSON.parse(message.data);
          onEvent({ type: message.event, data, id: message.id });
          if (TERMINAL.has(message.event)) return;
        }
      } catch {
        if (signal?.aborted) return;
      }
    }
    onConnection("reconnecting");
    await sleep(delay, signal);
    delay = Math.min(delay * 2, 10000);
  }
}
