// The client page: find an expert, ask for help now (and watch the queue), book a slot, hold
// the call, then see the summary and rate the expert.
import { formatMoney, formatPrice, parseMoneyInput } from "./money.js";
import { startPage } from "./page.js";
import { END_REASONS, renderSummary, SessionController } from "./session.js";
import { bookingState, describeBilled, describeRule, humanDuration } from "./terms.js";
import { $, announce, avatar, el, formatWhen, showView, stars, toast } from "./ui.js";

const SEARCH_CURRENCY = "USD";
const REFRESH_MS = 8000;

const page = startPage("client");
if (page) main(page);

function main(page) {
  const { api, signalling } = page;
  let waitingFor = null; // the session we asked for, until it is accepted or ends
  let lastEnded = null;
  let refreshTimer = null;
  // The server's charging rule, stated before every request and booking.
  let terms = null;
  const termsLoaded = api.terms().then((t) => (terms = t), () => null);

  const controller = new SessionController({
    role: "client",
    page,
    container: $("#call"),
    onEnded: (data) => showSummary(data),
  });

  // --- search ------------------------------------------------------------------------------

  const form = $("#search-form");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    search();
  });
  for (const select of form.querySelectorAll("select")) select.addEventListener("change", () => search());

  async function search({ quiet = false } = {}) {
    const data = new FormData(form);
    const filters = { q: data.get("q").trim(), skill: data.get("skill").trim().toLowerCase(), language: data.get("language") };
    const maxPrice = data.get("max_price").trim();
    if (maxPrice) {
      const minor = parseMoneyInput(maxPrice, SEARCH_CURRENCY);
      if (minor === null) {
        $("#search-price").setAttribute("aria-invalid", "true");
        $("#results-status").textContent = "Enter a price such as 2 or 1.50.";
        return;
      }
      $("#search-price").removeAttribute("aria-invalid");
      filters.max_price = minor;
      filters.currency = SEARCH_CURRENCY;
    }
    if (data.get("available")) filters.available = data.get("available");
    if (data.get("min_rating")) filters.min_rating = data.get("min_rating");
    try {
      const experts = await api.experts(filters);
      renderResults(experts);
      showEmptyState(experts.length === 0, filters);
      if (!quiet) $("#results-status").textContent = experts.length ? `${experts.length} expert${experts.length === 1 ? "" : "s"} found.` : "No experts match. Try fewer filters.";
    } catch (error) {
      $("#results-status").textContent = `Could not load experts: ${error.message}`;
    }
  }

  function renderResults(experts) {
    const list = $("#results");
    const focusedId = document.activeElement?.closest?.("[data-expert-id]")?.dataset.expertId;
    list.replaceChildren(
      ...experts.map((expert) => {
        const available = expert.availability === "online";
        const card = el(
          "li",
          { class: "card expert-card", dataset: { expertId: expert.id }, "aria-labelledby": `expert-${expert.id}` },
          el("div", { class: "card-head" }, avatar(expert), el("h3", { id: `expert-${expert.id}` }, expert.name)),
          el(
            "div",
            { class: "meta" },
            el("span", { class: "availability", dataset: { state: expert.availability } }, labelFor(expert.availability)),
            el("span", { class: "price" }, formatPrice(expert.pricing)),
            el("span", {}, stars(expert.ratingAverage, expert.ratingCount)),
          ),
          expert.bio ? el("p", { class: "small" }, expert.bio) : null,
          el("ul", { class: "tags", "aria-label": "Skills" }, expert.skills.map((s) => el("li", {}, s))),
          el(
            "div",
            { class: "actions" },
            el("button", { type: "button", class: "primary", disabled: !available && expert.availability !== "busy", onclick: () => confirmAsk(expert) }, expert.availability === "busy" ? "Join the queue" : "Ask for help now"),
            el("button", { type: "button", class: "secondary", onclick: () => openBooking(expert) }, "Book a slot"),
            el("button", { type: "button", class: "link-button", "aria-label": `Profile of ${expert.name}`, onclick: () => openProfile(expert.id) }, "Profile"),
          ),
        );
        return card;
      }),
    );
    if (focusedId) list.querySelector(`[data-expert-id="${CSS.escape(focusedId)}"] button`)?.focus();
  }

  // With nobody to show, say what to do instead of showing an empty list.
  function showEmptyState(empty, filters) {
    const box = $("#empty-state");
    box.hidden = !empty;
    if (!empty) return;
    const onlyAvailable = $("#search-available").value === "online";
    const narrowed = filters.q || filters.skill || filters.max_price || filters.min_rating || filters.language;
    if (onlyAvailable) {
      $("#empty-title").textContent = "Nobody is available right now";
      $("#empty-text").textContent = "Experts who are away or offline can still be booked for later. Show everyone, pick a free slot, and you are reminded before it starts.";
      $("#empty-action").textContent = "Show every expert";
    } else {
      $("#empty-title").textContent = "No experts match";
      $("#empty-text").textContent = narrowed ? "Try fewer or shorter words — “pyth” finds Python — or clear the filters." : "No expert has a profile here yet. Come back soon.";
      $("#empty-action").textContent = "Clear the filters";
    }
    $("#empty-action").hidden = !onlyAvailable && !narrowed;
  }
  $("#empty-action").addEventListener("click", () => {
    // "Show every expert" widens availability; "Clear the filters" starts over (with everyone).
    if ($("#search-available").value !== "online") form.reset();
    $("#search-available").value = "";
    search();
  });

  // Categories: the skills experts offer, most common first, one click to browse each.
  async function loadCategories() {
    try {
      const everyone = await api.experts({ limit: 100 });
      const counts = new Map();
      for (const expert of everyone) for (const skill of expert.skills) counts.set(skill, (counts.get(skill) || 0) + 1);
      const top = [...counts].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0])).slice(0, 12);
      $("#categories").replaceChildren(
        ...top.map(([skill, n]) =>
          el("li", {}, el("button", { type: "button", class: "chip", onclick: () => browseSkill(skill) }, `${skill} `, el("span", { class: "count", "aria-label": `${n} expert${n === 1 ? "" : "s"}` }, String(n)))),
        ),
      );
      $("#categories").closest("nav").hidden = top.length === 0;
    } catch {
      $("#categories").closest("nav").hidden = true;
    }
  }
  function browseSkill(skill) {
    $("#search-q").value = "";
    $("#search-skill").value = skill;
    $("#search-available").value = "";
    search();
  }

  // --- an expert's profile -----------------------------------------------------------------

  async function openProfile(expertId) {
    let expert;
    try {
      expert = await api.expert(expertId);
    } catch (error) {
      toast(`Could not open the profile: ${error.message}`, "error");
      return;
    }
    await termsLoaded;
    $("#profile-avatar").replaceChildren(avatar(expert, "large"));
    $("#profile-name").textContent = expert.name;
    $("#profile-meta").replaceChildren(
      el("span", { class: "availability", dataset: { state: expert.availability } }, labelFor(expert.availability)),
      " ",
      el("span", {}, stars(expert.ratingAverage, expert.ratingCount)),
    );
    $("#profile-price").textContent = formatPrice(expert.pricing);
    $("#profile-rule").textContent = describeRule(expert.pricing, terms);
    $("#profile-bio").textContent = expert.bio || "";
    $("#profile-skills").replaceChildren(el("ul", { class: "tags" }, expert.skills.map((s) => el("li", {}, s))));
    const languageNames = new Intl.DisplayNames(undefined, { type: "language" });
    $("#profile-languages").textContent = expert.languages.length ? expert.languages.map((l) => languageNames.of(l) || l).join(", ") : "Not given";
    const ask = el("button", { type: "button", class: "primary", disabled: expert.availability !== "online" && expert.availability !== "busy", onclick: () => confirmAsk(expert) }, expert.availability === "busy" ? "Join the queue" : "Ask for help now");
    const book = el("button", { type: "button", class: "secondary", onclick: () => openBooking(expert) }, "Book a slot");
    $("#profile-actions").replaceChildren(ask, book);
    showView("profile");
    stopRefresh();
    history.replaceState(null, "", `#expert=${encodeURIComponent(expert.id)}`);
    loadProfileHours(expert);
    loadReviews(expert);
  }

  // Working hours as free time in the viewer's own time zone, day by day.
  async function loadProfileHours(expert) {
    $("#profile-zone").textContent = `(your time, ${Intl.DateTimeFormat().resolvedOptions().timeZone})`;
    const list = $("#profile-hours");
    try {
      const { free } = await api.freeTime(expert.id);
      const day = new Intl.DateTimeFormat(undefined, { weekday: "short", month: "short", day: "numeric" });
      const time = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
      const byDay = new Map();
      for (const range of free) {
        const start = new Date(range.start);
        const label = day.format(start);
        if (!byDay.has(label)) byDay.set(label, []);
        byDay.get(label).push(`${time.format(start)} – ${time.format(new Date(range.end))}`);
      }
      list.replaceChildren(...(byDay.size ? [...byDay].map(([label, spans]) => el("li", {}, el("strong", {}, label), ` ${spans.join(", ")}`)) : [el("li", { class: "hint" }, "No free time in the next 7 days.")]));
    } catch {
      list.replaceChildren(el("li", { class: "hint" }, expert.hours ? describeHours(expert) : "No working hours set."));
    }
  }

  async function loadReviews(expert) {
    const list = $("#profile-reviews");
    try {
      const { ratings } = await api.ratings(expert.id, 5);
      list.replaceChildren(...(ratings.length
        ? ratings.map((r) => el("li", {}, el("span", { class: "review-stars", "aria-label": `${r.stars} of 5 stars` }, "★".repeat(r.stars) + "☆".repeat(5 - r.stars)), el("span", { class: "grow" }, r.review || "No comment."), el("span", { class: "hint" }, formatWhen(r.created_at))))
        : [el("li", { class: "hint" }, "No reviews yet.")]));
    } catch {
      list.replaceChildren(el("li", { class: "hint" }, "Reviews could not be loaded."));
    }
  }
  $("#profile-back").addEventListener("click", () => {
    history.replaceState(null, "", location.pathname);
    backToBrowse();
  });

  function labelFor(availability) {
    return { online: "Available now", busy: "In a session", away: "Away", offline: "Offline" }[availability] || availability;
  }

  $("#any-expert").addEventListener("click", () => {
    const skill = $("#search-skill").value.trim().toLowerCase();
    if (!skill) {
      $("#search-skill").focus();
      $("#results-status").textContent = "Type a skill first, then ask any available expert who has it.";
      return;
    }
    askFor({ skill, name: `an expert in ${skill}` });
  });

  // --- instant help and the queue ----------------------------------------------------------

  // The price and the rule are confirmed before the expert is asked.
  const confirmDialog = $("#confirm-dialog");
  let confirming = null;
  async function confirmAsk(expert) {
    await termsLoaded;
    confirming = expert;
    $("#confirm-expert").textContent = expert.name;
    $("#confirm-price").textContent = formatPrice(expert.pricing);
    $("#confirm-rule").textContent = describeRule(expert.pricing, terms);
    $("#confirm-ask").textContent = expert.availability === "busy" ? "Join the queue" : `Ask ${expert.name}`;
    confirmDialog.showModal();
  }
  $("#confirm-cancel").addEventListener("click", () => confirmDialog.close());
  $("#confirm-form").addEventListener("submit", (event) => {
    event.preventDefault();
    confirmDialog.close();
    askFor({ expertId: confirming.id, name: confirming.name });
  });

  async function askFor({ expertId, skill, name }) {
    $("#waiting-expert").textContent = name;
    $("#waiting-price").textContent = "";
    $("#queue-position").textContent = "Asking…";
    showView("waiting");
    stopRefresh();
    try {
      const session = await signalling.requestHelp({ expertId, skill });
      waitingFor = session;
      if (session.expert_name) $("#waiting-expert").textContent = session.expert_name;
      onSession(session);
    } catch (error) {
      toast(`Could not ask for help: ${error.message}`, "error");
      backToBrowse();
    }
  }

  signalling.on("queue.position", ({ message }) => {
    if (!waitingFor || message.session_id !== waitingFor.id) return;
    $("#queue-position").dataset.position = message.position;
    // While the expert's phone rings, "Ringing" says more than "1 of 1".
    if (waitingFor.state === "ringing") return;
    const text = message.position === 1 ? `You are next in line (1 of ${message.length}).` : `You are number ${message.position} in line (of ${message.length}).`;
    $("#queue-position").textContent = text;
  });

  signalling.on("session.state", ({ message }) => {
    const session = message.session;
    if (waitingFor && session.id === waitingFor.id) onSession(session);
  });

  function onSession(session) {
    const wasRinging = waitingFor?.state === "ringing";
    waitingFor = session;
    // The quote is fixed when the request is made: the price this call is charged at.
    if (session.quote) {
      const price = session.quote.price;
      $("#waiting-price").textContent = `${formatPrice({ model: price.kind, ...price })}: ${describeRule({ model: price.kind, ...price }, session.quote)}`;
    }
    if (session.state === "requested" && wasRinging) {
      // The expert stepped away mid-ring: the request waits at the head of the queue again.
      $("#queue-position").textContent = "The expert stepped away: you are still first in line.";
    } else if (session.state === "ringing") {
      $("#queue-position").textContent = `Ringing ${session.expert_name || "the expert"}…`;
      $("#queue-position").dataset.position = "1";
    } else if (session.state === "ended") {
      waitingFor = null;
      if (!controller.view) {
        const why = END_REASONS[session.reason] || `Request ended: ${session.reason}`;
        toast(session.message ? `${why} “${session.message}”` : why);
        backToBrowse();
      }
    } else if (session.state !== "requested") {
      waitingFor = null; // accepted: the session controller takes over
    }
  }

  // After a reload (or a resume the server no longer knew), the welcome says whether we still
  // wait in a queue: pick the waiting screen up again.
  for (const type of ["open", "reset"]) {
    signalling.on(type, ({ welcome }) => {
      const session = welcome.session;
      if (!session || (session.state !== "requested" && session.state !== "ringing")) return;
      $("#waiting-expert").textContent = session.expert_name || session.expert_id;
      $("#queue-position").textContent = "Waiting in the queue…";
      showView("waiting");
      stopRefresh();
      onSession(session);
    });
  }

  $("#cancel-request").addEventListener("click", async () => {
    if (!waitingFor) return backToBrowse();
    try {
      await signalling.cancelHelp(waitingFor.id);
    } catch (error) {
      toast(`Could not cancel: ${error.message}`, "error");
    }
  });

  // --- booking -----------------------------------------------------------------------------

  const dialog = $("#book-dialog");
  let bookingExpert = null;
  async function openBooking(expert) {
    await termsLoaded;
    bookingExpert = expert;
    $("#book-price").textContent = `${formatPrice(expert.pricing)}: ${describeRule(expert.pricing, terms)}`;
    $("#book-expert").textContent = expert.name;
    $("#book-error").textContent = "";
    $("#book-hours").textContent = describeHours(expert);
    $("#book-zone").textContent = `Times are in your time zone (${Intl.DateTimeFormat().resolvedOptions().timeZone}).`;
    dialog.showModal();
    await loadSlots();
  }

  // Only the expert's free slots are offered, in the viewer's time zone, grouped by day.
  async function loadSlots() {
    const select = $("#book-slot");
    const submit = $("#book-form button[type=submit]");
    select.replaceChildren(el("option", { value: "" }, "Loading free times…"));
    submit.disabled = true;
    let slots = [];
    try {
      slots = await api.slots(bookingExpert.id, Number($("#book-duration").value));
    } catch (error) {
      $("#book-error").textContent = `Free times could not be loaded: ${error.message}`;
    }
    if (!slots.length) {
      select.replaceChildren(el("option", { value: "" }, "No free time in the next 7 days"));
      if (!$("#book-error").textContent) $("#book-error").textContent = `${bookingExpert.name} has no free time of this length in the next 7 days: try a shorter one, or ask for help now when they are online.`;
      return;
    }
    $("#book-error").textContent = "";
    const day = new Intl.DateTimeFormat(undefined, { weekday: "long", month: "short", day: "numeric" });
    const time = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
    const groups = new Map();
    for (const slot of slots) {
      const start = new Date(slot.start);
      const label = day.format(start);
      if (!groups.has(label)) groups.set(label, el("optgroup", { label }));
      groups.get(label).append(el("option", { value: slot.start, dataset: { end: slot.end } }, `${label}, ${time.format(start)} – ${time.format(new Date(slot.end))}`));
    }
    select.replaceChildren(...groups.values());
    submit.disabled = false;
  }
  $("#book-duration").addEventListener("change", () => loadSlots());
  $("#book-cancel").addEventListener("click", () => dialog.close());
  $("#book-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!$("#book-slot").value) {
      $("#book-error").textContent = "Choose one of the free times.";
      return;
    }
    const start = new Date($("#book-slot").value);
    try {
      await api.book(bookingExpert.id, start, Number($("#book-duration").value));
      dialog.close();
      toast(`Booked ${bookingExpert.name} for ${formatWhen(start.toISOString())}.`);
      loadBookings();
    } catch (error) {
      $("#book-error").textContent = error.message;
      if (error.code === "slot_taken") loadSlots();
    }
  });

  async function loadBookings() {
    const list = $("#my-bookings");
    try {
      const bookings = await api.bookings();
      list.replaceChildren(...(bookings.length ? bookings.map(bookingItem) : [el("li", { class: "hint" }, "None yet.")]));
    } catch {
      list.replaceChildren(el("li", { class: "hint" }, "Bookings are not available on this server."));
    }
  }

  // The expert may cancel; both get reminders before the start (docs/protocol.md).
  signalling.on("booking.update", ({ message }) => {
    if (message.event === "cancelled" && message.by !== page.identity.user) {
      toast(`${message.booking.expert_name} cancelled your session of ${formatWhen(message.booking.start)}.`);
    }
    loadBookings();
  });
  signalling.on("booking.reminder", ({ message }) => {
    const text = `Reminder: your session with ${message.booking.expert_name} starts ${formatWhen(message.booking.start)}.`;
    announce(text, { assertive: true });
    toast(text);
  });

  function bookingItem(booking) {
    const cancel = el("button", { type: "button", class: "secondary small" }, "Cancel");
    cancel.addEventListener("click", async () => {
      try {
        await api.cancelBooking(booking.id);
        loadBookings();
      } catch (error) {
        toast(error.message, "error");
      }
    });
    cancel.setAttribute("aria-label", `Cancel the session with ${booking.expert_name} on ${formatWhen(booking.start)}`);
    if (booking.state !== "booked") cancel.hidden = true;
    return el("li", { dataset: { bookingId: booking.id, state: booking.state } }, el("span", { class: "grow" }, `${booking.expert_name} — ${formatWhen(booking.start)}`), el("span", { class: "hint" }, bookingState(booking, page.identity.user)), cancel);
  }
  // A booked session that opens is no longer "booked": the list follows it.
  signalling.on("session.state", ({ message }) => {
    if (message.session.booking_id) loadBookings();
  });

  // --- past sessions -----------------------------------------------------------------------

  async function loadHistory() {
    const list = $("#history");
    try {
      const sessions = await api.history({ side: "client", limit: 20 });
      list.replaceChildren(...(sessions.length ? sessions.map(historyItem) : [el("li", { class: "hint" }, "No sessions yet.")]));
    } catch {
      list.replaceChildren(el("li", { class: "hint" }, "Your past sessions could not be loaded."));
    }
  }

  function historyItem(s) {
    const billed = describeBilled({ kind: s.price.kind, units: s.units, unitSeconds: s.unit_seconds, amount: s.price.amount, currency: s.currency });
    return el(
      "li",
      { dataset: { sessionId: s.session_id } },
      el("span", { class: "grow" }, el("strong", {}, s.expert_name), ` · ${formatWhen(s.started_at)}`, el("br"),
        el("span", { class: "hint" }, s.open ? "In progress" : `${humanDuration(s.live_seconds)} connected · billed: ${billed}${s.refunded ? " · refunded" : ""}`)),
      el("span", { class: "amount" }, formatMoney(s.refunded ? 0 : s.total, s.currency)),
      el("a", { href: `/receipt?session=${encodeURIComponent(s.session_id)}`, "aria-label": `Receipt for the session with ${s.expert_name} on ${formatWhen(s.started_at)}` }, "Receipt"),
    );
  }

  // --- summary and rating ------------------------------------------------------------------

  function showSummary(data) {
    const again = lastEnded?.session.id === data.session.id;
    lastEnded = data;
    renderSummary($("#summary"), data, "client");
    if (again) return; // billing's final figures: keep what the user already typed
    // A call that never connected is not one to rate.
    $("#rating-form").hidden = !data.wentLive;
    $("#summary-back").hidden = data.wentLive;
    $("#rating-expert").textContent = data.peerName;
    $("#rating-form").reset();
    delete $("#rating-stars").dataset.value;
    $("#rating-error").textContent = "";
    showView("summary");
  }

  $("#rating-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const chosen = $("#rating-form").elements.stars.value;
    if (!chosen) {
      $("#rating-error").textContent = "Choose from 1 to 5 stars.";
      $("#star-1").focus();
      return;
    }
    try {
      await api.rate(lastEnded.session.id, Number(chosen), $("#review").value.trim());
      toast("Thank you for your rating.");
      backToBrowse();
    } catch (error) {
      $("#rating-error").textContent = `Could not send the rating: ${error.message}`;
    }
  });
  $("#summary-done").addEventListener("click", () => backToBrowse());
  $("#summary-back").addEventListener("click", () => backToBrowse());
  $("#rating-stars").addEventListener("change", (event) => {
    $("#rating-stars").dataset.value = event.target.value;
  });

  // --- page life ---------------------------------------------------------------------------

  function backToBrowse() {
    waitingFor = null;
    showView("browse");
    search({ quiet: true });
    loadBookings();
    loadHistory();
    startRefresh();
  }

  function startRefresh() {
    stopRefresh();
    refreshTimer = setInterval(() => {
      if (!$("[data-view=browse]").hidden) search({ quiet: true });
    }, REFRESH_MS);
  }

  function stopRefresh() {
    clearInterval(refreshTimer);
  }

  // A failed first attempt keeps retrying with backoff; the status badge shows it.
  signalling.connect().catch(() => {});
  backToBrowse();
  loadCategories();
  // A link to a profile (#expert=<id>) opens it.
  const linked = new URLSearchParams(location.hash.slice(1)).get("expert");
  if (linked) openProfile(linked);
  page.hooks.search = () => search();
  page.hooks.formatMoney = formatMoney;
  announce("Find an expert.");
}

function describeHours(expert) {
  const weekly = expert.hours?.weekly;
  if (!weekly) return "Pick a time within the expert's working hours.";
  const days = Object.entries(weekly).map(([day, spans]) => `${day} ${spans.map((s) => s.join("–")).join(", ")}`);
  return `Working hours (${expert.timezone}): ${days.join("; ")}`;
}
