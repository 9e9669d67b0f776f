// One session's receipt (GET /api/billing/receipts/{id}), laid out to print: who, when, the rule
// the call was charged by, how long it lasted, how much of it was billed, and the amount.
import { Api } from "./api.js";
import { loadIdentity } from "./identity.js";
import { formatMoney, formatPrice } from "./money.js";
import { END_REASONS } from "./session.js";
import { describeBilled, describeRule, humanDuration } from "./terms.js";
import { $, el, formatDuration, formatWhen } from "./ui.js";

const identity = loadIdentity();
if (!identity) location.replace("/");
else show(identity);

async function show(identity) {
  $("#who").textContent = `${identity.name} · ${identity.role}`;
  $("#back").href = identity.role === "expert" ? "/expert" : "/client";
  $("#print").addEventListener("click", () => window.print());
  const sessionId = new URLSearchParams(location.search).get("session") || "";
  const status = $("#receipt-status");
  if (!sessionId) {
    status.textContent = "No session was named: open a receipt from your list of past sessions.";
    return;
  }
  let r;
  try {
    r = await new Api(identity.token).receipt(sessionId);
  } catch (error) {
    status.textContent = error.status === 404 ? "There is no receipt for this session on your account." : `The receipt could not be loaded: ${error.message}`;
    return;
  }
  const pricing = { model: r.price.kind, amount: r.price.amount, currency: r.currency };
  const billed = describeBilled({ kind: r.price.kind, units: r.units, unitSeconds: r.unit_seconds, amount: r.price.amount, currency: r.currency });
  const rows = [
    ["Session", r.session_id],
    ["Date", formatWhen(r.started_at)],
    ["Expert", r.expert_name],
    ["Client", r.client_name],
    ["Price", formatPrice(pricing)],
    ["Call length", formatDuration(r.call_seconds)],
    ["Both connected", humanDuration(r.live_seconds)],
    ["Billed", billed],
    ["Ended", r.open ? "In progress" : END_REASONS[r.end_reason] || r.end_reason || ""],
  ];
  const list = el("dl", {});
  for (const [term, value] of rows) list.append(el("dt", {}, term), el("dd", {}, value));
  list.append(el("dt", {}, r.refunded ? "Total (refunded)" : "Total"), el("dd", { class: "amount", "data-testid": "receipt-total" }, formatMoney(r.refunded ? 0 : r.total, r.currency)));
  if (r.payout != null) {
    list.append(el("dt", {}, "Platform fee"), el("dd", {}, formatMoney(r.fee, r.currency)));
    list.append(el("dt", {}, "Expert's share"), el("dd", {}, formatMoney(r.payout, r.currency)));
  }
  $("#receipt").replaceChildren(
    el("h2", {}, `expertcall — ${r.open ? "session in progress" : "paid session"}`),
    list,
    el("p", { class: "hint" }, `Charged by the rule accepted before the call: ${describeRule(pricing, r)}`),
  );
  $("#receipt").hidden = false;
  status.textContent = "";
  document.title = `Receipt ${formatWhen(r.started_at)} — expertcall`;
  $("#receipt-heading").focus();
}
