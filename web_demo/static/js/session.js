// One session as the pages see it: follows session.state from the server, runs the media
// (call.js) once the session is accepted, shows the in-call screen (incall.js), restarts ICE after
// a socket resume, and hands the summary to the page when the session ends.
import { Call } from "./call.js";
import { InCallView } from "./incall.js";
import { formatMoney } from "./money.js";
import { RecordingPanel } from "./recording.js";
import { describeBilled, describeRule, humanDuration } from "./terms.js";
import { announce, el, formatDuration, showView } from "./ui.js";

const MEDIA_STATES = new Set(["accepted", "connecting", "live", "paused"]);

export const END_REASONS = {
  hangup: "The call was ended.",
  declined: "The expert declined.",
  ring_timeout: "The expert did not answer in time.",
  cancelled: "The request was cancelled.",
  budget_reached: "The budget cap was reached.",
  paused_timeout: "The call was paused for too long.",
  no_show: "The media never connected on both sides.",
  disconnected: "The connection was lost for too long.",
  expert_unavailable: "The expert went offline.",
  error: "The media server failed.",
};

/** The running cost from a server message or billing's REST reply, as {amount, currency, seconds}.
 * Billing sends money as {amount, currency}; an ended session's totals as integers + currency. */
export function costFromMessage(message) {
  const total = message.total ?? message.cost ?? message.running_total;
  if (total == null) return null;
  const money = typeof total === "object" ? total : { amount: total, currency: message.currency };
  if (money.amount == null || !money.currency) return null;
  return {
    amount: money.amount,
    currency: money.currency,
    seconds: message.live_seconds ?? null,
    units: message.units ?? null,
    payout: message.payout != null ? { amount: message.payout, currency: money.currency } : null,
    // undefined: this message does not say; null: no cap.
    budget: "budget_cap" in message ? message.budget_cap : undefined,
  };
}

const COST_POLL_MS = 2000;

export class SessionController {
  /**
   * @param {object} options
   * @param {"client"|"expert"} options.role
   * @param {object} options.page   what startPage() returned
   * @param {HTMLElement} options.container  the call view's section
   * @param {(summary) => void} options.onEnded  called once when the session ends, and again
   *   when the final amounts arrive from billing
   */
  constructor({ role, page, container, onEnded }) {
    this.role = role;
    this.page = page;
    this.container = container;
    this.onEnded = onEnded;
    this.session = null;
    this.call = null;
    this.view = null;
    this.recording = null;
    this.cost = null;
    this.firstLiveAt = null;
    this.endedAt = null;
    this._costTimer = null;
    this._pushedCostAt = 0;
    this.summary = null;
    this.problem = null; // why this side could not take part ({title, text}), for the summary
    const s = page.signalling;
    s.on("session.state", ({ message }) => {
      this.update(message.session);
      // The SFU process hosting the call restarted and its connections are gone
      // (docs/protocol.md, media_restarted): publish again as after a resume.
      if (this.call && message.session.reason === "media_restarted" && message.session.id === this.session?.id) {
        this.call.restartIce().catch((error) => announce(`Could not restore media: ${error.message}`));
      }
    });
    s.on("resumed", ({ welcome }) => this._afterResume(welcome));
    s.on("reset", ({ welcome }) => this._afterResume(welcome));
    s.on("open", ({ welcome }) => {
      // A reload during a call: pick the session up again.
      if (welcome.session && MEDIA_STATES.has(welcome.session.state)) this.update(welcome.session);
    });
    // The running cost is pushed (billing.cost); REST polling covers a server that does not.
    const mine = (message) => this.session && message.session_id === this.session.id;
    s.on("billing.cost", ({ message }) => {
      if (!mine(message)) return;
      this._pushedCostAt = Date.now();
      this._onCost(message);
    });
    s.on("billing.warning", ({ message }) => {
      if (mine(message) && this.role === "client") this.view?.budgetWarning(message.ends_at - Date.now() / 1000);
    });
    s.on("recording.state", ({ message }) => {
      if (mine(message)) this.recording?.update(message.recording);
    });
    s.on("billing.summary", ({ message }) => {
      if (!mine(message)) return;
      this.summary = message;
      if (this.session.state === "ended") this.onEnded(this._summaryData(this.session, true));
    });
  }

  get active() {
    return Boolean(this.session && MEDIA_STATES.has(this.session.state));
  }

  peerName(session = this.session) {
    return this.role === "client" ? session.expert_name || session.expert_id : session.client_name || session.client_id;
  }

