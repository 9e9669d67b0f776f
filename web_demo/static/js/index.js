// The start page: pick client or expert, get a token, go to that page.
import { Api } from "./api.js";
import { decodeClaims, saveIdentity, slug, loadIdentity } from "./identity.js";
import { $, formatWhen, toast } from "./ui.js";

const form = $("#start-form");
const params = new URLSearchParams(location.search);
if (params.get("role")) {
  const radio = form.querySelector(`input[name="role"][value="${CSS.escape(params.get("role"))}"]`);
  if (radio) radio.checked = true;
}
const previous = loadIdentity();
if (previous) $("#name").value = previous.name || "";
// Sent back here by a page whose sign-in ended: say so rather than start over silently.
const REASONS = {
  expired: "Your sign-in expired. Sign in again to go on.",
  revoked: "You were signed out by the server. Sign in again to go on.",
};
if (REASONS[params.get("reason")]) {
  $("#start-notice").textContent = REASONS[params.get("reason")];
  $("#start-notice").hidden = false;
}

/** A pasted token, checked before it is kept: readable, not expired, accepted by this server. */
async function checkPasted(pasted, name) {
  const claims = decodeClaims(pasted);
  if (!claims || !claims.sub || !claims.role) throw new Error("That does not look like an expertcall token.");
  if (claims.exp && claims.exp * 1000 < Date.now()) {
    throw new Error(`That token expired on ${formatWhen(claims.exp)}. Make a new one with expertcall token --user ${claims.sub} --role ${claims.role}.`);
  }
  try {
    await new Api(pasted).terms();
  } catch (error) {
    if (error.status === 401) throw new Error(`This server does not accept that token (${error.code}): it may have been made for another server.`);
  }
  return { token: pasted, user: claims.sub, role: claims.role, name: claims.name || name || claims.sub };
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const role = form.elements.role.value;
  const name = $("#name").value.trim();
  const pasted = $("#token").value.trim();
  $("#name-error").textContent = "";
  $("#name").removeAttribute("aria-invalid");
  try {
    let identity;
    if (pasted) {
      identity = await checkPasted(pasted, name);
    } else {
      if (!name) {
        $("#name-error").textContent = "Please enter your name.";
        $("#name").setAttribute("aria-invalid", "true");
        $("#name").focus();
        return;
      }
      const user = $("#user-id").value.trim() || slug(name) || `user-${Date.now()}`;
      const data = await Api.devToken(user, role, name);
      identity = { token: data.token, user: data.user, role: data.role, name: data.name };
    }
    saveIdentity(identity);
    location.assign(identity.role === "expert" ? "/expert" : "/client");
  } catch (error) {
    const message = error.status === 404 ? "This server does not hand out demo tokens: paste a token under Advanced." : error.message;
    toast(message, "error");
  }
});
