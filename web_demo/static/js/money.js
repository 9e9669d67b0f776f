// Money is an integer count of minor units plus an ISO 4217 code, never a float.
// The decimal string handed to Intl.NumberFormat is built with integer/string arithmetic only
// (Intl formats decimal strings exactly), so 1999 USD is "19.99" and 500 JPY is "500".

const digitsCache = new Map();

/** Minor-unit digits of a currency (USD 2, JPY 0, KWD 3), as the browser's ICU data knows them. */
export function currencyDigits(currency) {
  const code = String(currency || "").toUpperCase();
  if (!digitsCache.has(code)) {
    const options = new Intl.NumberFormat("en", { style: "currency", currency: code }).resolvedOptions();
    digitsCache.set(code, options.maximumFractionDigits);
  }
  return digitsCache.get(code);
}

/** "19.99" for (1999, "USD"): exact, via BigInt, whatever the size of the amount. */
export function minorToDecimalString(minor, currency) {
  const digits = currencyDigits(currency);
  let value = BigInt(minor);
  const negative = value < 0n;
  if (negative) value = -value;
  let text = value.toString();
  if (digits > 0) {
    text = text.padStart(digits + 1, "0");
    text = `${text.slice(0, -digits)}.${text.slice(-digits)}`;
  }
  return negative ? `-${text}` : text;
}

/** A money amount for display: formatMoney(1999, "USD") → "$19.99" (in the page's locale). */
export function formatMoney(minor, currency, locale = undefined) {
  if (minor === null || minor === undefined || !currency) return "—";
  const code = String(currency).toUpperCase();
  return new Intl.NumberFormat(locale, { style: "currency", currency: code }).format(
    minorToDecimalString(minor, code),
  );
}

/** Parse what a person typed ("12.5", "12,50") into integer minor units, or null if invalid. */
export function parseMoneyInput(text, currency) {
  const digits = currencyDigits(currency);
  const cleaned = String(text).trim().replace(",", ".");
  const pattern = digits > 0 ? new RegExp(`^(\\d{1,9})(?:\\.(\\d{0,${digits}}))?$`) : /^(\d{1,12})$/;
  const match = pattern.exec(cleaned);
  if (!match) return null;
  const fraction = (match[2] || "").padEnd(digits, "0");
  return Number(BigInt(match[1] + fraction));
}

/** A price as users read it: "Free", "$30.00 per session", "$1.50 / min". */
export function formatPrice(pricing) {
  if (!pricing || pricing.model === "free" || pricing.mode === "free") return "Free";
  const model = pricing.model || pricing.mode;
  const amount = formatMoney(pricing.amount ?? pricing.price ?? pricing.rate, pricing.currency);
  return model === "per_session" ? `${amount} per session` : `${amount} / min`;
}
