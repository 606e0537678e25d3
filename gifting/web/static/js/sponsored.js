// Sponsored gifts on the watch page: the campaigns a viewer of this room can send now, free (a brand's budget
// pays: docs/PROTOCOL.md, "Sponsored gifts"), and the "sponsored by" chip on a sponsored gift in the feed.

import { api, el, explain, fmt, giftIcon, reasonText, toast } from "./ui.js";

const REFRESH_MS = 30_000;
// A campaign that can no longer pay: its button goes until the list is read again.
const GONE = new Set(["budget_exhausted", "campaign_ended", "unknown_campaign", "campaign_not_targeted"]);
const REASONS = {
  budget_exhausted: "The sponsor's budget ran out: this free gift is gone.",
  campaign_ended: "This free gift's campaign has ended.",
  campaign_not_started: "This free gift is not available yet.",
  campaign_not_targeted: "This free gift is not offered in this stream.",
  sponsor_viewer_limit: "You've sent this free gift as often as allowed today.",
  sponsor_room_limit: "This stream has received this free gift as often as allowed.",
  sponsor_self: "A brand can't send its own free gift.",
};

/** "sponsored by BRAND" on a gift a campaign paid for (null for any other). */
export function sponsorChip(event) {
  return event.sponsor ? el("span.sponsor-chip", {}, `sponsored by ${event.sponsor}`) : null;
}

/** Show the room's free gifts under the gift grid and send them over `live` with their campaign. */
export function mountSponsored({ room, token, live, catalog, canSend }) {
  const box = document.querySelector("#sponsored");
  const list = document.querySelector("#sponsored-list");
  if (!box || !list) return;

  async function load() {
    let campaigns = [];
    try {
      campaigns = (await api(`/v1/rooms/${encodeURIComponent(room)}/campaigns`, { token })).campaigns || [];
    } catch (err) {
      console.warn(`sponsored gifts: ${explain(err)}`);
    }
    list.replaceChildren(...campaigns.map(button));
    box.hidden = campaigns.length === 0;
  }

  function button(campaign) {
    const gift = catalog.get(campaign.gift) || { id: campaign.gift, name: campaign.gift, asset: "gift.svg", coins: 0 };
    const node = el("button.sponsored-gift", {
      type: "button",
      dataset: { campaign: campaign.id, gift: campaign.gift },
      title: `${gift.name}, free: ${campaign.sponsored_by} pays ${fmt(gift.coins)} coins`,
      onclick: () => send(campaign, gift, node),
    },
    giftIcon(gift),
    el("span.gift-name", {}, gift.name),
    el("span.free-chip", {}, "Free"),
    el("span.sponsor-chip", {}, `sponsored by ${campaign.sponsored_by}`));
    return node;
  }

  async function send(campaign, gift, node) {
    if (!canSend()) return;
    node.disabled = true;
    const { result } = live.sendGift(room, campaign.gift, 1, undefined, undefined, campaign.id);
    const answer = await result;
    node.disabled = false;
    if (answer.status === "settled") {
      toast(`${gift.name} sent free, sponsored by ${campaign.sponsored_by}`, "ok");
      return;
    }
    toast(`${gift.name}: ${REASONS[answer.reason] || reasonText(answer.reason, answer.message)}`, "error");
    if (GONE.has(answer.reason)) node.remove();
    box.hidden = list.children.length === 0;
  }

  load();
  setInterval(load, REFRESH_MS);
}
