// The studio's premium stream and fan club (gifting/perks.py, gifting/fanclubs.py): mark the live stream
// premium with a ticket price, choose the club's membership gift and member perks, see the members and levels.

import { readToken } from "./client.js";
import { $, api, el, explain, fmt, whoAmI } from "./ui.js";

const token = readToken();
const me = whoAmI(token)?.sub ?? null;

async function liveRoom() {
  const data = await api(`/v1/creators/${encodeURIComponent(me)}/live`, { token });
  return data?.room?.room ?? data?.room ?? null;
}

async function setPremium(event) {
  event.preventDefault();
  const msg = $("#premium-msg");
  try {
    const room = await liveRoom();
    if (!room) { msg.textContent = "Go live first."; return; }
    const coins = Number($("#premium-coins").value);
    const result = await api(`/v1/rooms/${encodeURIComponent(room)}/premium`, { method: "POST", token, body: { coins } });
    msg.textContent = `Premium: ${fmt(result.premium_coins)} coins per ticket.`;
  } catch (err) {
    msg.textContent = explain(err);
  }
}

async function saveClub(event) {
  event.preventDefault();
  const body = {
    membership_gift: $("#club-gift").value,
    member_gift: $("#club-member-gift").value || null,
    free_premium: $("#club-free").checked,
  };
  try {
    await api("/v1/fanclub", { method: "PUT", token, body });
    $("#club-msg").textContent = "Fan club saved.";
  } catch (err) {
    $("#club-msg").textContent = explain(err);
  }
}

async function loadMembers() {
  const data = await api("/v1/fanclub/members", { token });
  const rows = data.members.map((m) => el("tr", { dataset: { user: m.user } },
    el("td", {}, m.name || m.user), el("td.num", {}, fmt(m.level)), el("td.num", {}, fmt(m.points)), el("td", {}, m.status)));
  $("#members").replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td.muted", { colspan: 4 }, "No members yet."))]));
  return data.config;
}

async function main() {
  if (!me) return;
  $("#premium-form").addEventListener("submit", setPremium);
  $("#club-form").addEventListener("submit", saveClub);
  $("#members-refresh").addEventListener("click", () => loadMembers().catch((err) => { $("#club-msg").textContent = explain(err); }));
  try {
    const { gifts } = await api("/v1/catalog/gifts");
    const options = () => gifts.map((g) => el("option", { value: g.id }, `${g.name} (${fmt(g.coins)})`));
    $("#club-gift").replaceChildren(...options());
    $("#club-member-gift").replaceChildren(el("option", { value: "" }, "None"), ...options());
    const config = await loadMembers();
    if (config) {
      $("#club-gift").value = config.membership_gift;
      $("#club-member-gift").value = config.member_gift || "";
      $("#club-free").checked = config.free_premium;
    }
  } catch (err) {
    $("#club-msg").textContent = explain(err);
  }
}

main();
