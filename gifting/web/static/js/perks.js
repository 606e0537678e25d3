// Perks and fan clubs on the watch page: buy a highlighted message or an entrance effect, see pinned messages
// (unpinned at their `until_ms`) and entrances, buy the ticket to a premium stream, join the creator's fan club.
// watch.js owns the connection and hands this module the room's events (`highlight`, `entrance`), `joined`,
// and a join refused `ticket_required`.

import { uuid } from "./client.js";
import { $, api, el, explain, fmt, toast } from "./ui.js";

const PIN_TICK_MS = 1000;

export class PerksPanel {
  /** room: the room id; token: the viewer's; onSpent(coins): the balance after a purchase. */
  constructor(room, token, onSpent) {
    this.room = room;
    this.token = token;
    this.onSpent = onSpent;
    this.pins = new Map(); // purchase_id -> highlight event
    this.creator = null;
    this.club = null;
    this.rejoin = null;
    setInterval(() => this.drawPins(), PIN_TICK_MS);
  }

  async start(live) {
    this.rejoin = () => live.sendJoin(this.room);
    $("#perk-form").addEventListener("submit", (e) => this.buy(e));
    $("#ticket-buy").addEventListener("click", () => this.buyTicket());
    $("#fan-join").addEventListener("click", () => this.joinClub());
    try {
      const { perks } = await api("/v1/catalog/perks");
      $("#perk").replaceChildren(...perks.map((p) => el("option", { value: p.id, dataset: { kind: p.kind } },
        `${p.name} (${fmt(p.coins)} coins${p.days ? `, ${p.days} days` : ""})`)));
    } catch (err) {
      $("#perk-msg").textContent = `Couldn't load the perks: ${explain(err)}`;
    }
  }

  /** The room's creator is known (from `joined`, or the room): load their fan club. */
  async setCreator(creator) {
    if (!creator || creator === this.creator) return;
    this.creator = creator;
    try {
      this.club = await api(`/v1/creators/${encodeURIComponent(creator)}/fanclub`, { token: this.token });
    } catch { this.club = null; }
    this.drawClub();
  }

  joined(message) {
    this.setCreator(message.creator);
    this.pins.clear();
    for (const pin of message.pins || []) this.pins.set(pin.purchase_id, pin);
    this.drawPins();
  }

  handle(event) {
    if (event.kind === "highlight") {
      this.pins.set(event.purchase_id, event);
      this.drawPins();
    } else if (event.kind === "entrance") {
      const node = el("p.entrance", { dataset: { user: event.user } }, `✨ ${event.name || event.user} entered the room`);
      $("#entrances").prepend(node);
      while ($("#entrances").children.length > 5) $("#entrances").lastElementChild.remove();
    }
  }

  /** Pinned messages, the longest-pinned first; each leaves at its `until_ms`. */
  drawPins() {
    const now = Date.now();
    for (const [id, pin] of this.pins) if (pin.until_ms <= now) this.pins.delete(id);
    const pins = [...this.pins.values()].sort((a, b) => b.until_ms - a.until_ms);
    $("#pins").replaceChildren(...pins.map((pin) => el("li.pin", { dataset: { purchaseId: pin.purchase_id } },
      el("strong", {}, pin.name || pin.user), " ", el("span.pin-message", {}, pin.message),
      el("span.muted.small", {}, ` ${Math.ceil((pin.until_ms - now) / 1000)} s`))));
    $("#pins-card").hidden = pins.length === 0;
  }

  async buy(event) {
    event.preventDefault();
    const perk = $("#perk").value;
    const kind = $("#perk").selectedOptions[0]?.dataset.kind;
    const body = { perk };
    if (kind === "highlight") body.message = $("#perk-message").value;
    await this.purchase(`/v1/rooms/${encodeURIComponent(this.room)}/perks`, body, $("#perk-msg"), kind === "highlight"
      ? "Your message is pinned." : "Your entrance effect is on.");
  }

  /** The stream is premium and this viewer has no ticket: offer one at its price. */
  async ticketRequired() {
    const info = await api(`/v1/rooms/${encodeURIComponent(this.room)}`).catch(() => null);
    const price = Number(info?.premium_coins || 0);
    $("#ticket-card").hidden = false;
    $("#ticket-price").textContent = fmt(price);
    $("#ticket-buy").dataset.coins = String(price);
    this.setCreator(info?.creator);
  }

  async buyTicket() {
    const coins = Number($("#ticket-buy").dataset.coins);
    const ok = await this.purchase(`/v1/rooms/${encodeURIComponent(this.room)}/ticket`, { coins }, $("#ticket-msg"), "Ticket bought. Joining…");
    if (ok) {
      $("#ticket-card").hidden = true;
      this.rejoin?.();
    }
  }

  async purchase(path, body, msg, done) {
    msg.textContent = "";
    try {
      const result = await api(path, { method: "POST", token: this.token, body, idempotencyKey: uuid() });
      msg.textContent = done;
      this.onSpent(result.coins);
      return true;
    } catch (err) {
      msg.textContent = err.code === "insufficient_coins" ? "Not enough coins: buy some first." : explain(err);
      if (err.body?.coins !== undefined) this.onSpent(err.body.coins);
      return false;
    }
  }

  drawClub() {
    const config = this.club?.config;
    $("#fan-card").hidden = !config;
    if (!config) return;
    const member = this.club.membership;
    $("#fan-status").textContent = member
      ? `Member · level ${member.level} · ${fmt(member.points)} points${member.status === "paused" ? " (paused: send a gift to resume)" : ""}`
      : `Join by sending ${config.membership_gift}.`;
    $("#fan-join").hidden = !!member;
    $("#fan-join").dataset.gift = config.membership_gift;
  }

  async joinClub() {
    const gift = $("#fan-join").dataset.gift;
    document.querySelector(`.gift[data-gift="${CSS.escape(gift)}"]`)?.click();
    setTimeout(() => this.refreshClub(), 1500);
  }

  async refreshClub() {
    const creator = this.creator;
    this.creator = null;
    await this.setCreator(creator);
  }
}

/** The fan-club badge of a gift event (`fan: {level}`), or null. */
export function fanBadge(event) {
  return event.fan ? el("span.fan-badge", { title: `Fan club level ${event.fan.level}` }, `♥${event.fan.level}`) : null;
}

export function onTicketRequired(panel, code) {
  if (code === "ticket_required") {
    panel.ticketRequired().catch((err) => toast(explain(err), "error"));
    return true;
  }
  return false;
}
