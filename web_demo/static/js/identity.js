// Who is using this tab: a bearer token plus the claims the pages show. Kept in sessionStorage so
// that two tabs (an expert and a client) can be signed in as different people at once.

const KEY = "expertcall.identity";

export function loadIdentity() {
  try {
    const identity = JSON.parse(sessionStorage.getItem(KEY) || "null");
    if (!identity || !identity.token) return null;
    const claims = decodeClaims(identity.token);
    if (claims && claims.exp && claims.exp * 1000 < Date.now()) return null;
    return identity;
  } catch {
    return null;
  }
}

export function saveIdentity(identity) {
  sessionStorage.setItem(KEY, JSON.stringify(identity));
}

export function clearIdentity() {
  sessionStorage.removeItem(KEY);
}

/** The JWT's claims (unverified: for display only, the server checks the signature). */
export function decodeClaims(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(payload.padEnd(payload.length + ((4 - (payload.length % 4)) % 4), "=")));
  } catch {
    return null;
  }
}

/** A page for `role` needs a signed-in identity with that role; otherwise back to the start page. */
export function requireIdentity(role) {
  const identity = loadIdentity();
  if (!identity || identity.role !== role) {
    // A sign-in that ran out while the tab was closed: the start page says why it is back.
    const expired = !identity && sessionStorage.getItem(KEY) !== null;
    location.replace(`/?role=${encodeURIComponent(role)}${expired ? "&reason=expired" : ""}`);
    return null;
  }
  return identity;
}

export function slug(text) {
  return String(text)
    .normalize("NFKD")
    .replace(/[\u0300-\u036f]/g, "")
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, "-")
    .replace(/^-+|-+$/g, "")
    .slice(0, 64);
}
