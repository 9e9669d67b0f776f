// Small DOM helpers shared by the pages. User-provided text only ever goes through textContent.

export const $ = (selector, root = document) => root.querySelector(selector);
export const $$ = (selector, root = document) => [...root.querySelectorAll(selector)];

/** Build an element: el("li", {class: "card", dataset: {id}}, "text", child, ...). */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else if (value === true) node.setAttribute(key, "");
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Show exactly one of the page's views (sections with [data-view]) and move focus into it. */
export function showView(name) {
  for (const view of $$("[data-view]")) view.hidden = view.dataset.view !== name;
  const view = $(`[data-view="${name}"]`);
  const heading = view && $("h2, h1", view);
  if (heading) {
    heading.tabIndex = -1;
    heading.focus({ preventScroll: false });
  }
}

/** Say something to screen readers (and show it) in the page's polite or assertive live region. */
export function announce(text, { assertive = false } = {}) {
  const region = $(assertive ? "#announce-assertive" : "#announce-polite");
  if (!region) return;
  region.textContent = "";
  // A fresh text node after a tick makes screen readers announce repeated messages too.
  setTimeout(() => {
    region.textContent = text;
  }, 30);
}

/** A short-lived notice at the bottom of the screen. */
export function toast(text, kind = "info") {
  const box = $("#toasts");
  if (!box) return;
  const item = el("div", { class: `toast toast-${kind}`, role: kind === "error" ? "alert" : "status" }, text);
  box.append(item);
  setTimeout(() => item.remove(), 6000);
}

/** A face for a person: their photo, or their initials on a colour of their own. */
export function avatar(person, size = "small") {
  if (person.photo) return el("img", { class: `avatar avatar-${size}`, src: person.photo, alt: "", width: size === "large" ? 160 : 56, height: size === "large" ? 160 : 56 });
  const initials = String(person.name || "?").split(/\s+/).filter(Boolean).slice(0, 2).map((w) => w[0].toUpperCase()).join("");
  let hue = 0;
  for (const c of String(person.id || person.name)) hue = (hue * 31 + c.charCodeAt(0)) % 360;
  const node = el("span", { class: `avatar avatar-${size} avatar-initials`, "aria-hidden": "true" }, initials);
  node.style.setProperty("--hue", String(hue)); // through the CSSOM: the CSP allows no inline style attribute
  return node;
}

export function stars(average, count) {
  if (average === null || average === undefined || !count) return "No ratings yet";
  const rounded = Math.round(Number(average) * 10) / 10;
  return `★ ${rounded.toFixed(1)} (${count} rating${count === 1 ? "" : "s"})`;
}

export function formatDuration(seconds) {
  const total = Math.max(0, Math.floor(seconds));
  const m = Math.floor(total / 60);
  const s = total % 60;
  const h = Math.floor(m / 60);
  return h ? `${h}:${String(m % 60).padStart(2, "0")}:${String(s).padStart(2, "0")}` : `${m}:${String(s).padStart(2, "0")}`;
}

export function formatWhen(value) {
  const date = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  if (Number.isNaN(date.getTime())) return String(value);
  return new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" }).format(date);
}

/**
 * A problem that stops the page (sign-in expired, opened elsewhere): a modal dialog that says what
 * happened and offers the one thing to do. Shown once; later calls while it is open are ignored.
 */
export function showBlocking({ title, text, actionLabel, onAction }) {
  if ($("#blocking-dialog")) return;
  const button = el("button", { type: "button", class: "primary" }, actionLabel);
  const dialog = el(
    "dialog",
    { id: "blocking-dialog", role: "alertdialog", "aria-labelledby": "blocking-title", "aria-describedby": "blocking-text", "data-testid": "blocking" },
    el("div", { class: "stack" }, el("h2", { id: "blocking-title" }, title), el("p", { id: "blocking-text" }, text), button),
  );
  button.addEventListener("click", onAction);
  // Escape must not leave the page looking usable when it is not.
  dialog.addEventListener("cancel", (event) => event.preventDefault());
  document.body.append(dialog);
  dialog.showModal();
  button.focus();
}
