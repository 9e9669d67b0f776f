// The expert console: availability, profile / price / hours, incoming requests, the waiting
// queue, scheduled sessions, earnings, and the call itself.
import { formatMoney, minorToDecimalString, parseMoneyInput } from "./money.js";
import { startPage } from "./page.js";
import { renderSummary, SessionController } from "./session.js";
import { bookingState } from "./terms.js";
import { $, announce, avatar, el, formatWhen, showView, toast } from "./ui.js";

const DAYS = [["mon", "Mon"], ["tue", "Tue"], ["wed", "Wed"], ["thu", "Thu"], ["fri", "Fri"], ["sat", "Sat"], ["sun", "Sun"]];
const STATUS_TEXT = {
  online: "You are online: clients can ask you for help.",
  busy: "You are in a session: new requests wait in your queue.",
  away: "You are away: clients see you but cannot call right now.",
  offline: "You are offline: clients cannot ask you for help.",
};

const page = startPage("expert");
if (page) main(page);

function main(page) {
  const { api, signalling, identity } = page;
  const ringing = new Map(); // session id -> {session, expiresAt, item}

  const controller = new SessionController({
    role: "expert",
    page,
    container: $("#call"),
    onEnded: (data) => {
      renderSummary($("#summary"), data, "expert");
      showView("summary");
      if (data.final) loadEarnings();
    },
  });
  $("#summary-done").addEventListener("click", () => {
    showView("console");
    loadScheduled();
    loadEarnings();
  });

  // --- availability ------------------------------------------------------------------------

  for (const radio of document.querySelectorAll('input[name="availability"]')) {
    radio.addEventListener("change", async () => {
      try {
        await signalling.setPresence(radio.value);
      } catch (error) {
        toast(`Could not change your status: ${error.message}`, "error");
      }
    });
  }
  // Clients can neither find nor call an expert without a profile: say so instead of "online".
  let hasProfile = null; // unknown until loadProfile answers
  let presence = "offline";
  function showPresence(status) {
    presence = status;
    const radio = document.querySelector(`input[name="availability"][value="${status}"]`);
    if (radio) radio.checked = true;
    const unlisted = hasProfile === false && status !== "offline";
    $("#availability-status").textContent = unlisted
      ? `You are ${status}, but clients cannot find or call you until you save your profile below.`
      : STATUS_TEXT[status] || status;
    $("#availability-status").classList.toggle("warning", unlisted);
    $("#availability").dataset.status = status;
  }
  signalling.on("presence", ({ message }) => {
    if (message.user_id === identity.user) showPresence(message.status);
  });
  signalling.on("open", ({ welcome }) => showPresence(welcome.presence || "offline"));
  signalling.on("reset", ({ welcome }) => showPresence(welcome.presence || "offline"));
  signalling.on("resumed", ({ welcome }) => showPresence(welcome.presence || "offline"));

  // --- incoming requests -------------------------------------------------------------------

  signalling.on("ring", ({ message }) => {
    const session = message.session;
    if (ringing.has(session.id)) return;
    const name = session.client_name || session.client_id;
    const countdown = el("span", { class: "hint" });
    const accept = el("button", { type: "button", class: "primary" }, "Accept");
    const decline = el("button", { type: "button", class: "secondary" }, "Decline");
    const item = el(
      "li",
      { class: "ringing", dataset: { sessionId: session.id } },
      el("span", { class: "grow" }, el("strong", {}, name), session.skill ? ` · ${session.skill}` : "", session.note ? el("span", { class: "hint" }, session.note) : null),
      countdown,
      accept,
      decline,
    );
    accept.setAttribute("aria-label", `Accept ${name}`);
    decline.setAttribute("aria-label", `Decline ${name}`);
    accept.addEventListener("click", async () => {
      accept.disabled = decline.disabled = true;
      try {
        await signalling.acceptHelp(session.id);
      } catch (error) {
        toast(`Could not accept: ${error.message}`, "error");
      }
      removeRing(session.id);
    });
    decline.addEventListener("click", async () => {
      accept.disabled = decline.disabled = true;
      try {
        await signalling.declineHelp(session.id);
      } catch (error) {
        toast(`Could not decline: ${error.message}`, "error");
      }
      removeRing(session.id);
    });
    const expiresAt = message.expires_at * 1000;
    const tick = setInterval(() => {
      const left = Math.max(0, Math.round((expiresAt - Date.now()) / 1000));
      countdown.textContent = `${left} s`;
      if (left <= 0) removeRing(session.id);
    }, 500);
    ringing.set(session.id, { item, tick });
    renderIncoming();
    // Keyboard users land on Accept, unless they are busy typing somewhere else.
    const active = document.activeElement;
    if (!active || active === document.body || active.closest("#incoming") || active.tagName === "H2") accept.focus();
    announce(`${name} is asking for help. Accept or decline.`, { assertive: true });
    if ($("[data-view=console]").hidden) toast(`${name} is asking for help: answer from the console.`);
  });

  signalling.on("session.state", ({ message }) => {
    if (message.session.state !== "ringing") removeRing(message.session.id);
  });

  function removeRing(sessionId) {
    const entry = ringing.get(sessionId);
    if (!entry) return;
    clearInterval(entry.tick);
    ringing.delete(sessionId);
    renderIncoming();
  }

  function renderIncoming() {
    renderQueue();
    const list = $("#incoming");
    const items = [...ringing.values()].map((r) => r.item);
    list.replaceChildren(...(items.length ? items : [el("li", { class: "hint" }, "No one is calling.")]));
  }

  // --- the waiting queue -------------------------------------------------------------------

  let waiting = [];
  signalling.on("queue.update", ({ message }) => {
    if (message.expert_id !== identity.user) return;
    waiting = [...message.waiting].sort((a, b) => a.position - b.position);
    renderQueue();
  });

  function renderQueue() {
    $("#queue-count").textContent = String(waiting.length);
    $("#queue").replaceChildren(
      ...(waiting.length ? waiting.map(queueItem) : [el("li", { class: "hint" }, "Nobody is waiting.")]),
    );
  }

  function queueItem(entry) {
    const name = entry.client_name || entry.client_id;
    // The one being rung is answered from "Incoming requests"; the others can be declined here.
    const decline = ringing.has(entry.session_id)
      ? el("span", { class: "hint" }, "ringing")
      : el("button", { type: "button", class: "secondary small", "aria-label": `Decline ${name} (waiting)` }, "Decline");
    if (decline.tagName === "BUTTON") {
      decline.addEventListener("click", async () => {
        decline.disabled = true;
        try {
          await signalling.declineHelp(entry.session_id);
        } catch (error) {
          decline.disabled = false;
          toast(`Could not decline: ${error.message}`, "error");
        }
      });
    }
    return el(
      "li",
      { dataset: { sessionId: entry.session_id } },
      el("span", { class: "grow" }, `${entry.position}. ${name}`),
      entry.skill ? el("span", { class: "hint" }, entry.skill) : null,
      el("span", { class: "hint" }, `since ${formatWhen(entry.since)}`),
      decline,
    );
  }

  // --- profile, price and hours ------------------------------------------------------------

  const days = $("#p-days");
  for (const [value, label] of DAYS) {
    const id = `day-${value}`;
    days.append(el("label", { for: id }, el("input", { type: "checkbox", id, name: "days", value, checked: !["sat", "sun"].includes(value) }), label));
  }
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
  $("#p-tz").value = zone;
  const zones = typeof Intl.supportedValuesOf === "function" ? Intl.supportedValuesOf("timeZone") : [zone];
  $("#tz-list").replaceChildren(...zones.map((z) => el("option", { value: z })));
  $("#p-name").value = identity.name;
  $("#p-amount").value = "1.00";
  $("#p-mode").addEventListener("change", syncAmount);
  function syncAmount() {
    const free = $("#p-mode").value === "free";
    $("#p-amount").disabled = free;
    $("#p-currency").disabled = free;
  }

  // The photo: uploaded as chosen, validated and remade by the server, shown as clients see it.
  function showPhoto(photo) {
    $("#photo-preview").replaceChildren(avatar({ id: identity.user, name: $("#p-name").value || identity.name, photo }, "large"));
    $("#p-photo-remove").hidden = !photo;
  }
  $("#p-photo").addEventListener("change", async () => {
    const file = $("#p-photo").files[0];
    if (!file) return;
    const status = $("#p-photo-status");
    status.textContent = "Uploading…";
    try {
      showPhoto(await api.uploadPhoto(identity.user, file));
      status.textContent = "Photo saved.";
    } catch (error) {
      status.textContent = error.code === "expert_not_found" ? "Save your profile first, then add a photo." : `Photo not saved: ${error.message}`;
    }
    $("#p-photo").value = "";
  });
  $("#p-photo-remove").addEventListener("click", async () => {
    try {
      await api.deletePhoto(identity.user);
      showPhoto(null);
      $("#p-photo-status").textContent = "Photo removed.";
    } catch (error) {
      $("#p-photo-status").textContent = `Could not remove the photo: ${error.message}`;
    }
  });

  async function loadProfile() {
    showPhoto(null);
    try {
      const expert = await api.expert(identity.user);
      showPhoto(expert.photo);
      $("#p-name").value = expert.name || identity.name;
      $("#p-skills").value = expert.skills.join(", ");
      $("#p-languages").value = expert.languages.join(", ");
      $("#p-bio").value = expert.bio || "";
      $("#p-mode").value = expert.pricing.model;
      if (expert.pricing.model !== "free") {
        ensureCurrency(expert.pricing.currency);
        $("#p-currency").value = expert.pricing.currency;
        $("#p-amount").value = minorToDecimalString(expert.pricing.amount, expert.pricing.currency);
      }
      if (expert.hours) {
        $("#p-tz").value = expert.hours.time_zone || zone;
        const weekly = expert.hours.weekly || {};
        for (const [value] of DAYS) $(`#day-${value}`).checked = Boolean(weekly[value]?.length);
        const first = Object.values(weekly).find((spans) => spans.length);
        // <input type=time> has no 24:00: midnight at the end of the day shows as 00:00.
        if (first) [$("#p-from").value, $("#p-to").value] = first[0].map((t) => (t === "24:00" ? "00:00" : t));
      }
      syncAmount();
      hasProfile = true;
    } catch (error) {
      if (error.status === 404) hasProfile = false;
      else toast(`Could not load your profile: ${error.message}`, "error");
    }
    showPresence(presence);
  }

  function ensureCurrency(code) {
    const select = $("#p-currency");
    if (![...select.options].some((o) => o.value === code)) select.append(el("option", {}, code));
  }

  $("#profile-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const error = $("#profile-error");
    error.textContent = "";
    for (const node of document.querySelectorAll("#profile-form [aria-invalid]")) node.removeAttribute("aria-invalid");
    const mode = $("#p-mode").value;
    const currency = $("#p-currency").value;
    let amount = 0;
    if (mode !== "free") {
      amount = parseMoneyInput($("#p-amount").value, currency);
      if (!amount) {
        $("#p-amount").setAttribute("aria-invalid", "true");
        error.textContent = "Enter a price above zero, such as 1.50.";
        $("#p-amount").focus();
        return;
      }
    }
    const from = $("#p-from").value;
    const to = $("#p-to").value === "00:00" ? "24:00" : $("#p-to").value;
    const weekly = {};
    for (const [value] of DAYS) if ($(`#day-${value}`).checked) weekly[value] = [[from, to]];
    const profile = {
      display_name: $("#p-name").value.trim(),
      bio: $("#p-bio").value.trim(),
      skills: $("#p-skills").value.split(",").map((s) => s.trim()).filter(Boolean),
      // The browser's language until the expert names theirs.
      languages: $("#p-languages").value.split(",").map((s) => s.trim()).filter(Boolean).concat($("#p-languages").value.trim() ? [] : [navigator.language || "en"]),
      price: { mode, amount, currency },
      working_hours: { time_zone: $("#p-tz").value.trim() || zone, weekly },
    };
    try {
      await api.saveExpert(identity.user, profile);
      hasProfile = true;
      showPresence(presence);
      toast("Profile saved.");
    } catch (failure) {
      error.textContent = `Not saved: ${failure.message}`;
    }
  });

  // --- scheduled sessions and earnings -----------------------------------------------------

  async function loadScheduled() {
    const list = $("#scheduled");
    try {
      const bookings = await api.bookings();
      list.replaceChildren(...(bookings.length ? bookings.map(scheduledItem) : [el("li", { class: "hint" }, "No sessions booked.")]));
    } catch {
      list.replaceChildren(el("li", { class: "hint" }, "Scheduling is not available on this server."));
    }
  }

  // Either side may cancel until the start (docs/experts-and-bookings.md); the client is told.
  function scheduledItem(b) {
    const cancel = el("button", { type: "button", class: "secondary small", "aria-label": `Cancel the session with ${b.client_name} on ${formatWhen(b.start)}` }, "Cancel");
    cancel.hidden = b.state !== "booked";
    cancel.addEventListener("click", async () => {
      cancel.disabled = true;
      try {
        await api.cancelBooking(b.id);
        toast(`Cancelled: ${b.client_name} is told.`);
      } catch (error) {
        toast(`Could not cancel: ${error.message}`, "error");
      }
      loadScheduled();
    });
    return el(
      "li",
      { dataset: { bookingId: b.id, state: b.state } },
      el("span", { class: "grow" }, el("strong", {}, b.client_name), ` — ${formatWhen(b.start)}`, b.topic ? el("span", { class: "hint" }, b.topic) : null),
      el("span", { class: "hint" }, bookingState(b, identity.user)),
      cancel,
    );
  }

  signalling.on("booking.update", ({ message }) => {
    const b = message.booking;
    if (message.event === "booked") toast(`${b.client_name} booked a session for ${formatWhen(b.start)}.`);
    if (message.event === "cancelled" && message.by !== identity.user) toast(`${b.client_name} cancelled the session of ${formatWhen(b.start)}.`);
    loadScheduled();
  });
  signalling.on("booking.reminder", ({ message }) => {
    announce(`Reminder: your session with ${message.booking.client_name} starts ${formatWhen(message.booking.start)}.`, { assertive: true });
    toast(`Session with ${message.booking.client_name} at ${formatWhen(message.booking.start)}`);
  });
  signalling.on("session.state", ({ message }) => {
    if (message.session.booking_id) loadScheduled();
  });

  // Earnings per period: the ledger's statement for the totals (refunds count when made), the
  // sessions of the period by name for the list.
  async function loadEarnings() {
    const { from, to } = periodRange($("#earnings-period").value, new Date());
    try {
      const [statement, sessions] = await Promise.all([api.statement({ from, to }), api.history({ side: "expert", from, to, limit: 10 })]);
      const totals = Object.entries(statement.totals || {});
      $("#earnings-total").textContent = totals.length ? totals.map(([currency, t]) => formatMoney(t.payout, currency)).join(" + ") : formatMoney(0, "USD");
      const count = totals.reduce((n, [, t]) => n + t.sessions, 0);
      $("#earnings-detail").textContent = totals.length
        ? `Your share of ${count} paid session${count === 1 ? "" : "s"}, after the platform fee of ${totals.map(([currency, t]) => formatMoney(t.fee, currency)).join(" + ")}.`
        : "No paid sessions in this period.";
      $("#earnings-list").replaceChildren(
        ...sessions.map((s) =>
          el("li", {}, el("span", { class: "grow" }, `${s.client_name} · ${formatWhen(s.started_at)}`), el("span", {}, formatMoney(s.refunded ? 0 : s.payout, s.currency)),
            el("a", { href: `/receipt?session=${encodeURIComponent(s.session_id)}`, "aria-label": `Receipt for the session with ${s.client_name}` }, "Receipt")),
        ),
      );
    } catch {
      $("#earnings-total").textContent = "—";
      $("#earnings-detail").textContent = "Earnings could not be loaded.";
    }
  }
  $("#earnings-period").addEventListener("change", () => loadEarnings());

  // A failed first attempt keeps retrying with backoff; the status badge shows it.
  signalling.connect().catch(() => {});
  showView("console");
  loadProfile();
  loadScheduled();
  loadEarnings();
  page.hooks.controller = controller;
}

/** The [from, to) of an earnings period in the viewer's time zone; undefined bounds: all time. */
function periodRange(period, now) {
  const midnight = new Date(now.getFullYear(), now.getMonth(), now.getDate());
  if (period === "today") return { from: midnight, to: undefined };
  if (period === "week") return { from: new Date(midnight.getTime() - 6 * 86400_000), to: undefined };
  if (period === "month") return { from: new Date(now.getFullYear(), now.getMonth(), 1), to: undefined };
  return { from: undefined, to: undefined };
}
