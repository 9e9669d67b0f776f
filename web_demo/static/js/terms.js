// How a price is charged, in words a client reads before asking or booking, and what a finished
// session billed: the server's rule (GET /api/billing/terms, or a session's quote) made plain.
import { formatMoney } from "./money.js";

/** "1 minute", "45 seconds", "2 min 5 s". */
export function humanDuration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
  if (s < 60) return plural(s, "second");
  if (s % 60 === 0) return plural(s / 60, "minute");
  return `${Math.floor(s / 60)} min ${s % 60} s`;
}

/** "minute" for 60 s units, else "2-second unit": what a per-minute price is charged by. */
export function unitName(unitSeconds) {
  if (unitSeconds === 60) return "minute";
  if (unitSeconds % 60 === 0) return `${unitSeconds / 60}-minute unit`;
  return `${unitSeconds}-second unit`;
}

/**
 * The rule as a sentence: pricing is {model, amount, currency}; terms {unit_seconds,
 * grace_seconds, per_session_minimum_seconds} from the server.
 */
export function describeRule(pricing, terms) {
  const model = pricing?.model || pricing?.mode || pricing?.kind || "free";
  if (model === "free" || !pricing.amount) return "Free: nothing is charged.";
  const amount = formatMoney(pricing.amount, pricing.currency);
  if (model === "per_session") {
    const minimum = terms?.per_session_minimum_seconds ?? 60;
    return `${amount} for the session, charged once you have both been connected for ${humanDuration(minimum)}; a shorter call is free.`;
  }
  const unit = unitName(terms?.unit_seconds ?? 60);
  const grace = terms?.grace_seconds ? ` The first ${humanDuration(terms.grace_seconds)} are free.` : "";
  return `${amount} per started ${unit}, charged only while you are both connected.${grace}`;
}

/** What a finished session billed, from its units and quote: "3 started minutes × $1.50". */
export function describeBilled({ kind, units, unitSeconds, amount, currency }) {
  if (!units) return "Nothing billed";
  if (kind === "per_session") return "One session";
  const unit = unitName(unitSeconds);
  const price = amount != null ? ` × ${formatMoney(amount, currency)}` : "";
  return `${units} started ${unit}${units === 1 ? "" : "s"}${price}`;
}

/** A booking's state in words, from the viewer's side. */
export function bookingState(booking, me) {
  if (booking.state === "booked") return "Booked";
  if (booking.state === "open") return `Opened ${formatWhenShort(booking.opened_at || booking.start)} — the session started`;
  if (booking.state === "missed") return "Missed: the server was down at its time";
  if (booking.state === "cancelled") {
    const by = booking.cancelled_by === me ? "you" : booking.cancelled_by === booking.expert_id ? booking.expert_name : booking.client_name;
    return `Cancelled by ${by}`;
  }
  return booking.state;
}

function formatWhenShort(iso) {
  return new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" }).format(new Date(iso));
}
