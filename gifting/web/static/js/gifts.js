// Gift combos and animations, shared by the watch page (over the stream) and the stream overlay.
//
// Combos: the server will mark gifts with `combo: {id, count}` (the id is the combo's first gift_id, the count
// a running total). Until it does, the same sender sending the same gift within COMBO_WINDOW_MS extends a
// combo computed here, with the same id scheme, so both ways look the same.

import { el, fmt, giftIcon, tierOf } from "./ui.js";

export const COMBO_WINDOW_MS = 3000;
const TIER_RANK = { basic: 0, standard: 1, premium: 2, luxury: 3 };
const SHOW_MS = { basic: 2200, standard: 3000, premium: 4500, luxury: 7000 };
const SHOW_MS_MIN = 900;
const QUEUE_MAX = 60;
const COMBO_EXTEND_MAX_MS = 15000; // a combo keeps its animation alive at most this long past its start

export class ComboTracker {
  constructor(windowMs = COMBO_WINDOW_MS) {
    this.windowMs = windowMs;
    this.bySender = new Map(); // "sender|gift" -> {id, count, at}
  }

  /** -> {id, count, first}: the combo this gift event belongs to and its running count. */
  track(event) {
    const key = `${event.sender}|${event.gift}`;
    const at = typeof event.ts === "number" ? event.ts : Date.now();
    const prev = this.bySender.get(key);
    let combo;
    if (event.combo && typeof event.combo.id === "string" && typeof event.combo.count === "number") {
      combo = { id: event.combo.id, count: event.combo.count, first: !prev || prev.id !== event.combo.id };
    } else if (prev && at - prev.at <= this.windowMs && at >= prev.at - this.windowMs) {
      combo = { id: prev.id, count: prev.count + (event.count || 1), first: false };
    } else {
      combo = { id: event.gift_id, count: event.count || 1, first: true };
    }
    this.bySender.set(key, { id: combo.id, count: combo.count, at });
    if (this.bySender.size > 500) this.prune(at);
    return combo;
  }

  /** The server said a combo ended (`combo_end`): the next gift starts a new one. */
  end(comboId) {
    for (const [key, value] of this.bySender) if (value.id === comboId) this.bySender.delete(key);
  }

  prune(now) {
    for (const [key, value] of this.bySender) if (now - value.at > this.windowMs) this.bySender.delete(key);
  }
}

/** The combo id of a `combo_end` event, whichever way the server spells it. */
export function comboIdOf(event) {
  if (typeof event.combo === "string") return event.combo;
  if (typeof event.combo?.id === "string") return event.combo.id;
  if (typeof event.combo_id === "string") return event.combo_id;
  return null;
}

function comboText(count) {
  return count > 1 ? `x${fmt(count)}` : "";
}

function bump(node) {
  node.classList.remove("bump");
  void node.offsetWidth; // restart the CSS animation
  node.classList.add("bump");
}

/** What one animation shows: a gift (and its combo) from one sender. */
function alertFrom(event, combo, catalog) {
  const gift = catalog.get(event.gift) || { id: event.gift, name: event.gift, coins: 0, asset: "gift.svg" };
  const each = gift.coins || (event.count ? Math.round((event.coins || 0) / event.count) : 0);
  return {
    key: combo.id,
    gift,
    tier: tierOf(gift, each),
    each,
    count: combo.count,
    sender: event.sender_name || event.sender,
    at: performance.now(),
  };
}

/**
 * One animation at a time, the most valuable waiting gift next (a burst never piles up on screen).
 * A gift that extends the combo on screen or in the queue updates its counter instead of queueing again.
 */
export class Spotlight {
  constructor(root, { className = "spotlight", reducedMotion = false } = {}) {
    this.root = root;
    this.className = className;
    this.reducedMotion = reducedMotion;
    this.queue = [];
    this.current = null; // {alert, node, until, started}
    this.timer = null;
  }

  add(alert) {
    if (this.current && this.current.alert.key === alert.key) {
      this.current.alert.count = Math.max(this.current.alert.count, alert.count);
      this.render(this.current, true);
      const extendTo = Math.min(performance.now() + this.showMs(alert), this.current.started + COMBO_EXTEND_MAX_MS);
      if (extendTo > this.current.until) this.schedule(extendTo - performance.now());
      return;
    }
    const queued = this.queue.find((a) => a.key === alert.key);
    if (queued) {
      queued.count = Math.max(queued.count, alert.count);
      return;
    }
    this.queue.push(alert);
    this.queue.sort((a, b) => b.each - a.each || a.at - b.at);
    if (this.queue.length > QUEUE_MAX) this.queue.length = QUEUE_MAX; // the cheapest wait longest; drop them
    if (!this.current) this.next();
  }

  showMs(alert) {
    const base = SHOW_MS[alert.tier] || SHOW_MS.basic;
    const pressure = this.queue.length > 8 ? 0.4 : this.queue.length > 3 ? 0.7 : 1;
    return Math.max(SHOW_MS_MIN, base * pressure);
  }

