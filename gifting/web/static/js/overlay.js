// The stream overlay (/overlay/{room}): a transparent page for streaming software. It shows each gift to the
// creator's room as an alert, one at a time, the most valuable waiting gift first, so a burst never piles up.
// When the stream ends it waits for the same creator's next stream and follows it.

import { Live, readToken, tokenExpired } from "./client.js";
import { alertFrom, ComboTracker, comboIdOf, poolGiftEvent, Spotlight } from "./gifts.js";
import { $, api } from "./ui.js";

const FOLLOW_EVERY_MS = 10000;
const token = readToken();
let room = decodeURIComponent(location.pathname.split("/")[2] || "");
let creator = null;
const catalog = new Map();
const combos = new ComboTracker();
const spotlight = new Spotlight($("#alerts"), {
  className: "alert",
  reducedMotion: matchMedia("(prefers-reduced-motion: reduce)").matches,
});

function status(text, kind = "warn") {
  const node = $("#overlay-status");
  node.hidden = !text;
  node.textContent = text || "";
  node.className = `overlay-status ${kind}`;
}

async function loadCatalog() {
  try {
    for (const gift of (await api("/v1/catalog/gifts")).gifts) catalog.set(gift.id, gift);
  } catch { /* alerts fall back to the gift id and a generic icon */ }
}

/** After the stream ends, follow the same creator's next live room. */
async function followCreator(live) {
  while (true) {
    await new Promise((r) => setTimeout(r, FOLLOW_EVERY_MS));
    try {
      const next = (await api(`/v1/creators/${encodeURIComponent(creator)}/live`)).room;
      if (next && next.room !== room) {
        live.leave(room);
        room = next.room;
        live.join(room);
        status("");
        return;
      }
    } catch { /* try again */ }
  }
}

async function main() {
  if (!token || tokenExpired(token)) {
    status(!token ? "Overlay: add #token=... from the creator studio to this URL." : "Overlay: sign-in expired; copy a fresh overlay link from the studio.", "error");
    return;
  }
  await loadCatalog();
  const live = new Live(token);
  let waiting = false;
  live.addEventListener("status", (e) => {
    const { state } = e.detail;
    if (state === "open") status(waiting ? "Stream ended: waiting for the next one" : "");
    else if (state === "reconnecting") status("Reconnecting…");
    else if (state === "unauthorized") status("Overlay: sign-in expired or invalid; copy a fresh overlay link from the studio.", "error");
  });
  live.addEventListener("joined", (e) => {
    creator = e.detail.message.creator;
    if (e.detail.message.status !== "live" && !waiting) { waiting = true; status("Stream ended: waiting for the next one"); followCreator(live).then(() => { waiting = false; }); }
  });
  live.addEventListener("events", (e) => {
    if (e.detail.room !== room) return;
    for (const event of e.detail.events) {
      if (event.kind === "gift") spotlight.add(alertFrom(event, combos.track(event), catalog));
      else if (event.kind === "pool_completed") {
        const gift = poolGiftEvent(event);
        spotlight.add(alertFrom(gift, combos.track(gift), catalog));
      }
      else if (event.kind === "combo_end" && comboIdOf(event)) combos.end(comboIdOf(event));
      else if (event.kind === "room_ended" && !waiting) {
        waiting = true;
        status("Stream ended: waiting for the next one");
        followCreator(live).then(() => { waiting = false; });
      }
    }
  });
  live.addEventListener("room_error", (e) => status(`Overlay: ${e.detail.message}`, "error"));
  live.join(room);
  live.start();
}

main();
