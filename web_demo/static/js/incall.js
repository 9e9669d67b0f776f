// The in-call screen shared by the client page and the expert console: videos, controls, device
// pickers, chat, running cost (and, for clients, a budget cap), connection quality, hang up.
import { listDevices } from "./call.js";
import { formatMoney, parseMoneyInput } from "./money.js";
import { $, announce, el, formatDuration } from "./ui.js";

const QUALITY_TEXT = {
  unknown: "Connecting…",
  good: "Good connection",
  fair: "Fair connection",
  poor: "Poor connection",
  "no-media": "No video arriving",
};

const BUDGET_ERRORS = {
  budget_too_low: "That does not cover one charge of the expert's price.",
  budget_below_spent: "That is less than the call has cost already.",
};

const STATE_TEXT = {
  requested: "Calling…",
  ringing: "Ringing…",
  accepted: "Connecting…",
  connecting: "Connecting…",
  live: "Live",
  paused: "Paused",
  ended: "Ended",
};

const TEMPLATE = `
  <p class="call-alert" data-ref="alert" data-testid="call-alert" role="alert" hidden></p>
  <div class="call-stage">
    <div class="video-remote-wrap">
      <video class="video-remote" data-testid="remote-video" autoplay playsinline aria-label="Video of the other person"></video>
      <video class="video-screen" data-testid="remote-screen" data-ref="screen" autoplay playsinline muted hidden></video>
      <p class="video-placeholder" data-ref="placeholder">Waiting for video…</p>
      <div class="call-badges">
        <span class="badge" data-ref="state" role="status">Connecting…</span>
        <span class="quality" data-ref="quality" data-level="unknown" role="img" aria-label="Connection quality: unknown">
          <span></span><span></span><span></span>
        </span>
        <span class="badge badge-muted" data-ref="elapsed" aria-label="Call length">0:00</span>
        <span class="badge" data-ref="screen-badge" data-testid="screen-badge" role="status" hidden></span>
      </div>
    </div>
    <video class="video-local" data-testid="local-video" autoplay playsinline muted aria-label="Your camera"></video>
  </div>
  <div class="call-controls" role="toolbar" aria-label="Call controls">
    <button type="button" class="control" data-ref="mute" aria-pressed="false">Mute</button>
    <button type="button" class="control" data-ref="camera" aria-pressed="false">Stop camera</button>
    <button type="button" class="control" data-ref="share" aria-pressed="false">Share screen</button>
    <button type="button" class="control" data-ref="devices-toggle" aria-expanded="false" aria-controls="devices-panel">Devices</button>
    <button type="button" class="control danger" data-ref="hangup">Hang up</button>
  </div>
  <div class="call-meter card" data-ref="meter">
    <div><span class="meter-label" data-ref="cost-label">Cost so far</span>
      <strong class="meter-value" data-testid="running-cost" data-ref="cost" aria-live="polite">—</strong></div>
    <form class="budget" data-ref="budget-form" hidden>
      <label for="budget-input">Budget cap</label>
      <input id="budget-input" data-ref="budget" inputmode="decimal" placeholder="none" size="6" aria-describedby="budget-hint">
      <button type="submit" class="secondary small">Set</button>
      <small id="budget-hint" class="hint" data-ref="budget-hint" aria-live="polite">The call ends when the cost reaches it.</small>
    </form>
  </div>
  <div class="devices card" id="devices-panel" data-ref="devices" hidden>
    <div class="field"><label for="mic-select">Microphone</label><select id="mic-select" data-ref="mic"></select></div>
    <div class="field"><label for="cam-select">Camera</label><select id="cam-select" data-ref="cam"></select></div>
  </div>
  <section class="chat card" aria-labelledby="chat-heading">
    <h3 id="chat-heading">Chat</h3>
    <div role="log" aria-live="polite" aria-label="Chat messages"><ol class="chat-log" data-ref="chat-log"></ol></div>
    <form class="chat-form" data-ref="chat-form">
      <label for="chat-input" class="visually-hidden">Message</label>
      <input id="chat-input" data-ref="chat-input" autocomplete="off" maxlength="2000" placeholder="Type a message">
      <button type="submit" class="primary small">Send</button>
    </form>
  </section>`;

export class InCallView {
  /**
   * @param {HTMLElement} root  an empty container
   * @param {object} options
   * @param {"client"|"expert"} options.role
   * @param {string} options.peerName
   * @param {() => void} options.onHangUp
   * @param {(text: string) => Promise<void>} options.onChat
   * @param {(minor: number) => Promise<void>} [options.onBudget]  clients only: ask the server
   *   (billing.budget), which enforces the cap; rejects with the server's coded error
   */
  constructor(root, { role, peerName, onHangUp, onChat, onBudget }) {
    this.root = root;
    this.peerName = peerName;
    this.role = role;
    this.options = { onHangUp, onChat, onBudget };
    this.call = null;
    this.startedAt = null;
    this.currency = null;
    this.budget = null;
    this.lastCost = null;
    root.replaceChildren();
    root.append(el("h2", { class: "call-title" }, `In a session with ${peerName}`));
    const body = el("div", { class: "call-layout" });
    body.innerHTML = TEMPLATE;
    root.append(body);
    this.ref = Object.fromEntries([...root.querySelectorAll("[data-ref]")].map((n) => [n.dataset.ref, n]));
    this.remoteVideo = $(".video-remote", root);
    this.localVideo = $(".video-local", root);
    this.ref["cost-label"].textContent = role === "expert" ? "Billed so far" : "Cost so far";
    this.ref["budget-form"].hidden = role !== "client" || !onBudget;
    this._bind();
    this._tick = setInterval(() => this._updateElapsed(), 1000);
  }

