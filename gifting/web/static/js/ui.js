// Small DOM helpers shared by the pages: element builder, formatting, notices, connection indicator.

import { api, ApiError, tokenClaims, tokenExpired, withToken } from "./client.js";

/** el("button.primary", {type: "button", onclick}, "text", child...) */
export function el(spec, attrs = {}, ...children) {
  const [tag, ...classes] = spec.split(".");
  const node = document.createElement(tag || "div");
  if (classes.length) node.className = classes.join(" ");
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "text") node.textContent = value;
    else if (value === true) node.setAttribute(key, "");
    else node.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export const $ = (selector, root = document) => root.querySelector(selector);

const numberFormat = new Intl.NumberFormat();
const compactFormat = new Intl.NumberFormat(undefined, { notation: "compact", maximumFractionDigits: 1 });
export const fmt = (n) => numberFormat.format(n ?? 0);
export const compact = (n) => compactFormat.format(n ?? 0);

export function money(minor, currency) {
  try {
    return new Intl.NumberFormat(undefined, { style: "currency", currency }).format(minor / 100);
  } catch {
    return `${(minor / 100).toFixed(2)} ${currency}`;
  }
}

export function clock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

export function duration(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const rest = String(s % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${rest}` : `${m}:${rest}`;
}

/** "just went live", "live for 12 min", "live for 2 h 5 min" */
export function liveFor(ms) {
  const s = Math.max(0, (Date.now() - ms) / 1000);
  if (s < 60) return "just went live";
  if (s < 3600) return `live for ${Math.floor(s / 60)} min`;
  return `live for ${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

// Gifts --------------------------------------------------------------------------------------------------

export function giftIcon(gift, cls = "gift-icon") {
  const img = el(`img.${cls}`, { src: `/static/gifts/${gift?.asset || "gift.svg"}`, alt: "", width: 64, height: 64, draggable: "false" });
  img.addEventListener("error", () => { if (!img.src.endsWith("/gift.svg")) img.src = "/static/gifts/gift.svg"; }, { once: true });
  return img;
}

/** Tier of a gift for its animation: from the catalog's tier, else from its coin value. */
export function tierOf(gift, coinsEach) {
  if (gift?.tier && ["basic", "standard", "premium", "luxury"].includes(gift.tier)) return gift.tier;
  const c = coinsEach ?? gift?.coins ?? 1;
  if (c >= 5000) return "luxury";
  if (c >= 500) return "premium";
  if (c >= 99) return "standard";
  return "basic";
}

export function levelBadge(level) {
  if (typeof level !== "number" || level < 1) return null;
  const band = level >= 8 ? "l4" : level >= 5 ? "l3" : level >= 3 ? "l2" : "l1"; // levels 1..10 (PROTOCOL.md)
  return el(`span.level.${band}`, { title: `Gifter level ${level}` }, `Lv ${level}`);
}

const REASONS = {
  insufficient_coins: "Not enough coins for this gift. Buy coins to send it.",
  room_not_live: "The stream has ended; gifts can't be sent any more.",
  self_gift: "You can't send gifts to your own stream.",
  price_changed: "The price of this gift just changed. Check the new price and try again.",
  unknown_gift: "This gift is no longer available.",
  gift_retired: "This gift is no longer available.",
  rate_limited: "You're sending gifts too fast. Wait a moment and try again.",
  overloaded: "The server is busy. Try again in a moment.",
  daily_limit: "You've reached your daily spending limit.",
  gift_id_conflict: "This gift could not be sent (its id was already used). Try again.",
  unknown_pool: "This group gift no longer exists.",
  pool_completed: "This group gift is already complete.",
  pool_expired: "Time ran out for this group gift.",
  pledge_exceeds_remaining: "That's more than the group gift still needs; pledge less.",
  too_many_pools: "This stream already has as many group gifts as it can.",
  pool_cancelled: "This group gift was cancelled.",
  pool_voided: "The stream ended; this group gift was called off.",
  too_many_open_pools: "You already have a group gift open. Wait for it to finish, or cancel it.",
  pool_opener_coins: "Buy coins to start a group gift.",
};

export function reasonText(reason, fallback) {
  return REASONS[reason] || fallback || `The gift was rejected (${reason}).`;
}

// Notices ------------------------------------------------------------------------------------------------

/** A transient message in the page's live region. kind: info | ok | error */
export function toast(text, kind = "info", ms = 5000) {
  let region = $("#toasts");
  if (!region) {
    region = el("div.toasts", { id: "toasts" });
    document.body.append(region);
  }
  const note = el(`div.toast.${kind}`, { role: kind === "error" ? "alert" : "status" }, text);
  region.append(note);
  while (region.children.length > 4) region.firstElementChild.remove();
  setTimeout(() => note.remove(), ms);
  return note;
}

/** A persistent banner at the top of main content (auth problems, unreachable server). */
export function banner(text, kind = "error", actions = []) {
  let node = $("#banner");
  if (!node) return;
  node.replaceChildren();
  if (!text) { node.hidden = true; return; }
  node.hidden = false;
  node.className = `banner ${kind}`;
  node.append(el("p", {}, text), ...actions);
}

export function explain(err) {
  if (err instanceof ApiError) {
    if (err.unreachable) return err.message;
    return `${err.message} (${err.code})`;
  }
  return String(err?.message || err);
}

/** The banner for a missing, invalid or expired token, with a link to the dev token page when it exists. */
export async function signInBanner(token, problem) {
  const expired = problem === "token_expired" || (token && tokenExpired(token));
  const text = !token
    ? "You're not signed in. Open this page from the platform with your sign-in link."
    : expired
      ? "Your sign-in expired. Open the page again from the platform to get a fresh link."
      : "Your sign-in was not accepted. Open the page again from the platform.";
  const actions = [];
  if (await devMode()) actions.push(el("a.button", { href: "/dev" }, "Get a demo token (dev mode)"));
  banner(text, "error", actions);
}

let devModeAnswer;
export function devMode() {
  devModeAnswer ??= fetch("/dev", { method: "HEAD", cache: "no-store" }).then((r) => r.ok).catch(() => false);
  return devModeAnswer;
}

/** The header's "signed in as" line. */
export function whoAmI(token) {
  const node = $("#who");
  if (!node) return null;
  const claims = tokenClaims(token);
  node.replaceChildren();
  if (!claims) {
    node.append(el("span.muted", {}, "Not signed in"));
    return null;
  }
  node.append(el("span", { title: `user ${claims.sub}, ${claims.role}` }, claims.name || claims.sub));
  return claims;
}

const STATUS_TEXT = {
  connecting: "Connecting…",
  open: "Connected",
  reconnecting: "Reconnecting…",
  unauthorized: "Signed out",
  fatal: "Disconnected",
  offline: "Offline",
};

/** Keep the connection indicator (#conn) in step with a Live connection. */
export function connectionIndicator(live, onProblem) {
  const node = $("#conn");
  let unreachableSince = 0;
  live.addEventListener("status", (e) => {
    const { state, attempt } = e.detail;
    if (!node) return;
    node.dataset.state = state;
    let text = STATUS_TEXT[state] || state;
    if (state === "reconnecting" && attempt > 1) text = `Reconnecting… (try ${attempt})`;
    node.querySelector(".conn-text").textContent = text;
    if (state === "reconnecting") {
      unreachableSince ||= Date.now();
      if (attempt >= 3) banner("Can't reach the server. Retrying automatically; nothing you send is lost.", "warn");
    } else if (state === "open") {
      if (unreachableSince) banner("");
      unreachableSince = 0;
    }
    if (onProblem && (state === "unauthorized" || state === "fatal")) onProblem(e.detail);
  });
}

export function pageLink(path, token) {
  return withToken(path, token);
}

export { api, ApiError };
