// Recording with both participants' consent (docs/protocol.md, "Recording over the socket"):
// a "Record" button that asks, the other side's prompt to allow or decline, and a red REC
// indicator on both sides while the server records. The server's recording.state (and the
// session's `recording` in welcome / session.state) is the only truth this shows.
import { announce, el } from "./ui.js";

const REASONS = {
  declined: "declined to be recorded",
  stopped: "stopped the recording",
  session_ended: "The recording ended with the session.",
  recording_failed: "The recording failed on the server and was stopped.",
};

const REFUSALS = {
  recording_refused: "This session cannot be recorded.",
  recording_disabled: "This server does not record sessions.",
};

export class RecordingPanel {
  /**
   * @param {HTMLElement} root  the in-call screen (its .call-badges get the indicator)
   * @param {object} options
   * @param {string} options.me  this user's id
   * @param {(id: string) => string} options.nameOf  a participant's display name
   * @param {(type: string) => Promise<object>} options.send  a recording.* request for this session
   */
  constructor(root, { me, nameOf, send }) {
    this.me = me;
    this.nameOf = nameOf;
    this.send = send;
    this.state = { state: "off", consented: [], reason: "", by: "" };
    this.indicator = el("span", {
      class: "badge badge-rec", role: "status", "data-testid": "recording-indicator", hidden: true,
    }, "● REC");
    root.querySelector(".call-badges")?.append(this.indicator);
    this.button = el("button", { type: "button", class: "control", "data-testid": "record-button" }, "Record");
    this.button.addEventListener("click", () => this._toggle());
    root.querySelector(".call-controls")?.prepend(this.button);
    this.prompt = el("div", { class: "card recording-prompt", role: "alertdialog", "aria-label": "Recording request",
                              "aria-live": "assertive",
                              "data-testid": "recording-consent", hidden: true });
    root.querySelector(".call-layout")?.prepend(this.prompt);
  }

  /** The session's recording object from the server (absent: nobody asked, it is off). */
  update(recording) {
    const previous = this.state;
    this.state = recording || { state: "off", consented: [], reason: "", by: "" };
    const { state, requested_by: by } = this.state;
    const on = state === "on";
    this.indicator.hidden = !on;
    this.indicator.setAttribute("aria-label", on ? "This call is being recorded" : "");
    const asked = state === "requested" && by !== this.me;
    this.button.textContent = on ? "Stop recording" : state === "requested" && by === this.me ? "Cancel request" : "Record";
    this.button.hidden = asked;
    this._showPrompt(asked ? by : null);
    if (previous.state !== state) this._announce(previous.state);
  }

  _showPrompt(asker) {
    this.prompt.hidden = !asker;
    if (!asker) return this.prompt.replaceChildren();
    const allow = el("button", { type: "button", class: "primary small" }, "Allow recording");
    const decline = el("button", { type: "button", class: "secondary small" }, "Decline");
    allow.addEventListener("click", () => this._request("recording.consent", { accept: true }));
    decline.addEventListener("click", () => this._request("recording.consent", { accept: false }));
    this.prompt.replaceChildren(
      el("p", {}, `${this.nameOf(asker)} asks to record this call. It starts only if you allow it, and either of you can stop it.`),
      allow, decline,
    );
  }

  _announce(before) {
    const { state, reason, by } = this.state;
    if (state === "on") announce("Recording started: both of you agreed.", { assertive: true });
    else if (state === "requested") {
      if (this.state.requested_by !== this.me) announce(`${this.nameOf(this.state.requested_by)} asks to record this call.`, { assertive: true });
    } else if (before !== "off") {
      const text = REASONS[reason] || reason;
      announce(by && by !== this.me ? `${this.nameOf(by)} ${text}.` : text.charAt(0).toUpperCase() + text.slice(1), { assertive: true });
    }
  }

  _toggle() {
    this._request(this.state.state === "off" ? "recording.request" : "recording.stop");
  }

  async _request(type, body = {}) {
    try {
      this.update((await this.send(type, body)).recording);
    } catch (error) {
      announce(REFUSALS[error.code] || `Recording: ${error.message}`, { assertive: true });
    }
  }
}
