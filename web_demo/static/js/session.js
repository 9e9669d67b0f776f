// One session as the pages see it: follows session.state from the server, runs the media
// (call.js) once the session is accepted, shows the in-call screen (incall.js), restarts ICE after
// a socket resume, and hands the summary to the page when the session ends.
import { Call } from "./call.js";
import { InCallView } from "./incall.js";
import { formatMoney } from "./money.js";
import { announce, el, formatDuration, showView } from "./ui.js";

const MEDIA_STATES = new Set(["accepted", "connecting", "live", "paused"]);

export const END_REASONS = {
  hangup: "The call was ended.",
  declined: "The expert declined.",
  ring_timeout: "The expert did not answer in time.",
  cancelled: "The request was cancelled.",
  budget_reached: "The budget cap was reached.",
  no_show: "The media never connected on both sides.",
  disconnected: "The connection was lost for too long.",
  expert_unavailable: "The expert went offline.",
  error: "The media server failed.",
};

/** The running cost from a server message, whatever its exact shape, as {amount, currency, seconds}. */
export function costFromMessage(message) {
  const total = message.total ?? message.cost ?? message.running_total ?? message;
  if (total == null || total.amount == null) return null;
  return {
    amount: total.amount,
    currency: total.currency ?? message.currency,
    seconds: message.live_seconds ?? message.seconds ?? null,
    budget: message.budget_cap ?? null,
  };
}

export class SessionController {
  /**
   * @param {object} options
   * @param {"client"|"expert"} options.role
   * @param {object} options.page   what startPage() returned
   * @param {HTMLElement} options.container  the call view's section
   * @param {(summary) => void} options.onEnded
   */
  constructor({ role, page, container, onEnded }) {
    this.role = role;
    this.page = page;
    this.container = container;
    this.onEnded = onEnded;
    this.session = null;
    this.call = null;
    this.view = null;
    this.cost = null;
    this.summary = null;
    this.liveSince = null;
    this.liveSeconds = 0;
    const s = page.signalling;
    s.on("session.state", ({ message }) => this.update(message.session));
    s.on("resumed", ({ welcome }) => this._afterResume(welcome));
    s.on("reset", ({ welcome }) => this._afterResume(welcome));
    s.on("open", ({ welcome }) => {
      // A reload during a call: pick the session up again.
      if (welcome.session && MEDIA_STATES.has(welcome.session.state)) this.update(welcome.session);
    });
    for (const type of ["billing.cost", "billing.unit", "session.cost"]) {
      s.on(type, ({ message }) => this._onCost(message));
    }
    for (const type of ["billing.summary", "session.summary"]) {
      s.on(type, ({ message }) => this._onSummary(message));
    }
    for (const type of ["chat", "chat.message"]) {
      s.on(type, ({ message }) => this._onChat(message));
    }
  }

  get active() {
    return Boolean(this.session && MEDIA_STATES.has(this.session.state));
  }

  peerName(session = this.session) {
    return this.role === "client" ? session.expert_name || session.expert_id : session.client_name || session.client_id;
  }

  /** Apply a session from session.state (or welcome). Ignores sessions we are not in. */
  update(session) {
    if (!session) return;
    if (this.session && this.session.id !== session.id && this.active) return;
    const previous = this.session && this.session.id === session.id ? this.session.state : null;
    this.session = session;
    if (MEDIA_STATES.has(session.state)) {
      if (!this.call) this._enter().catch((error) => this._mediaFailed(error));
      this.view?.setState(session.state);
      this._trackLive(session.state, previous);
    } else if (session.state === "ended" && this.view) {
      this._trackLive("ended", previous);
      this._finish(session);
    }
  }

  async hangUp() {
    if (!this.session) return;
    try {
      await this.page.signalling.endSession(this.session.id);
    } catch (error) {
      announce(`Could not hang up: ${error.message}`, { assertive: true });
    }
  }

  async sendChat(text) {
    if (!this.session) throw new Error("not in a session");
    await this.page.signalling.request("chat.send", { session_id: this.session.id, text });
  }

  // --- internals ---------------------------------------------------------------------------

