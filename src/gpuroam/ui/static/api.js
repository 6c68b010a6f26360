// The control plane's API, with its bearer token, and the live events stream.
//
// The token arrives in the URL fragment (/#token=...), which browsers never send to a server;
// it is moved into sessionStorage (this tab only) and taken out of the address bar.

const TOKEN_KEY = "gpuroam.token";
const tokenListeners = new Set();

export class Unauthorized extends Error {}

export function adoptTokenFromFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  const token = params.get("token");
  if (token) {
    setToken(token);
    history.replaceState(null, "", location.pathname + location.search);
  }
}

export function getToken() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(token) {
  sessionStorage.setItem(TOKEN_KEY, token.trim());
  tokenListeners.forEach((listener) => listener());
}

export function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

/** Resolves when a new token is set. */
function nextToken() {
  return new Promise((resolve) => {
    const listener = () => {
      tokenListeners.delete(listener);
      resolve();
    };
    tokenListeners.add(listener);
  });
}

/** Resolves once there is a token (at once if there is one). */
function tokenReady() {
  return getToken() ? Promise.resolve() : nextToken();
}

function headers(extra = {}) {
  return { Authorization: `Bearer ${getToken()}`, ...extra };
}

/** GET or POST a JSON endpoint under /api/v1; throws Unauthorized on 401, Error(detail) otherwise. */
export async function api(path, { method = "GET", body } = {}) {
  const init = { method, headers: headers(), cache: "no-store" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(`/api/v1${path}`, init);
  if (response.status === 401) throw new Unauthorized("the token was refused");
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(describe(data.detail) || `${response.status} ${response.statusText}`);
  return data;
}

function describe(detail) {
  if (Array.isArray(detail)) return detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
  return detail;
}

/**
 * Follow /api/v1/events/stream for as long as the page lives. EventSource cannot send an
 * Authorization header, so this reads the server-sent events with fetch and a stream reader,
 * and reconnects (with Last-Event-ID, so nothing is missed or repeated) whenever it ends.
 *   onEvent(event)         each event, in order
 *   onState("live"|"reconnecting"|"unauthorized")
 */
export async function followEvents({ onEvent, onState }) {
  let lastId = 0;
  for (;;) {
    await tokenReady();
    try {
      const response = await fetch(`/api/v1/events/stream?after=${lastId}`, {
        headers: headers({ "Last-Event-ID": String(lastId), Accept: "text/event-stream" }),
        cache: "no-store",
      });
      if (response.status === 401) throw new Unauthorized("the token was refused");
      if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
      onState("live");
      for await (const message of serverSentEvents(response.body)) {
        if (message.id) lastId = Number(message.id);
        if (message.data) onEvent(JSON.parse(message.data));
      }
      // The server ends each stream after a few seconds; reconnect at once.
    } catch (error) {
      const refused = error instanceof Unauthorized;
      onState(refused ? "unauthorized" : "reconnecting");
      await (refused ? nextToken() : sleep(1000));
    }
  }
}

/** Parse a text/event-stream body into {id, data} messages (comments and retry: are skipped). */
async function* serverSentEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const message = { id: "", data: "" };
      for (const line of block.split("\n")) {
        const colon = line.indexOf(":");
        if (colon === 0) continue; // a comment: keep-alive
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "id") message.id = text;
        if (field === "data") message.data += (message.data ? "\n" : "") + text;
      }
      if (message.id || message.data) yield message;
    }
  }
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
