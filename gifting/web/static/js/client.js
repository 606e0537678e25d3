// The protocol client shared by the pages: the HTTP API and the websocket protocol of docs/PROTOCOL.md.
// No page talks to the server any other way.

const TOKEN_KEY = "gifting.token";
const PING_INTERVAL_MS = 15000;
const PONG_TIMEOUT_MS = 10000;
const WELCOME_TIMEOUT_MS = 10000;
const BACKOFF_MS = [250, 500, 1000, 2000, 4000, 5000];
const HTTP_TIMEOUT_MS = 15000;
const RESEND_AFTER_MS = 10000;

// Identity -----------------------------------------------------------------------------------------------

/** The signed token: from the URL fragment (#token=...), kept for this tab, then removed from the URL. */
export function readToken() {
  const params = new URLSearchParams(location.hash.slice(1));
  const fromUrl = params.get("token");
  if (fromUrl) {
    try { sessionStorage.setItem(TOKEN_KEY, fromUrl); } catch { /* storage may be off: keep it in the URL */ return fromUrl; }
    params.delete("token");
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + location.search + (rest ? "#" + rest : ""));
    return fromUrl;
  }
  try { return sessionStorage.getItem(TOKEN_KEY); } catch { return null; }
}

export function forgetToken() {
  try { sessionStorage.removeItem(TOKEN_KEY); } catch { /* nothing to forget */ }
}

/** The token's claims, read without verifying (the server verifies): {sub, role, name, exp} or null. */
export function tokenClaims(token) {
  if (!token) return null;
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const json = new TextDecoder().decode(Uint8Array.from(atob(part), (c) => c.charCodeAt(0)));
    const claims = JSON.parse(json);
    return typeof claims === "object" && claims ? claims : null;
  } catch {
    return null;
  }
}

export function tokenExpired(token, skewS = 0) {
  const claims = tokenClaims(token);
  return !!claims && typeof claims.exp === "number" && claims.exp + skewS < Date.now() / 1000;
}

/** A link to another page that carries the token in its fragment (never sent to a server). */
export function withToken(url, token) {
  return token ? `${url}#token=${encodeURIComponent(token)}` : url;
}

/** A random UUID v4 (crypto.randomUUID needs a secure context; this does not). */
export function uuid() {
  if (globalThis.crypto?.randomUUID && globalThis.isSecureContext) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

// HTTP ---------------------------------------------------------------------------------------------------

/** An error from the API ({"error": {code, message}}), or `network` when the server could not be reached. */
export class ApiError extends Error {
  constructor(status, code, message, body = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.body = body;
  }
  get unreachable() { return this.code === "network" || this.code === "timeout"; }
  get authFailed() { return this.status === 401; }
}

/**
 * Call the HTTP API. Returns the decoded JSON body; throws ApiError with the server's code and message.
 * opts: {method, token, body, idempotencyKey, timeoutMs}
 */
export async function api(path, opts = {}) {
  const headers = { Accept: "application/json" };
  if (opts.token) headers.Authorization = `Bearer ${opts.token}`;
  if (opts.idempotencyKey) headers["Idempotency-Key"] = opts.idempotencyKey;
  let body;
  if (opts.body !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(opts.body);
  }
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), opts.timeoutMs ?? HTTP_TIMEOUT_MS);
  let response;
  try {
    response = await fetch(path, { method: opts.method || "GET", headers, body, signal: controller.signal, cache: "no-store" });
  } catch (err) {
    if (err?.name === "AbortError") throw new ApiError(0, "timeout", "The server did not answer in time.");
    throw new ApiError(0, "network", "Can't reach the server. Check your connection.");
  } finally {
    clearTimeout(timer);
  }
  let data = null;
  const text = await response.text().catch(() => "");
  if (text) {
    try { data = JSON.parse(text); } catch { data = null; }
  }
  if (!response.ok) {
    const error = data?.error;
    // Rejected gifts and pledges answer with their result ({status: "rejected", reason}), not an error object.
    const code = error?.code || data?.reason || `http_${response.status}`;
    const message = error?.message || data?.message || (data?.reason ? `rejected: ${data.reason}` : `The server answered ${response.status} ${response.statusText}.`);
    throw new ApiError(response.status, code, message, data);
  }
  return data;
}

// Websocket ----------------------------------------------------------------------------------------------

/**
 * One websocket connection to /v1/ws that stays up: it reconnects with backoff, rejoins its rooms with
 * `since` so no event is lost or repeated, resends gifts whose result it never saw (same gift_id), and
 * notices a dead network with application pings.
 *
 * Events (CustomEvent.detail):
 *   status    {state: connecting|open|reconnecting|unauthorized|fatal, attempt, code, message}
 *   welcome   the welcome message
 *   joined    {room, message, resumed}          resumed: a `since` join that recovered (nothing to reset)
 *   snapshot  {room, events, reset}             recent events (history; do not animate); reset: view is stale
 *   events    {room, events}                    new room events, each exactly once (history has offsets)
 *   result    a gift_result (also resolves the promise from sendGift)
 *   error     an error message not tied to a gift
 */