  async _enter() {
    const session = this.session;
    showView("call");
    this.view = new InCallView(this.container, {
      role: this.role,
      peerName: this.peerName(session),
      onHangUp: () => this.hangUp(),
      onChat: (text) => this.sendChat(text),
      onBudget: this.role === "client" ? (minor) => this._setBudget(minor) : undefined,
    });
    this.view.setState(session.state);
    if (this.cost) this.view.setCost(this.cost);
    const welcome = this.page.signalling.welcome || {};
    const iceServers = welcome.ice_servers?.length ? welcome.ice_servers : await this.page.api.iceServers();
    this.call = new Call({ media: this.page.signalling.mediaChannel(session.id), iceServers });
    this.page.hooks.call = this.call;
    this.view.attach(this.call);
    this.call.addEventListener("error", (e) => announce(`Media problem: ${e.detail.error.message}`));
    await this.call.start();
    announce(`Connected to ${this.peerName(session)}.`, { assertive: true });
  }

  _afterResume(welcome) {
    if (!this.call) {
      if (welcome.session && MEDIA_STATES.has(welcome.session.state)) this.update(welcome.session);
      return;
    }
    if (welcome.session && welcome.session.id === this.session.id) this.update(welcome.session);
    // The socket may have dropped because the network changed: find a new media path too.
    this.call.restartIce().catch((error) => announce(`Could not restore media: ${error.message}`));
  }

  _setBudget(minor) {
    if (!this.session) return;
    this.page.signalling.notify("billing.budget", { session_id: this.session.id, budget_cap: minor });
  }

  _onCost(message) {
    if (!this.session || (message.session_id && message.session_id !== this.session.id)) return;
    const cost = costFromMessage(message);
    if (!cost) return;
    this.cost = cost;
    this.view?.setCost(cost);
  }

  _onSummary(message) {
    if (this.session && message.session_id && message.session_id !== this.session.id) return;
    this.summary = message;
    if (this.session?.state === "ended") this.onEnded(this._summaryData(this.session));
  }

  _onChat(message) {
    if (!this.session || (message.session_id && message.session_id !== this.session.id)) return;
    if (message.from === this.page.identity.user) return;
    this.view?.addChat({ from: message.from_name || message.from || this.peerName(), text: message.text, mine: false });
  }

  _trackLive(state, previous) {
    if (state === "live" && !this.liveSince) this.liveSince = Date.now();
    if (state !== "live" && this.liveSince) {
      this.liveSeconds += (Date.now() - this.liveSince) / 1000;
      this.liveSince = null;
    }
  }

  _mediaFailed(error) {
    announce(`Could not start the call: ${error.message}`, { assertive: true });
    this.hangUp();
  }

  _finish(session) {
    this.call?.close();
    this.view?.destroy();
    this.call = null;
    this.view = null;
    this.page.hooks.call = null;
    announce(END_REASONS[session.reason] || `The session ended (${session.reason}).`, { assertive: true });
    this.onEnded(this._summaryData(session));
  }

  _summaryData(session) {
    const summary = this.summary && (!this.summary.session_id || this.summary.session_id === session.id) ? this.summary : null;
    const charged = summary ? costFromMessage(summary) : this.cost;
    return {
      session,
      peerName: this.peerName(session),
      reason: session.reason,
      seconds: summary?.live_seconds ?? Math.round(this.liveSeconds),
      charged,
      expertShare: summary?.expert_amount ?? summary?.payout ?? null,
    };
  }
}

/** Fill a summary card: who, how long, why it ended, and the amount charged (or earned). */
export function renderSummary(root, data, role) {
  const amountLabel = role === "expert" ? "Charged to the client" : "Amount charged";
  const rows = [
    ["With", data.peerName],
    ["Length", formatDuration(data.seconds || 0)],
    ["Ended", END_REASONS[data.reason] || data.reason],
  ];
  const amount = data.charged ? formatMoney(data.charged.amount, data.charged.currency) : "Nothing";
  const list = el("dl", {});
  for (const [term, value] of rows) list.append(el("dt", {}, term), el("dd", {}, value));
  list.append(el("dt", {}, amountLabel), el("dd", { class: "amount", "data-testid": "amount-charged" }, amount));
  if (role === "expert" && data.expertShare) {
    list.append(el("dt", {}, "Your share"), el("dd", {}, formatMoney(data.expertShare.amount, data.expertShare.currency)));
  }
  root.replaceChildren(list);
}
