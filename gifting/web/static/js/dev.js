// The dev-only page (/dev): mints demo tokens with GET /dev/token and lists ready-to-open page links.

import { withToken } from "./client.js";
import { $, api, el, explain } from "./ui.js";

const DEMO = [
  { user: "demo_creator", role: "creator", name: "Demo Creator" },
  { user: "demo_viewer1", role: "viewer", name: "Demo Viewer 1" },
  { user: "demo_viewer2", role: "viewer", name: "Demo Viewer 2" },
];

async function mint({ user, role, name }) {
  const query = new URLSearchParams({ user, role, name });
  const token = (await api(`/dev/token?${query}`)).token;
  // An overlay link carries a read-only overlay token, never the creator's own (POST /v1/overlay-tokens).
  const overlay = role === "viewer" || role === "brand" ? null : (await api("/v1/overlay-tokens", { method: "POST", token })).token;
  return { token, overlay };
}

function links(who, { token, overlay }, rooms) {
  const items = [el("a", { href: withToken("/", token) }, `${who.name}: lobby`)];
  if (who.role === "brand") items.push(el("a", { href: withToken("/brand", token) }, `${who.name}: sponsored-gift campaigns`));
  else if (who.role !== "viewer") items.push(el("a", { href: withToken("/studio", token) }, `${who.name}: creator studio`));
  for (const room of rooms) {
    items.push(el("a", { href: withToken(`/watch/${encodeURIComponent(room.room)}`, token) }, `${who.name}: watch “${room.title}”`));
    if (room.creator === who.user) items.push(el("a", { href: withToken(`/overlay/${encodeURIComponent(room.room)}`, overlay) }, `${who.name}: overlay for “${room.title}”`));
  }
  return items.map((a) => el("li", {}, a));
}

async function main() {
  let rooms = [];
  try { rooms = (await api("/v1/rooms")).rooms.slice(0, 3); } catch { /* links to rooms are optional */ }
  const quick = $("#quick");
  try {
    const items = [];
    for (const who of DEMO) items.push(...links(who, await mint(who), rooms));
    quick.replaceChildren(...items);
  } catch (err) {
    quick.replaceChildren(el("li.error", {}, `Couldn't mint tokens: ${explain(err)}`));
  }
  $("#custom").addEventListener("submit", async (event) => {
    event.preventDefault();
    const who = { user: $("#user").value.trim(), role: $("#role").value, name: $("#name").value.trim() || $("#user").value.trim() };
    const msg = $("#custom-msg");
    msg.className = "form-msg";
    try {
      $("#custom-links").replaceChildren(...links(who, await mint(who), rooms));
      msg.textContent = "";
    } catch (err) {
      msg.className = "form-msg error";
      msg.textContent = explain(err);
    }
  });
}

main();
