// The brand page (/brand): a brand's coins, a form for a new sponsored-gift campaign (funded from its coins),
// and each campaign with its report (sends, coins spent, creators reached, impressions, budget left).

import { readToken, tokenExpired, uuid, withToken } from "./client.js";
import { $, api, banner, clock, el, explain, fmt, signInBanner, toast, whoAmI } from "./ui.js";

const REFRESH_MS = 5000;
const token = readToken();
const claims = whoAmI(token);
const state = { catalog: new Map() };
$("#home-link").href = withToken("/", token);

async function refreshWallet() {
  const wallet = await api("/v1/wallet", { token });
  $("#balance").textContent = fmt(wallet.coins);
}

async function loadCatalog() {
  const [gifts, bundles] = await Promise.all([api("/v1/catalog/gifts"), api("/v1/catalog/bundles")]);
  state.catalog = new Map(gifts.gifts.map((g) => [g.id, g]));
  $("#c-gift").replaceChildren(...gifts.gifts.map((g) => el("option", { value: g.id }, `${g.name} (${fmt(g.coins)} coins)`)));
  $("#bundle").replaceChildren(...bundles.bundles.map((b) => el("option", { value: b.id }, `${fmt(b.coins)} coins`)));
}

async function buy(event) {
  event.preventDefault();
  const msg = $("#buy-msg");
  try {
    await api("/v1/wallet/purchases", {
      method: "POST", token, idempotencyKey: uuid(),
      body: { bundle_id: $("#bundle").value, payment_token: "tok_sandbox_ok" },
    });
    msg.textContent = "Coins added.";
    await refreshWallet();
  } catch (err) {
    msg.textContent = explain(err);
  }
}

async function create(event) {
  event.preventDefault();
  const form = new FormData(event.target);
  const msg = $("#create-msg");
  const creators = String(form.get("creators") || "").split(",").map((s) => s.trim()).filter(Boolean);
  const body = {
    name: form.get("name"), gift: form.get("gift"), creators,
    end_ms: Date.now() + Number(form.get("hours")) * 3600_000,
    viewer_day_max: Number(form.get("viewer_day_max")), room_max: Number(form.get("room_max")),
  };
  try {
    const { campaign } = await api("/v1/campaigns", { method: "POST", token, body });
    const budget = Number(form.get("budget"));
    if (budget > 0) {
      await api(`/v1/campaigns/${campaign.id}/fund`, { method: "POST", token, idempotencyKey: uuid(), body: { coins: budget } });
    }
    msg.textContent = `Campaign "${campaign.name}" created.`;
    event.target.reset();
    await Promise.all([refreshWallet(), loadCampaigns()]);
  } catch (err) {
    msg.textContent = explain(err);
  }
}

async function fund(campaign, input) {
  const coins = Number(input.value);
  if (!(coins > 0)) return;
  try {
    await api(`/v1/campaigns/${campaign.id}/fund`, { method: "POST", token, idempotencyKey: uuid(), body: { coins } });
    toast(`${fmt(coins)} coins added to "${campaign.name}"`, "ok");
    await Promise.all([refreshWallet(), loadCampaigns()]);
  } catch (err) {
    toast(explain(err), "error");
  }
}

async function end(campaign) {
  try {
    const { returned } = await api(`/v1/campaigns/${campaign.id}/end`, { method: "POST", token });
    toast(`"${campaign.name}" ended; ${fmt(returned)} coins came back`, "ok");
    await Promise.all([refreshWallet(), loadCampaigns()]);
  } catch (err) {
    toast(explain(err), "error");
  }
}

function figure(label, value, name) {
  return el("div", { dataset: { figure: name } }, el("strong", {}, fmt(value)), el("span.muted.small", {}, label));
}

function campaignItem(c) {
  const gift = state.catalog.get(c.gift);
  const r = c.report;
  const amount = el("input", { type: "number", min: "1", value: "100", "aria-label": `Coins to add to ${c.name}` });
  const active = c.status === "active";
  return el("li.card", { dataset: { campaign: c.id, status: c.status } },
    el("h3", {}, c.name, " ", el("span.badge", { dataset: { state: active ? "live" : "ended" } }, active ? "running" : "ended")),
    el("p.muted.small", {}, `${gift?.name || c.gift} · sponsored by ${c.sponsored_by} · until ${new Date(c.end_ms).toLocaleDateString()} ${clock(c.end_ms)}`,
      c.creators.length ? ` · only ${c.creators.join(", ")}` : " · every stream"),
    el("div.campaign-report", {},
      figure("sends", r.sends, "sends"), figure("coins spent", r.spent, "spent"),
      figure("creators reached", r.creators_reached, "creators"), figure("impressions", r.impressions, "impressions"),
      figure("budget left", r.budget_left, "budget"), figure("returned", r.returned, "returned")),
    active ? el("div.row", {}, amount, el("button", { type: "button", onclick: () => fund(c, amount) }, "Add coins"),
      el("button", { type: "button", onclick: () => end(c) }, "End now")) : null,
  );
}

async function loadCampaigns() {
  const { campaigns } = await api("/v1/campaigns", { token });
  $("#campaigns").replaceChildren(...campaigns.map(campaignItem));
  $("#campaigns-empty").hidden = campaigns.length > 0;
}

async function main() {
  if (!token || tokenExpired(token)) {
    signInBanner(token, token ? "token_expired" : null);
    return;
  }
  if (claims?.role !== "brand") {
    banner("This page is for brands: sign in with a brand account.", "error");
    return;
  }
  $("#buy-form").addEventListener("submit", buy);
  $("#create-form").addEventListener("submit", create);
  try {
    await Promise.all([loadCatalog(), refreshWallet(), loadCampaigns()]);
  } catch (err) {
    banner(`Can't reach the server: ${explain(err)}`, "warn");
  }
  setInterval(() => loadCampaigns().catch(() => {}), REFRESH_MS);
}

main();
