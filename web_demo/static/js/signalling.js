// The /ws protocol client (docs/protocol.md): hello/welcome, ping/pong keepalive, request ids
// echoed in replies, coded errors, resume after a dropped socket, reconnect with backoff.
//
// This module knows the wire format and nothing about pages. It emits:
//   "open"        {welcome}            first successful hello
//   "resumed"     {welcome}            socket came back and reattached to the same participant
//   "reset"       {welcome, reason}    socket came back but the resume was refused (fresh start)
//   "connection"  {state}              "connecting" | "open" | "reconnecting" | "closed"
//   "fatal"       {code, message}      token refused or replaced: reconnecting will not help
//   "message"     {message}            every server message but pong, welcome, ack and media.answer
//   <type>        {message}            the same, under the message's own type
// A reply resolves the request's promise and, when it reports state (session.state, presence),
// is emitted as an event too, so that listeners see every state change in one place.
// Outgoing messages are paced below the announced rate limit; pings go first.

export const PROTOCOL_VERSION = 1;

// Close codes after which reconnecting is pointless (docs/protocol.md, "Close codes").
// 4001: the token was refused; 4010: the same user connected elsewhere (reconnecting would
// just take the connection back and forth between the two).
export const CLOSE_CODES = {
  AUTH_FAILED: 4001,
  HELLO_TIMEOUT: 4002,
  RATE_LIMITED: 4008,
  MESSAGE_TOO_BIG: 4009,
  REPLACED: 4010,
  PING_TIMEOUT: 4011,
  GOING_AWAY: 4012,
};
const FATAL_CLOSE_CODES = new Set([CLOSE_CODES.AUTH_FAILED, CLOSE_CODES.REPLACED]);
const FATAL_ERROR_CODES = new Set(["auth_required", "token_invalid", "token_expired", "token_revoked", "unsupported_version"]);

export class ProtocolError extends Error {
  constructor(code, message, details = {}) {
    super(message || code);
    this.code = code;
    this.details = details;
  }
}

export class SignallingClient extends EventTarget {
  /**
   * @param {object} options
   * @param {string} options.url   ws(s) URL of /ws
   * @param {() => string} options.token  the bearer token (read again on every connect)
   * @param {number} [options.requestTimeout]  ms before a request without a reply fails
   */
  constructor({ url, token, requestTimeout = 10000, backoff = { initial: 250, max: 5000 } }) {
    super();
    this.url = url;
    this.token = token;
    this.requestTimeout = requestTimeout;
    this.backoff = backoff;
    this.state = "closed";
    this.welcome = null;
    this.resumeToken = null;
    this.ws = null;
    this._nextId = 1;
    this._pending = new Map();
    this._attempt = 0;
    this._timers = { ping: null, pong: null, reconnect: null, pump: null };
    this._outbox = [];
    this._sentAt = [];
    this._wanted = false;
    this._handshake = null;
  }

  /** Open the socket and say hello; resolves with the welcome message. */
  connect() {
    this._wanted = true;
    return this._open();
  }

  /** Close for good (no reconnect); the server ends our presence after the grace period. */
  close(code = 1000, reason = "bye") {
    this._wanted = false;
    this._stopTimers();
    clearTimeout(this._timers.reconnect);
    if (this.ws) this.ws.close(code, reason);
    this._setState("closed");
    this._failPending(new ProtocolError("closed", "the connection was closed"));
  }

  /** Drop the socket as a network failure would (tests use this): a resume follows. */
  simulateDrop() {
    if (this.ws) this.ws.close(4999, "simulated drop");
  }

  /** Send a request and wait for the reply that echoes its id (or an error whose ref is it). */
  request(type, body = {}, { timeout = this.requestTimeout } = {}) {
    const id = `c${this._nextId++}`;
    return new Promise((resolve, reject) => {
      if (!this.ws || this.ws.readyState !== WebSocket.OPEN || (this.state !== "open" && type !== "hello" && type !== "resume")) {
        reject(new ProtocolError("not_connected", "not connected to the server"));
        return;
      }
      const timer = setTimeout(() => {
        this._pending.delete(id);
        reject(new ProtocolError("timeout", `no reply to ${type} within ${timeout} ms`));
      }, timeout);
      this._pending.set(id, { resolve, reject, timer, type });
      this._send({ ...body, v: PROTOCOL_VERSION, type, id });
    });
  }

