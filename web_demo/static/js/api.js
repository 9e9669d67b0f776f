// REST calls to this server. Every response is JSON; errors are {"error": {"code", "message"}}.
// Normalisers at the bottom turn the server's shapes into what the pages render, so that a
// renamed field is fixed in one place.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message || code);
    this.status = status;
    this.code = code;
  }
}

export class Api {
  constructor(token) {
    this.token = token;
  }

  async call(method, path, body = undefined) {
    const headers = { Accept: "application/json" };
    const token = typeof this.token === "function" ? this.token() : this.token;
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
    if (!response.ok) {
      const error = (data && data.error) || {};
      throw new ApiError(response.status, error.code || `http_${response.status}`, error.message || response.statusText);
    }
    return data;
  }

  static async devToken(user, role, name) {
    const response = await fetch("/api/dev/token", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ user, role, name }),
    });
    const data = await response.json().catch(() => ({}));
    if (!response.ok) {
      const error = data.error || {};
      throw new ApiError(response.status, error.code || `http_${response.status}`, error.message || "could not get a token");
    }
    return data;
  }

  async experts(filters = {}) {
    const query = new URLSearchParams();
    for (const [key, value] of Object.entries(filters)) {
      if (value !== "" && value !== null && value !== undefined) query.set(key, value);
    }
    const data = await this.call("GET", `/api/experts${query.size ? `?${query}` : ""}`);
    const list = Array.isArray(data) ? data : data.experts || data.items || [];
    return list.map(normaliseExpert);
  }

  async expert(id) {
    const data = await this.call("GET", `/api/experts/${encodeURIComponent(id)}`);
    return normaliseExpert(data.expert || data);
  }

  async saveExpert(id, profile) {
    const data = await this.call("PUT", `/api/experts/${encodeURIComponent(id)}`, profile);
    return normaliseExpert((data && (data.expert || data)) || profile);
  }

  async bookings() {
    const data = await this.call("GET", "/api/bookings");
    return Array.isArray(data) ? data : data.bookings || data.items || [];
  }

  /** start: a Date; the server takes RFC 3339 instants and answers in UTC. */
  async book(expertId, start, durationMinutes, topic) {
    const end = new Date(start.getTime() + durationMinutes * 60_000);
    const body = { expert_id: expertId, start: start.toISOString(), end: end.toISOString() };
    if (topic) body.topic = topic;
    return this.call("POST", "/api/bookings", body);
  }

  /** The expert's free slots of durationMinutes over the next 7 days: [{start, end}] in UTC. */
  async slots(expertId, durationMinutes) {
    return (await this.freeTime(expertId, durationMinutes)).slots;
  }

  /** {free: [{start, end}], slots: [...], time_zone}: the expert's free time, next 7 days. */
  async freeTime(expertId, durationMinutes = 30) {
    return this.call("GET", `/api/experts/${encodeURIComponent(expertId)}/slots?duration=${durationMinutes * 60}`);
  }

  /** The latest reviews: {rating: {average, count}, ratings: [{stars, review, created_at}]}. */
  async ratings(expertId, limit = 5) {
    return this.call("GET", `/api/experts/${encodeURIComponent(expertId)}/ratings?limit=${limit}`);
  }

  /** Upload the expert's photo (a File or Blob): the server validates and remakes it. */
  async uploadPhoto(expertId, file) {
    const token = typeof this.token === "function" ? this.token() : this.token;
    const response = await fetch(`/api/experts/${encodeURIComponent(expertId)}/photo`, {
      method: "PUT",
      headers: { Authorization: `Bearer ${token}`, "Content-Type": file.type || "application/octet-stream" },
      body: file,
    });
    const data = await response.json().catch(() => ({}));
    if (!response.ok) throw new ApiError(response.status, data.error?.code || `http_${response.status}`, data.error?.message || response.statusText);
    return data.photo;
  }

  async deletePhoto(expertId) {
    return this.call("DELETE", `/api/experts/${encodeURIComponent(expertId)}/photo`);
  }

  async cancelBooking(id) {
    return this.call("DELETE", `/api/bookings/${encodeURIComponent(id)}`);
  }

  async rate(sessionId, stars, review) {
    return this.call("POST", `/api/sessions/${encodeURIComponent(sessionId)}/rating`, review ? { stars, review } : { stars });
  }

  /** The expert's statement: {lines: [{session_id, currency, gross, fee, payout}], totals: {CUR: {...}}}. */
  async statement({ from, to } = {}) {
    const query = new URLSearchParams();
    if (from) query.set("from", from.toISOString());
    if (to) query.set("to", to.toISOString());
    return this.call("GET", `/api/billing/statement${query.size ? `?${query}` : ""}`);
  }

  /** The rule new sessions are charged by: {unit_seconds, grace_seconds, per_session_minimum_seconds}. */
  async terms() {
    return this.call("GET", "/api/billing/terms");
  }

  /** My metered sessions, newest first, as receipts; side "client" or "expert", from/to Dates. */
  async history({ side, from, to, limit } = {}) {
    const query = new URLSearchParams();
    if (side) query.set("as", side);
    if (from) query.set("from", from.toISOString());
    if (to) query.set("to", to.toISOString());
    if (limit) query.set("limit", String(limit));
    const data = await this.call("GET", `/api/billing/history${query.size ? `?${query}` : ""}`);
    return data.sessions;
  }

  async receipt(sessionId) {
    return this.call("GET", `/api/billing/receipts/${encodeURIComponent(sessionId)}`);
  }

  /** A session's running cost while open, its totals once ended (billing). */
  async sessionCost(sessionId) {
    return this.call("GET", `/api/billing/sessions/${encodeURIComponent(sessionId)}`);
  }

  async iceServers() {
    try {
      const data = await this.call("GET", "/api/ice-servers");
      return Array.isArray(data) ? data : data.iceServers || data.ice_servers || [];
    } catch {
      // No TURN configured (or the endpoint is absent): host candidates only, which is what a
      // loopback or LAN demo needs. Never a public STUN server.
      return [];
    }
  }
}

/** The page's view of an expert, whatever exact shape the REST API returns. */
export function normaliseExpert(raw) {
  const pricing = raw.pricing || raw.price || {};
  const rating = raw.rating || {};
  return {
    id: raw.id ?? raw.expert_id ?? raw.user_id,
    name: raw.display_name ?? raw.name ?? raw.id,
    skills: raw.skills ?? raw.tags ?? [],
    languages: raw.languages ?? [],
    bio: raw.bio ?? raw.headline ?? "",
    pricing: {
      model: pricing.model ?? pricing.mode ?? pricing.kind ?? "free",
      amount: pricing.amount ?? pricing.amount_minor ?? pricing.price ?? pricing.rate ?? 0,
      currency: pricing.currency ?? raw.currency ?? "USD",
    },
    availability: raw.availability ?? raw.status ?? "offline",
    ratingAverage: rating.average ?? raw.rating_average ?? raw.average_rating ?? null,
    ratingCount: rating.count ?? raw.rating_count ?? raw.ratings ?? 0,
    hours: raw.working_hours ?? raw.hours ?? null,
    timezone: raw.working_hours?.time_zone ?? raw.time_zone ?? "UTC",
    queueLength: raw.queue_length ?? null,
    photo: raw.photo ?? null,
    raw,
  };
}
