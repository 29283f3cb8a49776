// The live WebSocket: connects, keeps it alive, reconnects with backoff and jitter, and shows
// its state. What to (re)send on a fresh socket is the caller's: `onOpen` runs on every
// connection, because the server forgets a viewer's view and groups when its socket closes.

import { state } from "./state.js";
import { $ } from "./util.js";

const PING_MS = 20_000;
const SILENT_MS = 50_000;    // no message at all for this long (pongs included): socket is dead
const BACKOFF_MIN_MS = 500, BACKOFF_MAX_MS = 10_000;

/**
 * The delay before reconnect attempt `attempt` (0-based): doubling from 0.5 s up to 10 s, each
 * drawn at random from its upper half so that many tabs do not reconnect in lockstep.
 * @param {number} attempt
 * @param {() => number} [random]
 */
export function backoffDelay(attempt, random = Math.random) {
  const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** attempt);
  return base / 2 + random() * base / 2;
}

/**
 * @param {{ onOpen: () => void, onMessage: (msg: any) => void, onStatus?: (status: string) => void }} handlers
 */
export function createConnection({ onOpen, onMessage, onStatus = () => {} }) {
  const status = $("status");
  /** @type {WebSocket|null} */
  let ws = null;
  let reconnectTimer = 0, lastMessageAt = 0, retryAt = 0;

  function setStatus(/** @type {import("./state.js").ConnectionStatus} */ value) {
    state.connection.status = value;
    status.textContent = value;
    status.className = value;
    document.body.dataset.connection = value;
    onStatus(value);
  }

  function connect() {
    clearTimeout(reconnectTimer);
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const auth = state.token ? `?token=${encodeURIComponent(state.token)}` : "";
    const sock = ws = new WebSocket(`${proto}//${location.host}/ws${auth}`);
    if (state.connection.status !== "reconnecting") setStatus("connecting");
    sock.onopen = () => {
      state.connection.attempts = 0;
      lastMessageAt = Date.now();
      status.title = "";
      setStatus("connected");
      onOpen();
    };
    sock.onmessage = (ev) => {
      lastMessageAt = Date.now();
      let msg;
      try { msg = JSON.parse(ev.data); } catch { return; }
      if (msg.type === "reconnect") {
        // The server is going away on purpose: come back soon, without counting a failure.
        abandon(sock, 250 + Math.random() * 750);
        return;
      }
      onMessage(msg); // "pong" needs nothing beyond lastMessageAt
    };
    sock.onclose = () => dropped(nextDelay());
    sock.onerror = () => {};                            // onclose follows and handles it
  }

  function nextDelay() { return backoffDelay(state.connection.attempts++); }

  // Stops listening to a socket and schedules a new one. Used instead of waiting for onclose,
  // which on a half-open connection can take minutes to fire.
  function abandon(sock, delay) {
    sock.onclose = sock.onmessage = null;
    sock.close();
    dropped(delay);
  }

  function dropped(delay) {
    ws = null;
    retryAt = Date.now() + delay;
    setStatus("reconnecting");
    showRetry();
    clearTimeout(reconnectTimer);
    reconnectTimer = setTimeout(connect, delay);
  }

  // The indicator's tooltip says when the next attempt is (the text stays short and fixed).
  function showRetry() {
    const seconds = Math.max(0, Math.ceil((retryAt - Date.now()) / 1000));
    status.title = `connection lost; attempt ${state.connection.attempts + 1} in ${seconds} s`;
  }

  setInterval(() => {
    if (!ws || ws.readyState !== WebSocket.OPEN) return;
    if (Date.now() - lastMessageAt > SILENT_MS) { abandon(ws, nextDelay()); return; } // half-open
    ws.send(JSON.stringify({ type: "ping" }));
  }, PING_MS);

  return {
    start: connect,
    /** Sends a message if the socket is open; says whether it did. */
    send(/** @type {object} */ msg) {
      if (!ws || ws.readyState !== WebSocket.OPEN) return false;
      ws.send(JSON.stringify(msg));
      return true;
    },
    isOpen: () => !!ws && ws.readyState === WebSocket.OPEN,
    /** Reconnects now (a new token was entered). */
    restart() { if (ws) abandon(ws, 0); else connect(); },
  };
}