  /** Apply a session from session.state (or welcome). Ignores other sessions while in a call. */
  update(session) {
    if (!session) return;
    if (this.session && this.session.id !== session.id && this.active) return;
    this.session = session;
    if (MEDIA_STATES.has(session.state)) {
      if (!this.view) this._enter().catch((error) => this._mediaFailed(error));
      this.view?.setState(session.state, this._why(session));
      this.recording?.update(session.recording);
      if (session.state === "live" && !this.firstLiveAt) this.firstLiveAt = Date.now();
    } else if (session.state === "ended" && this.view) {
      this.endedAt = Date.now();
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
    if (!this.call || !this.call.sendChat(text)) throw new Error("the chat is not connected yet");
  }

  // --- internals ---------------------------------------------------------------------------

  _why(session) {
    return { reason: session.reason || "", me: this.page.identity.user, peerName: this.peerName(session), deadline: session.deadline };
  }

  async _enter() {
    const session = this.session;
    this.cost = null;
    this.summary = null;
    this.problem = null;
    this._pushedCostAt = 0;
    this.firstLiveAt = null;
    showView("call");
    this.view = new InCallView(this.container, {
      role: this.role,
      peerName: this.peerName(session),
      onHangUp: () => this.hangUp(),
      onChat: (text) => this.sendChat(text),
      // The server enforces the cap (billing.budget): the session ends with budget_reached.
      onBudget: this.role === "client" ? (minor) => this._setBudget(minor) : undefined,
    });
    this.view.setState(session.state, this._why(session));
    const me = this.role === "client" ? session.client_id : session.expert_id;
    this.recording = new RecordingPanel(this.container, {
      me,
      nameOf: (id) => (id === session.expert_id ? session.expert_name : id === session.client_id ? session.client_name : null) || id,
      send: (type, body) => this.page.signalling.request(type, { ...body, session_id: session.id }),
    });
    this.recording.update(session.recording);
    this._costTimer = setInterval(() => this._pollCost(), COST_POLL_MS);
    const welcome = this.page.signalling.welcome || {};
    const view = this.view;
    const iceServers = welcome.ice_servers?.length ? welcome.ice_servers : await this.page.api.iceServers();
    if (this.view !== view) return; // the session ended meanwhile: no call to start
    this.call = new Call({ media: this.page.signalling.mediaChannel(session.id), iceServers });
    this.page.hooks.call = this.call;
    this.view.attach(this.call);
    this.call.addEventListener("error", (e) => announce(`Media problem: ${e.detail.error.message}`));
    this.call.addEventListener("chat", (e) => this._onChat(e.detail));
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

  async _setBudget(minor) {
    // The answer is a billing.cost with the new budget_cap, which also reaches _onCost.
    await this.page.signalling.request("billing.budget", { session_id: this.session.id, budget: minor });
  }

  async _pollCost() {
    // A server that pushes billing.cost (at accepted and at every unit) needs no polling.
    if (!this.session || this._pushedCostAt) return;
    try {
      this._onCost(await this.page.api.sessionCost(this.session.id));
    } catch {
      // Not metered (yet): the session has not gone live, or billing is not running.
    }
  }

  _onCost(message) {
    const cost = costFromMessage(message);
    if (!cost) return;
    this.cost = cost;
    this.view?.setCost(cost);
  }

  _onChat({ from, text }) {
    // The SFU names the sender by participant id: the other side's user id in a 1:1 session.
    const session = this.session;
    const name = from === session.expert_id ? session.expert_name : from === session.client_id ? session.client_name : null;
    this.view?.addChat({ from: name || this.peerName(), text, mine: false });
  }

  _mediaFailed(error) {
    // The session ended while its media was starting (the other side left first): the media
    // closing under it is no failure of this side's.
    if (!this.view || this.session?.state === "ended") return;
    this.problem = mediaProblem(error);
    announce(`${this.problem.title} ${this.problem.text}`, { assertive: true });
    this.hangUp();
  }

  _finish(session) {
    clearInterval(this._costTimer);
    this.call?.close();
    this.view?.destroy();
    this.call = null;
    this.view = null;
    this.recording = null;
    this.page.hooks.call = null;
    announce(END_REASONS[session.reason] || `The session ended (${session.reason}).`, { assertive: true });
    this.onEnded(this._summaryData(session));
    this._fetchTotals(session);
  }

  /** Billing's final figures: billing.summary over the socket, or REST when none arrives. */
  async _fetchTotals(session, attempt = 0) {
    await new Promise((resolve) => setTimeout(resolve, 1000 * (attempt + 1)));
    if (this.summary || this.session?.id !== session.id) return;
    try {
      const totals = await this.page.api.sessionCost(session.id);
      if (totals.open) throw new Error("still open");
      this.cost = costFromMessage(totals) || this.cost;
      if (!this.summary) this.onEnded(this._summaryData(session, true));
    } catch (error) {
      if (error.status === 404 && attempt > 2) return; // never metered: nothing was charged
      if (attempt < 6) this._fetchTotals(session, attempt + 1);
    }
  }

  _summaryData(session, final = false) {
    const summary = this.summary;
    const money = (m) => (m && typeof m === "object" ? m : null);
    const charged = money(summary?.charged) || money(summary?.gross) || this.cost;
    return {
      session,
      peerName: this.peerName(session),
      reason: session.reason,
      // From the first live moment to the end, as the in-call clock showed it.
      seconds: this.firstLiveAt ? Math.round((this.endedAt - this.firstLiveAt) / 1000) : 0,
      // What billing metered (both sides' media flowing) and the whole units it charged.
      liveSeconds: summary?.live_seconds ?? this.cost?.seconds ?? null,
      units: summary?.units ?? this.cost?.units ?? null,
      quote: session.quote || null,
      wentLive: Boolean(this.firstLiveAt),
      problem: this.problem,
      endedByPeer: Boolean(session.ended_by) && session.ended_by !== this.page.identity.user,
      charged,
      final,
      expertShare: money(summary?.payout) || this.cost?.payout || null,
    };
  }
}

/** Fill a summary card: who, how long the call lasted, how much of it was billed and why, why it
 * ended, and the amount charged (or earned). */
export function renderSummary(root, data, role) {
  const amountLabel = role === "expert" ? "Charged to the client" : "Amount charged";
  const rows = [
    ["With", data.peerName],
    ["Call length", formatDuration(data.seconds || 0)],
  ];
  if (data.liveSeconds != null) rows.push(["Both connected", humanDuration(data.liveSeconds)]);
  const price = data.quote?.price;
  if (price && data.units != null) {
    const billed = describeBilled({ kind: price.kind, units: data.units, unitSeconds: data.quote.unit_seconds, amount: price.amount, currency: price.currency });
    rows.push(["Billed", billed]);
  }
  rows.push(["Ended", END_REASONS[data.reason] || data.reason]);
  const amount = data.charged ? formatMoney(data.charged.amount, data.charged.currency) : "Nothing";
  root.dataset.final = String(Boolean(data.final));
  root.dataset.wentLive = String(Boolean(data.wentLive));
  const notes = [];
  if (data.problem) {
    notes.push(el("div", { class: "problem", role: "alert", "data-testid": "problem" }, el("h3", {}, data.problem.title), el("p", {}, data.problem.text)));
  }
  if (!data.wentLive) {
    const why = data.endedByPeer && !data.problem ? `${data.peerName} left before the call connected. ` : "";
    notes.push(el("p", { class: "never-live", "data-testid": "never-live" }, `${why}The call never connected, so nothing was charged.`));
  }
  const list = el("dl", {});
  for (const [term, value] of rows) list.append(el("dt", {}, term), el("dd", {}, value));
  list.append(el("dt", {}, amountLabel), el("dd", { class: "amount", "data-testid": "amount-charged" }, amount));
  if (role === "expert" && data.expertShare) {
    list.append(el("dt", {}, "Your share"), el("dd", {}, formatMoney(data.expertShare.amount, data.expertShare.currency)));
  }
  const children = [...notes, list];
  // Why the billed time differs from the call's length: the rule this call was quoted.
  if (price) children.push(el("p", { class: "hint", "data-testid": "billing-rule" }, `${role === "expert" ? "Charged by the rule the client accepted" : "Charged by the rule you accepted"}: ${describeRule({ model: price.kind, ...price }, data.quote)}`));
  root.replaceChildren(...children);
}

/** Why getUserMedia failed, in words a person can act on. */
export function mediaProblem(error) {
  const name = error?.name || "";
  if (name === "NotAllowedError" || name === "SecurityError") {
    return {
      title: "Your camera or microphone is blocked.",
      text: "Allow them for this site: click the camera icon at the right of the address bar (on a phone: the lock icon, then Permissions), choose Allow, then try again.",
    };
  }
  if (name === "NotFoundError" || name === "OverconstrainedError") {
    return { title: "No camera or microphone was found.", text: "Connect one (or check that it is switched on), then try again." };
  }
  if (name === "NotReadableError" || name === "AbortError") {
    return { title: "Your camera or microphone is busy.", text: "Another app or tab is using it: close that, then try again." };
  }
  return { title: "The call could not start.", text: `${error?.message || "The media failed"}.` };
}
