// The start page: pick client or expert, get a token, go to that page.
import { Api } from "./api.js";
import { decodeClaims, saveIdentity, slug, loadIdentity } from "./identity.js";
import { $, toast } from "./ui.js";

const form = $("#start-form");
const params = new URLSearchParams(location.search);
if (params.get("role")) {
  const radio = form.querySelector(`input[name="role"][value="${CSS.escape(params.get("role"))}"]`);
  if (radio) radio.checked = true;
}
const previous = loadIdentity();
if (previous) $("#name").value = previous.name || "";

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
      const claims = decodeClaims(pasted);
      if (!claims || !claims.sub || !claims.role) throw new Error("That does not look like an expertcall token.");
      identity = { token: pasted, user: claims.sub, role: claims.role, name: claims.name || name || claims.sub };
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
