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

const match = { id: null, a: "", b: "", points: [0, 0], ended: false };

/** The score bar: a match this room plays (match_started / match_score / match_ended, in either order). */
function matchEvent(event) {
  if (event.kind === "match_score") {
    if (event.match !== match.id || match.ended) return;
    match.points = [Math.max(match.points[0], event.points_a), Math.max(match.points[1], event.points_b)];
  } else {
    const m = event.match;
    if (m.id !== match.id) Object.assign(match, { id: m.id, points: [0, 0], ended: false });
    const points = m.result?.points ?? { a: m.a.points, b: m.b.points };
    Object.assign(match, { a: m.a.creator, b: m.b.creator, ended: !!m.result });
    match.points = [Math.max(match.points[0], points.a), Math.max(match.points[1], points.b)];
  }
  const [a, b] = match.points;
  $("#match-bar").hidden = false;
  $("#bar-a").textContent = `${match.a} ${a}`;
  $("#bar-b").textContent = `${b} ${match.b}`;
  $("#match-bar .bar-a").style.flexGrow = String(a + b ? a : 1);
  $("#match-bar .bar-b").style.flexGrow = String(a + b ? b : 1);
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
      else if (["match_started", "match_score", "match_ended"].includes(event.kind)) matchEvent(event);
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