  /** Fire-and-forget: still carries an id so that an error can point at it. */
  notify(type, body = {}) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this._send({ ...body, v: PROTOCOL_VERSION, type, id: `c${this._nextId++}` });
    return true;
  }

  /** Subscribe to one message type (or "message" for all); returns the unsubscribe function. */
  on(type, handler) {
    const listener = (event) => handler(event.detail);
    this.addEventListener(type, listener);
    return () => this.removeEventListener(type, listener);
  }

  // --- the protocol's operations (docs/protocol.md, one method per client message) ---------

  /** presence.set → presence. status: "online" | "away" | "offline" (experts only). */
  setPresence(status) {
    return this.request("presence.set", { status });
  }

  /** help.request → session.state. Either {expertId} or {skill}; resolves with the session. */
  async requestHelp({ expertId, skill, note }) {
    const body = expertId ? { expert_id: expertId } : { skill };
    if (note) body.note = note;
    return (await this.request("help.request", body)).session;
  }

  /** help.accept → session.state (accepted). */
  async acceptHelp(sessionId) {
    return (await this.request("help.accept", { session_id: sessionId })).session;
  }

  /** help.decline → session.state (ended, declined). */
  async declineHelp(sessionId, message) {
    return (await this.request("help.decline", message ? { session_id: sessionId, message } : { session_id: sessionId })).session;
  }

  /** help.cancel → session.state (ended, cancelled). */
  async cancelHelp(sessionId) {
    return (await this.request("help.cancel", { session_id: sessionId })).session;
  }

  /** session.end → session.state (ended, hangup). */
  async endSession(sessionId) {
    return (await this.request("session.end", { session_id: sessionId })).session;
  }

  /** The signalling side of one session's media, in the shape call.js expects. */
  mediaChannel(sessionId) {
    const mine = (message) => message.session_id === sessionId;
    return {
      offer: async (transport, sdp) => {
        const reply = await this.request("media.offer", { session_id: sessionId, transport, sdp });
        return reply.sdp;
      },
      answer: (transport, sdp, offerId) =>
        this.request("media.answer", { session_id: sessionId, transport, sdp, offer_id: offerId }),
      candidate: (transport, candidate) => {
        // Chromium adds fields the schema does not know; send exactly RTCIceCandidateInit.
        const init = candidate && {
          candidate: candidate.candidate,
          sdpMid: candidate.sdpMid ?? null,
          sdpMLineIndex: candidate.sdpMLineIndex ?? null,
          usernameFragment: candidate.usernameFragment ?? null,
        };
        if (init && !init.candidate) return;
        this.request("media.ice", { session_id: sessionId, transport, candidate: init }).catch(() => {});
      },
      onServerOffer: (handler) =>
        this.on("media.offer", ({ message }) => {
          if (mine(message)) {
            handler({ transport: message.transport, sdp: message.sdp, offerId: message.offer_id, newConnection: message.new_connection });
          }
        }),
      onCandidate: (handler) =>
        this.on("media.ice", ({ message }) => {
          if (mine(message)) handler({ transport: message.transport, candidate: message.candidate });
        }),
    };
  }

  // --- internals ---------------------------------------------------------------------------

  _open() {
    this._setState(this._attempt === 0 && !this.resumeToken ? "connecting" : "reconnecting");
    // The token goes in hello/resume, never in the URL (URLs end up in logs and histories).
    const ws = new WebSocket(new URL(this.url, location.href));
    this.ws = ws;
    this._handshake = new Promise((resolve, reject) => {
      ws.addEventListener("open", () => this._greet(ws).then(resolve, reject));
      ws.addEventListener("close", (event) => {
        reject(new ProtocolError("closed", `socket closed (${event.code} ${event.reason})`));
      });
    });
    ws.addEventListener("message", (event) => this._receive(event.data));
    ws.addEventListener("close", (event) => this._onClose(ws, event));
    // A handshake failure is reported through events; callers of connect() see it too.
    this._handshake.catch(() => {});
    return this._handshake;
  }

  async _greet(ws) {
    if (this.resumeToken) {
      let welcome = null;
      let refused = "resume_invalid";
      try {
        welcome = await this.request("resume", { token: this.token(), resume_token: this.resumeToken });
      } catch (error) {
        if (ws !== this.ws || error.code === "connection_lost" || error.code === "timeout") throw error;
        refused = error.code;
      }
      // welcome.resumed is false when the grace period had passed: we are a new participant.
      if (welcome && welcome.resumed) {
        this._accept(welcome);
        this._emit("resumed", { welcome });
        return welcome;
      }
      this.resumeToken = null;
      if (!welcome) welcome = await this._hello();
      this._accept(welcome);
      this._emit("reset", { welcome, reason: refused });
      return welcome;
    }
    const welcome = await this._hello();
    this._accept(welcome);
    this._emit("open", { welcome });
    return welcome;
  }

  _hello() {
    return this.request("hello", { token: this.token(), client: { name: "expertcall-web-demo", version: "1" } });
  }

  _accept(welcome) {
    this.welcome = { ...this.welcome, ...welcome };
    if (welcome.resume_token) this.resumeToken = welcome.resume_token;
    this._attempt = 0;
    this._setState("open");
    this._startKeepalive();
  }

  _startKeepalive() {
    this._stopTimers();
    // The welcome announces the interval and timeout in seconds.
    const interval = 1000 * Number(this.welcome.ping_interval ?? 20);
    const timeout = 1000 * Number(this.welcome.ping_timeout ?? 10);
    this._timers.ping = setInterval(() => {
      if (!this.ws || this.ws.readyState !== WebSocket.OPEN || this._pingInFlight) return;
      this._pingInFlight = true;
      // Pings go first, and the pong is timed from when the ping actually left.
      this._send({ v: PROTOCOL_VERSION, type: "ping", id: `c${this._nextId++}` }, {
        urgent: true,
        onSent: () => {
          this._timers.pong = setTimeout(() => {
            // No pong in time: the path is dead even if the socket does not know it yet.
            this._timers.pong = null;
            this._pingInFlight = false;
            if (this.ws) this.ws.close(4000, "pong timeout");
          }, timeout);
        },
      });
    }, interval);
  }

  _stopTimers() {
    clearInterval(this._timers.ping);
    clearTimeout(this._timers.pong);
    this._timers.ping = this._timers.pong = null;
    this._pingInFlight = false;
  }

  // The server drops what goes over welcome.max_messages_per_second and closes the socket at
  // twice that, and a browser can gather a burst of ICE candidates on two transports at once:
  // so sending is paced to stay below the limit, in order.
  _send(message, { urgent = false, onSent = null } = {}) {
    const entry = { text: JSON.stringify(message), onSent };
    if (urgent) this._outbox.unshift(entry);
    else this._outbox.push(entry);
    this._pump();
  }

  _pump() {
    const limit = Math.max(1, Math.floor(0.8 * Number(this.welcome?.max_messages_per_second ?? 20)));
    const now = performance.now();
    this._sentAt = this._sentAt.filter((t) => now - t < 1000);
    while (this._outbox.length && this._sentAt.length < limit) {
      if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return;
      const entry = this._outbox.shift();
      this.ws.send(entry.text);
      this._sentAt.push(now);
      entry.onSent?.();
    }
    if (this._outbox.length && !this._timers.pump) {
      const wait = 1000 - (now - this._sentAt[0]) + 5;
      this._timers.pump = setTimeout(() => {
        this._timers.pump = null;
        this._pump();
      }, wait);
    }
  }

  _receive(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      return;
    }
    if (!message || typeof message.type !== "string") return;
    if (message.type === "pong") {
      clearTimeout(this._timers.pong);
      this._timers.pong = null;
      this._pingInFlight = false;
      return;
    }
    if (message.type === "error") {
      const ref = message.ref ?? message.id;
      const pending = ref != null && this._pending.get(ref);
      const error = new ProtocolError(message.code, message.message, message);
      if (pending) {
        this._settle(ref);
        pending.reject(error);
        return;
      }
      if (FATAL_ERROR_CODES.has(message.code)) {
        this._emit("fatal", { code: message.code, message: message.message });
      }
      this._emit("error", { message, error });
      return;
    }
    const id = message.ref ?? message.id;
    const pending = id != null && this._pending.get(id);
    if (pending) {
      this._settle(id);
      pending.resolve(message);
      // A reply that reports state (session.state, presence) is also news for every listener.
      if (message.type === "welcome" || message.type === "ack" || message.type === "media.answer") return;
    }
    this._emit("message", { message });
    this._emit(message.type, { message });
  }

  _settle(id) {
    clearTimeout(this._pending.get(id).timer);
    this._pending.delete(id);
  }

  _failPending(error) {
    for (const [id, pending] of this._pending) {
      clearTimeout(pending.timer);
      pending.reject(error);
      this._pending.delete(id);
    }
  }

  _onClose(ws, event) {
    if (ws !== this.ws) return;
    this._stopTimers();
    // What was not sent belonged to the old connection: its requests fail below and are retried
    // by their callers; candidates are replaced by the ICE restart that follows a resume.
    this._outbox = [];
    clearTimeout(this._timers.pump);
    this._timers.pump = null;
    this._failPending(new ProtocolError("connection_lost", "the connection dropped"));
    if (FATAL_CLOSE_CODES.has(event.code)) {
      this._wanted = false;
      this._setState("closed");
      this._emit("fatal", { code: `close_${event.code}`, message: event.reason || "the server refused the connection" });
      return;
    }
    if (!this._wanted) return;
    this._setState("reconnecting");
    const base = Math.min(this.backoff.max, this.backoff.initial * 2 ** this._attempt);
    const delay = base / 2 + Math.random() * (base / 2);
    this._attempt += 1;
    clearTimeout(this._timers.reconnect);
    this._timers.reconnect = setTimeout(() => {
      if (this._wanted) this._open();
    }, delay);
  }

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this._emit("connection", { state });
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

/** The default /ws URL of the server that served this page. */
export function defaultSocketUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws`;
}
