// What the client page and the expert console share: sign-in check, the REST client, the
// signalling connection with its status badge, and the hooks the browser tests drive.
import { Api } from "./api.js";
import { clearIdentity, requireIdentity } from "./identity.js";
import { defaultSocketUrl, SignallingClient } from "./signalling.js";
import { $, announce, showBlocking, toast } from "./ui.js";

const AUTH_CODES = new Set(["auth_required", "token_invalid", "token_expired", "token_revoked"]);

const CONNECTION_TEXT = {
  connecting: "Connecting…",
  open: "Connected",
  reconnecting: "Reconnecting…",
  closed: "Offline",
};

export function startPage(role) {
  const identity = requireIdentity(role);
  if (!identity) return null;
  $("#who").textContent = `${identity.name} · ${role}`;
  $("#sign-out").addEventListener("click", () => {
    signalling.close();
    clearIdentity();
    location.assign("/");
  });
  const api = new Api(() => identity.token);
  const signalling = new SignallingClient({ url: defaultSocketUrl(), token: () => identity.token });
  const badge = $("#connection");
  signalling.on("connection", ({ state }) => {
    badge.dataset.state = state;
    badge.textContent = CONNECTION_TEXT[state] || state;
    if (state === "reconnecting") announce("Connection lost, reconnecting…");
  });
  signalling.on("resumed", () => announce("Reconnected."));
  // Auth errors come with (or before) a close 4001: one explanation, not a toast per message.
  signalling.on("fatal", ({ code }) => {
    if (code === "close_4010") {
      showBlocking({
        title: "expertcall is open somewhere else",
        text: "You signed in again in another tab or on another device, so this tab stopped. Your requests and calls carry on there.",
        actionLabel: "Use this tab instead",
        onAction: () => location.reload(),
      });
      return;
    }
    const revoked = code === "token_revoked";
    showBlocking({
      title: revoked ? "You were signed out" : "Your sign-in has expired",
      text: revoked
        ? "This sign-in was withdrawn by the server. Sign in again to go on."
        : "For your safety sign-ins last a limited time. Sign in again to go on; nothing you booked or paid for is lost.",
      actionLabel: "Sign in again",
      onAction: () => {
        clearIdentity();
        location.assign(`/?role=${role}&reason=${revoked ? "revoked" : "expired"}`);
      },
    });
  });
  signalling.on("error", ({ message }) => {
    if (!AUTH_CODES.has(message.code)) toast(message.message || message.code, "error");
  });

  // Hooks for the browser tests (and for poking at the demo from the console).
  const hooks = {
    identity,
    signalling,
    call: null,
    dropSocket: () => signalling.simulateDrop(),
    inboundVideo: async () => (hooks.call ? hooks.call.inboundVideo() : { framesDecoded: 0, bytesReceived: 0 }),
  };
  window.expertcall = hooks;
  return { identity, api, signalling, hooks };
}