export class Live extends EventTarget {
  constructor(token, { url } = {}) {
    super();
    this.token = token;
    this.url = url || `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/ws`;
    this.ws = null;
    this.state = "idle";
    this.attempt = 0;
    this.rooms = new Map(); // room -> {epoch, offset, joined, resyncing}
    this.pending = new Map(); // gift_id -> {message, resolve}
    this.welcome = null;
    this.timers = {};
    this.lastHeard = 0;
    this.stopped = false;
    addEventListener("online", () => { if (this.state === "reconnecting") this.reconnectNow(); });
  }

  emit(type, detail) { this.dispatchEvent(new CustomEvent(type, { detail })); }

  setState(state, extra = {}) {
    this.state = state;
    this.emit("status", { state, attempt: this.attempt, ...extra });
  }

  start() {
    this.stopped = false;
    this.open();
    return this;
  }

  stop() {
    this.stopped = true;
    this.clearTimers();
    if (this.ws) this.ws.close(1000, "bye");
    this.ws = null;
  }

  /** Join a room (or keep it joined across reconnects). */
  join(room) {
    if (!this.rooms.has(room)) this.rooms.set(room, { epoch: null, offset: 0, joined: false, resyncing: false });
    if (this.welcome) this.sendJoin(room);
  }

  leave(room) {
    this.rooms.delete(room);
    this.send({ type: "leave", room });
  }

  /** Send a gift; resolves with its gift_result ({status: settled|rejected, reason, coins}). */
  sendGift(room, gift, count, price, to, campaign) {
    const giftId = uuid();
    const message = { type: "gift", room, gift, count, gift_id: giftId, ref: giftId };
    if (typeof price === "number") message.price = price;
    if (to) message.to = to; // a guest on stage (default: the host)
    if (campaign) message.campaign = campaign; // a sponsored gift: the brand's budget pays
    return {
      giftId,
      result: new Promise((resolve) => {
        this.pending.set(giftId, { message, resolve, sentAt: Date.now() });
        this.send(message);
      }),
    };
  }