  /** Wire a Call (call.js) to the view. */
  attach(call) {
    this.call = call;
    call.addEventListener("localstream", (e) => {
      this.localVideo.srcObject = e.detail.stream;
      this._fillDevices();
    });
    call.addEventListener("remotestream", (e) => {
      if (this.remoteVideo.srcObject !== e.detail.stream) this.remoteVideo.srcObject = e.detail.stream;
      this.remoteVideo.play().catch(() => {});
      this.ref.placeholder.hidden = true;
    });
    call.addEventListener("quality", (e) => this.setQuality(e.detail));
    // Their shared screen takes the stage; their camera moves to a corner while it lasts.
    call.addEventListener("remotescreen", (e) => this._showScreen(e.detail));
    call.addEventListener("localscreen", (e) => {
      const badge = this.ref["screen-badge"];
      badge.hidden = !e.detail.track;
      badge.textContent = e.detail.track ? "You are sharing your screen" : "";
      announce(e.detail.track ? "You are sharing your screen." : "You stopped sharing your screen.");
    });
    call.addEventListener("controls", () => this._syncControls());
  }

  /**
   * @param {string} state  the session's state
   * @param {object} [why]  {reason, me, peerName, deadline}: who stopped sending media when paused
   */
  setState(state, why = {}) {
    const text = STATE_TEXT[state] || state;
    this.ref.state.textContent = text;
    this.ref.state.dataset.state = state;
    if (state === "live" && !this.startedAt) this.startedAt = Date.now();
    const alert = this.ref.alert;
    if (state === "paused") {
      alert.textContent = pausedText(why);
      alert.hidden = false;
    } else if (!alert.hidden && state === "live") {
      alert.hidden = true;
      announce(`${why.peerName || "The other person"} is connected again: billing resumed.`, { assertive: true });
    }
  }

  setQuality({ level, rtt, loss }) {
    const node = this.ref.quality;
    node.dataset.level = level;
    const details = [];
    if (rtt != null) details.push(`${Math.round(rtt * 1000)} ms round trip`);
    if (loss != null) details.push(`${(loss * 100).toFixed(1)}% loss`);
    const label = `Connection quality: ${QUALITY_TEXT[level] || level}${details.length ? ` (${details.join(", ")})` : ""}`;
    node.setAttribute("aria-label", label);
    node.title = label;
  }

  /** Running cost from the server: integer minor units + currency, and the budget cap (if any). */
  setCost({ amount, currency, budget }) {
    this.currency = currency || this.currency;
    this.lastCost = amount;
    this.ref.cost.textContent = formatMoney(amount, this.currency);
    if (budget !== undefined) this.budget = budget?.amount ?? null;
    this._describeBudget();
  }

  /** billing.warning: the unit just charged is the last the budget pays for. */
  budgetWarning(endsInSeconds) {
    const text = `Your budget is used up: the call ends in about ${Math.max(0, Math.round(endsInSeconds))} s unless you raise it.`;
    this.ref["budget-hint"].textContent = text;
    announce(text, { assertive: true });
  }

  addChat({ from, text, mine }) {
    const item = el("li", { class: mine ? "chat-mine" : "chat-theirs" }, el("span", { class: "chat-from" }, mine ? "You" : from), el("span", { class: "chat-text" }, text));
    this.ref["chat-log"].append(item);
    item.scrollIntoView({ block: "nearest" });
  }

  destroy() {
    clearInterval(this._tick);
    this.remoteVideo.srcObject = null;
    this.localVideo.srcObject = null;
    this.ref.screen.srcObject = null;
    this.root.replaceChildren();
  }

  // --- internals ---------------------------------------------------------------------------

