// What the client page and the expert console share: sign-in check, the REST client, the
// signalling connection with its status badge, and the hooks the browser tests drive.
import { Api } from "./api.js";
import { clearIdentity, requireIdentity } from "./identity.js";
import { defaultSocketUrl, SignallingClient } from "./signalling.js";
import { $, announce, toast } from "./ui.js";

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
  signalling.on("fatal", ({ code, message }) => {
    toast(`Disconnected: ${message} (${code})`, "error");
    if (code === "token_expired" || code === "close_4001") {
      clearIdentity();
      setTimeout(() => location.assign(`/?role=${role}`), 2500);
    }
  });
  signalling.on("error", ({ message }) => toast(message.message || message.code, "error"));

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
