// The lobby (/): the live rooms, each with a link to its watch page.

import { readToken, tokenClaims, withToken } from "./client.js";
import { $, api, banner, devMode, el, explain, liveFor, whoAmI } from "./ui.js";

const REFRESH_MS = 10000;
const PAGE_ROOMS = 50; // GET /v1/rooms pages (server maximum 100)
let shown = []; // rooms on screen: the first page, and more pages the viewer asked for
let nextCursor = null;
const token = readToken();
const claims = whoAmI(token);

const GRADIENTS = [
  ["#3a1c4d", "#c8174a"], ["#10324a", "#2a9d8f"], ["#3d2a0c", "#e76f51"], ["#1d2452", "#7b5cff"], ["#0f3d2e", "#5fd08d"],
];

function thumb(room, index) {
  const [from, to] = GRADIENTS[index % GRADIENTS.length];
  const node = el("div.room-thumb", { "aria-hidden": "true" },
    el("span.badge", { dataset: { state: "live" } }, "LIVE"),
    el("span.avatar.big", {}, (room.creator_name || room.creator || "?").slice(0, 1).toUpperCase()));
  node.style.background = `linear-gradient(135deg, ${from}, ${to})`;
  return node;
}

function render(rooms) {
  const list = $("#rooms");
  list.replaceChildren(...rooms.map((room, index) => el("li.room-card", { dataset: { room: room.room } },
    thumb(room, index),
    el("div.room-body", {},
      el("h2", {}, room.title),
      el("p.muted.small", {}, `${room.creator_name || room.creator} · ${liveFor(room.started_at_ms)}`),
      el("a.button.primary", { href: withToken(`/watch/${encodeURIComponent(room.room)}`, token), "aria-label": `Watch ${room.title}` }, "Watch")),
  )));
  $("#empty").hidden = rooms.length > 0;
  $("#more").hidden = !nextCursor;
  $("#rooms-status").textContent = rooms.length
    ? `${rooms.length}${nextCursor ? "+" : ""} stream${rooms.length === 1 ? "" : "s"} live · updated ${new Date().toLocaleTimeString()}`
    : "Nobody is live.";
}

/** The first page again; the periodic refresh leaves a viewer who paged further alone. */
async function refresh(periodic = false) {
  if (periodic === true && shown.length > PAGE_ROOMS) return;
  try {
    const data = await api(`/v1/rooms?limit=${PAGE_ROOMS}`);
    shown = data.rooms;
    nextCursor = data.next_cursor;
    render(shown);
    banner("");
  } catch (err) {
    $("#rooms-status").textContent = "Couldn't load the live streams.";
    banner(`${explain(err)} Retrying every ${REFRESH_MS / 1000} s.`, "warn");
  }
}

async function more() {
  if (!nextCursor) return;
  try {
    const data = await api(`/v1/rooms?limit=${PAGE_ROOMS}&cursor=${encodeURIComponent(nextCursor)}`);
    const seen = new Set(shown.map((r) => r.room));
    shown = shown.concat(data.rooms.filter((r) => !seen.has(r.room)));
    nextCursor = data.next_cursor;
    render(shown);
  } catch (err) {
    banner(`Couldn't load more streams: ${explain(err)}`, "warn");
  }
}

async function main() {
  if (claims && ["creator", "admin"].includes(tokenClaims(token)?.role)) {
    const link = $("#studio-link");
    link.hidden = false;
    link.href = withToken("/studio", token);
  }
  if (await devMode()) $("#dev-link").hidden = false;
  $("#refresh").addEventListener("click", () => refresh());
  $("#more").addEventListener("click", more);
  await refresh();
  setInterval(() => refresh(true), REFRESH_MS);
}

main();