  _bind() {
    this.ref.mute.addEventListener("click", () => this.call?.setAudioMuted(!this.call.audioMuted));
    this.ref.camera.addEventListener("click", () => this.call?.setVideoOff(!this.call.videoOff));
    this.ref.share.addEventListener("click", async () => {
      try {
        if (this.call?.sharingScreen) await this.call.stopScreen();
        else await this.call?.shareScreen();
      } catch (error) {
        // Cancelled in the browser's picker, or not allowed: nothing is shared.
        const text = error.name === "NotAllowedError" ? "Screen sharing was cancelled or is not allowed." : `Could not share the screen: ${error.message}`;
        announce(text, { assertive: true });
        this.ref.alert.textContent = text;
        this.ref.alert.hidden = false;
      }
    });
    this.ref.hangup.addEventListener("click", () => this.options.onHangUp());
    this.ref["devices-toggle"].addEventListener("click", () => {
      const open = this.ref.devices.hidden;
      this.ref.devices.hidden = !open;
      this.ref["devices-toggle"].setAttribute("aria-expanded", String(open));
      if (open) this._fillDevices();
    });
    this.ref.mic.addEventListener("change", () => this.call?.useDevice("audio", this.ref.mic.value));
    this.ref.cam.addEventListener("change", () => this.call?.useDevice("video", this.ref.cam.value));
    this.ref["chat-form"].addEventListener("submit", async (event) => {
      event.preventDefault();
      const input = this.ref["chat-input"];
      const text = input.value.trim();
      if (!text) return;
      input.value = "";
      try {
        await this.options.onChat(text);
        this.addChat({ from: "You", text, mine: true });
      } catch (error) {
        input.value = text;
        announce(`Message not sent: ${error.message}`, { assertive: true });
      }
    });
    this.ref["budget-form"].addEventListener("submit", async (event) => {
      event.preventDefault();
      const minor = parseMoneyInput(this.ref.budget.value, this.currency || "USD");
      if (minor === null) {
        this.ref.budget.setAttribute("aria-invalid", "true");
        this.ref["budget-hint"].textContent = "Enter an amount such as 5 or 12.50.";
        return;
      }
      this.ref.budget.removeAttribute("aria-invalid");
      try {
        await this.options.onBudget?.(minor);
      } catch (error) {
        this.ref.budget.setAttribute("aria-invalid", "true");
        this.ref["budget-hint"].textContent = BUDGET_ERRORS[error.code] || error.message;
      }
    });
  }

  _syncControls() {
    const { audioMuted, videoOff } = this.call;
    this.ref.mute.setAttribute("aria-pressed", String(audioMuted));
    this.ref.mute.textContent = audioMuted ? "Unmute" : "Mute";
    this.ref.camera.setAttribute("aria-pressed", String(videoOff));
    this.ref.camera.textContent = videoOff ? "Start camera" : "Stop camera";
    const sharing = this.call.sharingScreen;
    this.ref.share.setAttribute("aria-pressed", String(sharing));
    this.ref.share.textContent = sharing ? "Stop sharing" : "Share screen";
  }

  async _fillDevices() {
    const { audio, video } = await listDevices();
    const current = (kind) => this.call?.localStream?.getTracks().find((t) => t.kind === kind)?.getSettings().deviceId;
    for (const [select, devices, kind] of [[this.ref.mic, audio, "audio"], [this.ref.cam, video, "video"]]) {
      const selected = current(kind);
      select.replaceChildren(...devices.map((d, i) => el("option", { value: d.deviceId, selected: d.deviceId === selected }, d.label || `${kind === "audio" ? "Microphone" : "Camera"} ${i + 1}`)));
    }
  }

  _showScreen({ stream, on }) {
    const wrap = this.root.querySelector(".video-remote-wrap");
    if (!wrap) return; // the call ended: its tracks end after the view has gone
    const video = this.ref.screen;
    if (video.srcObject !== stream) video.srcObject = stream;
    const wasOn = !video.hidden;
    video.hidden = !on;
    video.setAttribute("aria-label", `${this.peerName}'s shared screen`);
    wrap.classList.toggle("screen-on", on);
    const badge = this.ref["screen-badge"];
    if (on) {
      video.play().catch(() => {});
      badge.hidden = false;
      badge.textContent = `${this.peerName} is sharing their screen`;
    } else if (wasOn) {
      badge.hidden = true;
    }
    if (on !== wasOn) announce(on ? `${this.peerName} is sharing their screen.` : `${this.peerName} stopped sharing their screen.`);
  }

  _updateElapsed() {
    if (!this.startedAt) return;
    this.ref.elapsed.textContent = formatDuration((Date.now() - this.startedAt) / 1000);
  }

  _describeBudget() {
    const hint = this.ref["budget-hint"];
    if (this.budget === null) {
      hint.textContent = "The call ends when the cost reaches it.";
    } else if (this.lastCost !== null && this.lastCost * 10 >= this.budget * 8) {
      // Integer comparison of minor units: never floats for money.
      hint.textContent = `Nearly at your cap of ${formatMoney(this.budget, this.currency)}.`;
    } else {
      hint.textContent = `The call ends at ${formatMoney(this.budget, this.currency)}.`;
    }
  }

}

/** Why a live call paused, in words: who dropped, that billing is paused, and for how long. */
export function pausedText({ reason = "", me, peerName = "The other person", deadline }) {
  const left = deadline ? Math.max(0, Math.round(deadline - Date.now() / 1000)) : 0;
  const until = left ? ` The call ends by itself if it is not back within ${left >= 120 ? `${Math.round(left / 60)} minutes` : `${left} seconds`}.` : "";
  if (reason === "media_restarted") return `The server restarted — billing is paused until your video flows again.${until}`;
  const who = reason.startsWith("media_stopped:") ? reason.slice("media_stopped:".length) : "";
  if (who && who === me) return `Your connection dropped — billing is paused while it comes back.${until}`;
  return `${peerName}'s connection dropped — billing is paused.${until}`;
}