  next() {
    if (this.current) {
      const old = this.current.node;
      old.classList.add("leaving");
      setTimeout(() => old.remove(), this.reducedMotion ? 0 : 250);
      this.current = null;
    }
    const alert = this.queue.shift();
    if (!alert) return;
    const node = el(`div.${this.className}.tier-${alert.tier}`, { dataset: { gift: alert.gift.id, key: alert.key } },
      el("div.alert-icon-wrap", {}, giftIcon(alert.gift, "alert-icon")),
      el("div.alert-text", {}, el("strong.alert-sender", {}, alert.sender), " sent ", el("span.alert-gift", {}, alert.gift.name)),
      el("div.combo", { "aria-label": "combo" }),
    );
    this.current = { alert, node, started: performance.now(), until: 0 };
    this.render(this.current, false);
    this.root.append(node);
    this.schedule(this.showMs(alert));
  }

  render(current, changed) {
    const combo = current.node.querySelector(".combo");
    combo.textContent = comboText(current.alert.count);
    if (changed) bump(combo);
  }

  schedule(ms) {
    clearTimeout(this.timer);
    this.current.until = performance.now() + ms;
    this.timer = setTimeout(() => this.next(), ms);
  }

  clear() {
    clearTimeout(this.timer);
    this.queue = [];
    if (this.current) this.current.node.remove();
    this.current = null;
  }
}

/** Small gifts: a few lanes of bubbles with combo counters; more senders than lanes wait their turn. */
export class Lanes {
  constructor(root, { lanes = 3 } = {}) {
    this.root = root;
    this.size = lanes;
    this.active = new Map(); // key -> {alert, node, timer}
    this.queue = [];
  }

  add(alert) {
    const live = this.active.get(alert.key);
    if (live) {
      live.alert.count = Math.max(live.alert.count, alert.count);
      const combo = live.node.querySelector(".combo");
      combo.textContent = comboText(live.alert.count);
      bump(combo);
      this.arm(alert.key, live);
      return;
    }
    const queued = this.queue.find((a) => a.key === alert.key);
    if (queued) {
      queued.count = Math.max(queued.count, alert.count);
      return;
    }
    this.queue.push(alert);
    if (this.queue.length > QUEUE_MAX) this.queue.splice(0, this.queue.length - QUEUE_MAX);
    this.fill();
  }

  fill() {
    while (this.active.size < this.size && this.queue.length) {
      const alert = this.queue.shift();
      const node = el(`div.bubble.tier-${alert.tier}`, { dataset: { gift: alert.gift.id, key: alert.key } },
        el("span.avatar", { "aria-hidden": "true" }, (alert.sender || "?").slice(0, 1).toUpperCase()),
        el("span.bubble-text", {}, el("strong", {}, alert.sender), el("span", {}, `sent ${alert.gift.name}`)),
        giftIcon(alert.gift, "bubble-icon"),
        el("span.combo", {}, comboText(alert.count)),
      );
      const entry = { alert, node, timer: null };
      this.active.set(alert.key, entry);
      this.root.append(node);
      this.arm(alert.key, entry);
    }
  }

  arm(key, entry) {
    clearTimeout(entry.timer);
    const ms = (SHOW_MS[entry.alert.tier] || SHOW_MS.basic) * (this.queue.length > 3 ? 0.6 : 1);
    entry.timer = setTimeout(() => {
      entry.node.classList.add("leaving");
      setTimeout(() => entry.node.remove(), 250);
      this.active.delete(key);
      this.fill();
    }, ms);
  }

  clear() {
    for (const entry of this.active.values()) { clearTimeout(entry.timer); entry.node.remove(); }
    this.active.clear();
    this.queue = [];
  }
}

/** The watch page's stage: small gifts in lanes, premium and luxury gifts in the spotlight. */
export class GiftStage {
  constructor(root, catalog, { reducedMotion = false } = {}) {
    this.catalog = catalog; // Map gift id -> gift
    this.combos = new ComboTracker();
    const narrow = matchMedia("(max-width: 560px)").matches;
    this.lanes = new Lanes(el("div.lanes"), { lanes: narrow ? 2 : 3 });
    this.spotlight = new Spotlight(el("div.spotlight-layer"), { reducedMotion });
    root.append(this.lanes.root, this.spotlight.root);
  }

  /** A new gift event (live, not history): animate it; returns its combo. */
  gift(event) {
    const combo = this.combos.track(event);
    const alert = alertFrom(event, combo, this.catalog);
    if (TIER_RANK[alert.tier] >= TIER_RANK.premium) this.spotlight.add(alert);
    else this.lanes.add(alert);
    return combo;
  }

  comboEnd(event) {
    const id = comboIdOf(event);
    if (id) this.combos.end(id);
  }

  clear() {
    this.lanes.clear();
    this.spotlight.clear();
  }
}

/** A completed group-gift pool as a gift event (it is sent to the creator like one). */
export function poolGiftEvent(event) {
  const pool = event.pool || {};
  const people = (pool.contributors || []).length;
  return {
    kind: "gift",
    offset: event.offset,
    gift_id: `pool:${pool.id}`,
    gift: event.gift || pool.gift,
    count: event.count || 1,
    coins: event.coins ?? pool.price ?? 0,
    diamonds: event.diamonds,
    sender: `pool:${pool.id}`,
    sender_name: people ? `${people} viewer${people === 1 ? "" : "s"} together` : "Group gift",
    ts: event.ts || Date.now(),
  };
}

export { alertFrom };