  send(message) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN && this.welcome) {
      this.ws.send(JSON.stringify(message));
      return true;
    }
    return false; // sent (or resent) after the next welcome
  }

  // Connection lifecycle ---------------------------------------------------------------------------------

  open() {
    this.clearTimers();
    this.welcome = null;
    for (const state of this.rooms.values()) state.joined = false;
    this.setState(this.attempt === 0 ? "connecting" : "reconnecting");
    let ws;
    try {
      ws = new WebSocket(`${this.url}?token=${encodeURIComponent(this.token)}`, ["gifting.v1.json"]);
    } catch (err) {
      this.scheduleReconnect(0, String(err));
      return;
    }
    this.ws = ws;
    this.closeInfo = null;
    ws.onmessage = (e) => { if (this.ws === ws) this.onMessage(e.data); };
    ws.onclose = (e) => { if (this.ws === ws) this.onClose(e.code, e.reason); };
    ws.onerror = () => { /* onclose follows */ };
    this.timers.welcome = setTimeout(() => { if (this.ws === ws && !this.welcome) this.drop("no welcome from the server"); }, WELCOME_TIMEOUT_MS);
  }

  /** Give up on the current socket (dead network, no answer) and reconnect at once. */
  drop(why) {
    const ws = this.ws;
    this.ws = null;
    if (ws) { try { ws.close(4000, "client reconnecting"); } catch { /* already closed */ } }
    this.onClose(1006, why);
  }

  /** The browser says the network is back: try at once instead of waiting out the backoff. */
  reconnectNow() {
    const ws = this.ws;
    this.ws = null;
    if (ws) { try { ws.close(4000, "client reconnecting"); } catch { /* already closed */ } }
    this.open();
  }

  onClose(code, reason) {
    this.ws = null;
    this.welcome = null;
    this.clearTimers();
    if (this.stopped) return;
    if (code === 4001) {
      const expired = this.authCode === "token_expired" || reason === "token_expired";
      this.setState("unauthorized", {
        code: expired ? "token_expired" : "unauthorized",
        message: this.authMessage || (expired ? "Your sign-in expired." : "Your sign-in was not accepted."),
      });
      return;
    }
    if (code === 1002 || code === 1009) {
      this.setState("fatal", { code, message: reason || "The server refused this client." });
      return;
    }
    this.scheduleReconnect(code, reason);
  }

  scheduleReconnect(code, reason) {
    this.attempt += 1;
    const base = BACKOFF_MS[Math.min(this.attempt - 1, BACKOFF_MS.length - 1)];
    const delay = Math.round(base * (0.75 + Math.random() * 0.5));
    this.setState("reconnecting", { code, message: reason || "", retryInMs: delay });
    this.timers.reconnect = setTimeout(() => this.open(), delay);
  }

  clearTimers() {
    for (const key of Object.keys(this.timers)) {
      clearTimeout(this.timers[key]);
      clearInterval(this.timers[key]);
    }
    this.timers = {};
  }

  startPings() {
    this.lastHeard = Date.now();
    this.timers.ping = setInterval(() => {
      if (Date.now() - this.lastHeard > PING_INTERVAL_MS + PONG_TIMEOUT_MS) {
        this.drop("no answer from the server");
        return;
      }
      this.send({ type: "ping", ref: "keepalive" });
      // A gift still without its result: ask again with the same gift_id (the server answers the outcome).
      const now = Date.now();
      for (const waiting of this.pending.values()) {
        if (now - waiting.sentAt > RESEND_AFTER_MS) { waiting.sentAt = now; this.send(waiting.message); }
      }
    }, PING_INTERVAL_MS);
  }

  sendJoin(room) {
    const state = this.rooms.get(room);
    const message = { type: "join", room, ref: `join:${room}` };
    if (state.epoch) message.since = { epoch: state.epoch, offset: state.offset };
    state.sentSince = !!state.epoch;
    this.send(message);
  }

  // Incoming -----------------------------------------------------------------------------------------------

  onMessage(data) {
    this.lastHeard = Date.now();
    let message;
    try { message = JSON.parse(data); } catch { return; }
    switch (message.type) {
      case "welcome": return this.onWelcome(message);
      case "joined": return this.onJoined(message);
      case "events": return this.onEvents(message);
      case "gift_result": return this.onResult(message);
      case "error": return this.onError(message);
      default: return undefined; // pong, left
    }
  }

  onWelcome(message) {
    clearTimeout(this.timers.welcome);
    this.welcome = message;
    this.attempt = 0;
    this.setState("open");
    this.emit("welcome", message);
    this.startPings();
    for (const room of this.rooms.keys()) this.sendJoin(room);
    // Gifts whose result we never saw: the same gift_id again; the server settles each at most once.
    for (const waiting of this.pending.values()) {
      waiting.sentAt = Date.now();
      this.send(waiting.message);
    }
  }

  onJoined(message) {
    const state = this.rooms.get(message.room);
    if (!state) return;
    const resumed = state.sentSince && message.recovered === true;
    const reset = state.sentSince && message.recovered !== true;
    state.joined = true;
    state.resyncing = false;
    state.epoch = message.epoch;
    if (!resumed) state.offset = message.offset;
    this.emit("joined", { room: message.room, message, resumed });
    if (!resumed) this.emit("snapshot", { room: message.room, events: message.recent || [], reset });
  }

  onEvents(message) {
    const state = this.rooms.get(message.room);
    if (!state || !state.joined || state.resyncing) return;
    const events = message.events || [];
    const ephemeral = (e) => typeof e.offset !== "number";
    let fresh;
    if (typeof message.from === "number" && typeof message.to === "number") {
      // The frame covers offsets from..to; a viewers' frame may merge a combo's gifts into its last one, so
      // continuity is checked on the range, not on each entry.
      if (message.from > state.offset + 1) { this.resync(message.room, state); return; }
      fresh = events.filter((e) => ephemeral(e) || e.offset > state.offset);
      state.offset = Math.max(state.offset, message.to);
    } else {
      fresh = [];
      for (const event of events) {
        if (ephemeral(event)) { fresh.push(event); continue; } // a snapshot (viewers, leaderboard, ...)
        if (event.offset <= state.offset) continue; // already seen (replayed)
        if (event.offset > state.offset + 1) { this.resync(message.room, state); break; }
        state.offset = event.offset;
        fresh.push(event);
      }
    }
    if (fresh.length) this.emit("events", { room: message.room, events: fresh });
  }

  /** A hole in the offsets: join again with `since`; the replay brings exactly what was missed. */
  resync(room, state) {
    state.resyncing = true;
    state.joined = false;
    this.sendJoin(room);
  }

  onResult(message) {
    const waiting = this.pending.get(message.gift_id);
    if (waiting) {
      this.pending.delete(message.gift_id);
      waiting.resolve(message);
    }
    this.emit("result", message);
  }

  onError(message) {
    if (message.code === "unauthorized" || message.code === "token_expired") {
      this.authCode = message.code;
      this.authMessage = message.message;
      return;
    }
    const giftId = message.gift_id || (this.pending.has(message.ref) ? message.ref : null);
    if (giftId && this.pending.has(giftId)) {
      const waiting = this.pending.get(giftId);
      this.pending.delete(giftId);
      waiting.resolve({ type: "gift_result", gift_id: giftId, status: "rejected", reason: message.code, message: message.message });
      return;
    }
    if (typeof message.ref === "string" && message.ref.startsWith("join:")) {
      const room = message.ref.slice(5);
      this.emit("room_error", { room, code: message.code, message: message.message });
      return;
    }
    this.emit("error", message);
  }
}
