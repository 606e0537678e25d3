// The watch page (/watch/{room}): the room's live state, the viewer's coins, the gift panel, gift animations
// over the stream, top gifters, the goal, group-gift pools, and the buy-coins dialog.

import { Live, readToken, tokenExpired, uuid, withToken } from "./client.js";
import { COMBO_WINDOW_MS, GiftStage, poolGiftEvent } from "./gifts.js";
import { RewardsPanel } from "./rewards.js";
import { mountSponsored, sponsorChip } from "./sponsored.js";
import { PerksPanel, fanBadge, onTicketRequired } from "./perks.js";
import {
  $, api, ApiError, banner, clock, compact, connectionIndicator, duration, el, explain, fmt, giftIcon, levelBadge,
  money, reasonText, signInBanner, toast, whoAmI,
} from "./ui.js";

const RECENT_MAX = 50;
const room = decodeURIComponent(location.pathname.split("/")[2] || "");
const token = readToken();
const claims = whoAmI(token);
const me = claims?.sub ?? null;
const reducedMotion = matchMedia("(prefers-reduced-motion: reduce)").matches;

const state = {
  status: "loading", // loading | live | ended | missing
  balance: null,
  rewardCoins: 0, // reward coins pay a whole gift they cover, before bought coins (docs/REWARDS.md)
  rewards: null,
  pendingCost: 0,
  gifts: [],
  catalog: new Map(),
  bundles: [],
  live: null,
  signedIn: !!token && !tokenExpired(token),
  pools: new Map(), // id -> {pool, node, ended}
  buyKey: null,
  taps: new Map(), // gift id -> {count, timer}
  match: null, // the match this room plays in: {id, a, b, end_ms, result, points: {a, b}, offset}
  host: null,
  guests: [], // who is on stage besides the host: valid gift recipients
};

let stage;
const perks = new PerksPanel(room, token, (coins) => setBalance(coins));
$("#home-link").href = withToken("/", token);

// Room header -------------------------------------------------------------------------------------------

function setRoom(info) {
  if (info.title) {
    $("#room-title").textContent = info.title;
    document.title = `${info.title} · gifting`;
  }
  const creator = info.creator_name || info.creator;
  if (creator) $("#stage-creator").replaceChildren(el("span.avatar.big", { "aria-hidden": "true" }, creator.slice(0, 1).toUpperCase()), el("span", {}, creator));
  if (info.status) setStatus(info.status === "live" ? "live" : "ended");
}

function setStatus(status) {
  state.status = status;
  const badge = $("#room-state");
  badge.dataset.state = status;
  badge.textContent = { live: "LIVE", ended: "Ended", missing: "Not found", loading: "…" }[status] || status;
  document.body.dataset.room = status;
  if (status === "ended") $("#stage").classList.add("ended");
  updateGifts();
}

function setViewers(count) {
  const node = $("#viewers");
  node.hidden = false;
  node.textContent = `${count >= 1000 ? "~" : ""}${compact(count)} watching`;
  node.setAttribute("aria-label", `about ${fmt(count)} viewers`);
}

// Coins -------------------------------------------------------------------------------------------------

function setBalance(coins, debt) {
  state.balance = coins;
  const node = $("#balance");
  node.textContent = fmt(Math.max(0, coins));
  node.dataset.coins = String(coins);
  $("#buy-balance").textContent = fmt(Math.max(0, coins));
  const owed = debt ?? (coins < 0 ? -coins : 0);
  const debtNode = $("#debt");
  debtNode.hidden = owed <= 0;
  debtNode.textContent = owed > 0 ? `You owe ${fmt(owed)} coins from a reversed purchase; buying coins repays it first.` : "";
  updateGifts();
}

async function refreshWallet() {
  if (!state.signedIn) return;
  try {
    const wallet = await api("/v1/wallet", { token });
    setBalance(wallet.coins, wallet.debt_coins);
  } catch (err) {
    if (err instanceof ApiError && err.authFailed) signOut(err.code);
    else toast(`Couldn't load your coins: ${explain(err)}`, "error");
  }
}

function signOut(code) {
  state.signedIn = false;
  signInBanner(token, code);
  updateGifts();
}

// Gift panel --------------------------------------------------------------------------------------------

function renderGiftGrid() {
  const grid = $("#gift-grid");
  grid.replaceChildren(...state.gifts.map((gift) => {
    const button = el("button.gift", {
      type: "button", dataset: { gift: gift.id, price: gift.coins, tier: gift.tier },
      onclick: () => sendGift(gift),
    },
      giftIcon(gift),
      el("span.gift-name", {}, gift.name),
      el("span.gift-price", {}, el("img", { src: "/static/icons/coin.svg", alt: "", width: 14, height: 14 }), fmt(gift.coins)),
      el("span.tap-combo", { "aria-hidden": "true" }),
    );
    return button;
  }));
  const select = $("#pool-gift");
  select.replaceChildren(...state.gifts.filter((g) => g.coins >= 500).map((g) => el("option", { value: g.id }, `${g.name} (${fmt(g.coins)} coins)`)));
  updateGifts();
}

function updateGifts() {
  const available = (state.balance ?? 0) - state.pendingCost;
  const canSend = state.signedIn && state.status === "live" && state.balance !== null;
  for (const button of document.querySelectorAll("#gift-grid .gift")) {
    const price = Number(button.dataset.price);
    const affordable = available >= price || state.rewardCoins >= price;
    button.disabled = !canSend || !affordable;
    button.classList.toggle("unaffordable", canSend && !affordable);
    const name = button.querySelector(".gift-name").textContent;
    button.setAttribute("aria-label", `Send ${name}, ${fmt(price)} coin${price === 1 ? "" : "s"}${canSend && !affordable ? " (not enough coins)" : ""}`);
  }
  const hint = $("#gift-hint");
  hint.hidden = false;
  if (!state.signedIn) hint.textContent = "Sign in to send gifts.";
  else if (state.status === "ended") hint.textContent = "The stream has ended.";
  else if (state.balance !== null && Math.max(available, state.rewardCoins) < (state.gifts[0]?.coins ?? 1)) hint.textContent = "You're out of coins: buy coins to send gifts.";
  else hint.hidden = true;
}

function tapCombo(giftId) {
  const button = document.querySelector(`#gift-grid .gift[data-gift="${CSS.escape(giftId)}"]`);
  if (!button) return;
  const tap = state.taps.get(giftId) || { count: 0, timer: null };
  tap.count += 1;
  clearTimeout(tap.timer);
  tap.timer = setTimeout(() => { state.taps.delete(giftId); button.querySelector(".tap-combo").textContent = ""; }, COMBO_WINDOW_MS);
  state.taps.set(giftId, tap);
  const badge = button.querySelector(".tap-combo");
  badge.textContent = tap.count > 1 ? `x${tap.count}` : "";
  badge.classList.remove("bump");
  void badge.offsetWidth;
  badge.classList.add("bump");
}

async function sendGift(gift) {
  if (!state.live || state.status !== "live" || !state.signedIn) return;
  state.pendingCost += gift.coins;
  tapCombo(gift.id);
  updateGifts();
  const to = $("#recipient").value || undefined;
  const { result } = state.live.sendGift(room, gift.id, 1, gift.coins, to);
  const answer = await result;
  state.pendingCost -= gift.coins;
  if (typeof answer.coins === "number") setBalance(answer.coins);
  if (answer.status === "settled") state.rewards?.refresh();
  if (answer.status !== "settled") {
    toast(`${gift.name}: ${reasonText(answer.reason, answer.message)}`, "error");
    if (["price_changed", "unknown_gift", "gift_retired"].includes(answer.reason)) loadCatalog();
    if (answer.reason === "insufficient_coins" || answer.reason === "daily_limit") refreshWallet();
    if (answer.reason === "room_not_live") setStatus("ended");
  }
  updateGifts();
}

async function loadCatalog() {
  const data = await api("/v1/catalog/gifts");
  state.gifts = data.gifts;
  state.catalog = new Map(data.gifts.map((g) => [g.id, g]));
  if (stage) stage.catalog = state.catalog;
  renderGiftGrid();
}

// Room events -------------------------------------------------------------------------------------------

function giftName(id) {
  return state.catalog.get(id)?.name || id;
}

/** Recent gifts are drawn once per frame, newest first, at most RECENT_MAX rows (busy rooms stay smooth). */
const recentQueue = [];
let recentFrame = 0;

function addRecent(event, combo) {
  recentQueue.push(recentItem(event, combo));
  if (recentQueue.length > RECENT_MAX) recentQueue.splice(0, recentQueue.length - RECENT_MAX);
  recentFrame ||= requestAnimationFrame(flushRecent);
}

function flushRecent() {
  recentFrame = 0;
  const list = $("#recent");
  const fragment = document.createDocumentFragment();
  for (let i = recentQueue.length - 1; i >= 0; i--) {
    const item = recentQueue[i];
    // A merged entry names every gift it stands for (`gift_ids`): one already in the list is not shown again.
    const ids = (item.dataset.giftIds || "").split(" ").filter(Boolean);
    if (ids.some((id) => list.querySelector(`[data-gift-ids~="${CSS.escape(id)}"]`))) continue; // shown already
    fragment.append(item);
  }
  recentQueue.length = 0;
  list.prepend(fragment);
  while (list.children.length > RECENT_MAX) list.lastElementChild.remove();
  $("#recent-empty").hidden = list.children.length > 0;
}

function recentItem(event, combo) {
  if (event.kind === "tick_summary") {
    return el("li.more.muted", {}, `+${fmt(event.gifts)} more gifts (${fmt(event.coins || 0)} coins)`);
  }
  const gift = state.catalog.get(event.gift) || { asset: "gift.svg" };
  const giftIds = (event.gift_ids || [event.gift_id || ""]).join(" ");
  const item = el("li", { dataset: { giftId: event.gift_id || "", giftIds, offset: event.offset ?? "" } },
    giftIcon(gift, "mini-icon"),
    el("span", {}, el("strong", {}, event.sender_name || event.sender), fanBadge(event), ` sent ${giftName(event.gift)}`, event.count > 1 ? ` ×${fmt(event.count)}` : ""),
    combo && combo.count > 1 ? el("span.combo-chip", {}, `x${fmt(combo.count)}`) : null,
    sponsorChip(event),
    event.ts ? el("time.muted.small", { datetime: new Date(event.ts).toISOString() }, clock(event.ts)) : null,
  );
  if (event.sender === me) item.classList.add("mine");
  return item;
}

/** A busy room: gifts that did not fit in this tick's frame, counted. */
function addMore(event) {
  if (event.gifts) addRecent(event, null);
}

function handle(event, animate) {
  switch (event.kind) {
    case "gift": {
      const combo = animate && stage ? stage.gift(event) : null;
      addRecent(event, combo);
      break;
    }
    case "combo_end": if (stage) stage.comboEnd(event); break;
    case "room_ended": setStatus("ended"); break;
    case "goal_progress": renderGoal(event.goal, false); break;
    case "goal_completed": renderGoal(event.goal, true); break;
    case "pool_progress": upsertPool(event.pool, "open"); break;
    case "pool_completed":
      upsertPool(event.pool, "completed");
      handle(poolGiftEvent(event), animate);
      break;
    case "pool_expired": upsertPool(event.pool, "expired"); break;
    case "pool_cancelled": upsertPool(event.pool, "cancelled"); break;
    case "pool_voided": upsertPool(event.pool, "voided"); break;
    case "leaderboard": renderTop(event.top); break;
    case "viewers": if (typeof event.count === "number") setViewers(event.count); break;
    case "stream_summary": renderSummary(event.summary); break;
    case "tick_summary": addMore(event); break;
    case "match_started": renderMatch(event.match); break;
    case "match_ended": renderMatch(event.match); break;
    case "match_score": scoreMatch(event); break;
    case "stage": renderStage(event.guests); break;
    case "highlight": case "entrance": perks.handle(event); break;
    default: break; // kinds this page does not know yet
  }
}

// Match (score bar, countdown, result with MVPs) and the stage's recipient picker -------------------------

function renderMatch(match) {
  if (!match || !match.a || !match.b) return;
  const points = match.result?.points ?? { a: match.a.points, b: match.b.points };
  const known = state.match?.id === match.id ? state.match.points : { a: 0, b: 0 };
  state.match = { ...match, points: { a: Math.max(points.a, known.a), b: Math.max(points.b, known.b) } };
  drawMatch();
}

function scoreMatch(event) {
  if (!state.match || state.match.id !== event.match || state.match.result) return;
  state.match.points = { a: Math.max(event.points_a, state.match.points.a), b: Math.max(event.points_b, state.match.points.b) };
  drawMatch();
}

function mvpList(mvps) {
  return el("ol.top-list", {}, ...(mvps || []).map((m) => el("li", {}, el("span.top-name", {}, m.name || m.user), el("span.muted", {}, ` ${fmt(m.coins)}`))));
}

function drawMatch() {
  const match = state.match;
  const { a, b } = match.points;
  const bar = el("div.score-bar", { role: "img", "aria-label": `Score ${a} to ${b}` }, el("div.side-a"), el("div.side-b"));
  bar.children[0].style.flexGrow = String(a + b ? a : 1);
  bar.children[1].style.flexGrow = String(a + b ? b : 1);
  const parts = [
    el("p.score-sides", {}, el("span", { id: "score-a" }, `${match.a.creator} ${fmt(a)}`), el("span", { id: "score-b" }, `${fmt(b)} ${match.b.creator}`)),
    bar,
  ];
  const result = match.result;
  if (result) {
    const winner = result.winner ? match[result.winner].creator : null;
    const how = result.forfeit ? " (forfeit)" : "";
    parts.push(el("p.match-result", { id: "match-result" }, el("strong", {}, winner ? `${winner} wins${how}` : "Draw")),
      el("div.match-mvps", {}, el("div", {}, el("p.small", {}, "MVPs"), mvpList(result.mvps?.a)),
        el("div", {}, el("p.small", {}, "MVPs"), mvpList(result.mvps?.b))));
  }
  $("#match-card").hidden = false;
  $("#match").replaceChildren(...parts);
  tickMatch();
}

function tickMatch() {
  const match = state.match;
  if (!match) return;
  const left = match.result ? 0 : Math.max(0, Math.ceil((match.end_ms - Date.now()) / 1000));
  $("#match-clock").textContent = match.result ? "ended" : `${Math.floor(left / 60)}:${String(left % 60).padStart(2, "0")}`;
}

async function loadMatchAndStage() {
  try {
    const stage = await api(`/v1/rooms/${encodeURIComponent(room)}/stage`);
    state.host = stage.host;
    renderStage(stage.guests);
  } catch { /* an older server: no stage, gifts go to the host */ }
}

function renderStage(guests) {
  if (!Array.isArray(guests)) return;
  state.guests = guests;
  const select = $("#recipient");
  const chosen = select.value;
  select.replaceChildren(el("option", { value: "" }, `${state.host || "Host"} (host)`),
    ...guests.map((g) => el("option", { value: g }, g)));
  if (guests.includes(chosen)) select.value = chosen;
  $("#recipient-row").hidden = guests.length === 0;
}

// Goal, top gifters, pools, summary (shown once the server sends them) -----------------------------------

function goalLabel(goal) {
  if (goal.kind === "gift") return `${fmt(goal.target)} × ${giftName(goal.gift)}`;
  return `${fmt(goal.target)} diamonds`;
}

function progressBar(value, max, label) {
  const pct = max > 0 ? Math.min(100, (100 * value) / max) : 0;
  const bar = el("div.bar");
  bar.style.width = `${pct}%`;
  return el("div.progress", { role: "progressbar", "aria-valuemin": 0, "aria-valuemax": max, "aria-valuenow": Math.min(value, max), "aria-label": label }, bar);
}

function hideGoal() {
  $("#goal-card").hidden = true;
  $("#goal-mini").hidden = true;
}

function renderGoal(goal, completed) {
  if (!goal || typeof goal.target !== "number") return;
  if (goal.status === "cancelled") { hideGoal(); return; }
  const done = completed || goal.progress >= goal.target;
  const gift = goal.kind === "gift" ? state.catalog.get(goal.gift) : null;
  $("#goal-card").hidden = false;
  $("#goal").replaceChildren(
    el("p.goal-line", {}, gift ? giftIcon(gift, "mini-icon") : el("img.mini-icon", { src: "/static/icons/diamond.svg", alt: "" }),
      el("span", {}, goalLabel(goal))),
    progressBar(goal.progress, goal.target, `Goal progress: ${fmt(goal.progress)} of ${fmt(goal.target)}`),
    el("p.small", {}, done ? el("strong.ok", {}, "Goal reached!") : `${fmt(goal.progress)} / ${fmt(goal.target)}`),
  );
  const mini = $("#goal-mini");
  mini.hidden = false;
  mini.replaceChildren(el("span", {}, done ? "Goal reached!" : `Goal: ${goalLabel(goal)}`),
    progressBar(goal.progress, goal.target, "Goal progress"));
}

function renderTop(top) {
  if (!Array.isArray(top)) return;
  $("#top-card").hidden = false;
  $("#top").replaceChildren(...top.map((entry, i) => el(`li${entry.user === me ? ".mine" : ""}`, {},
    el("span.rank", {}, String(i + 1)),
    el("span.top-name", {}, entry.name || entry.user), levelBadge(entry.level),
    el("span.top-coins", {}, el("img", { src: "/static/icons/coin.svg", alt: "", width: 14, height: 14 }), compact(entry.coins)),
  )));
  if (!top.length) $("#top").append(el("li.muted", {}, "No gifts yet."));
}

function upsertPool(pool, status) {
  if (!pool || !pool.id) return;
  let entry = state.pools.get(pool.id);
  if (!entry) {
    const coins = el("input", { type: "number", min: 1, step: 1, inputmode: "numeric", name: "coins", id: `pledge-${pool.id}`, value: 10 });
    const msg = el("p.form-msg", { role: "status" });
    const form = el("form.pledge", { onsubmit: (e) => { e.preventDefault(); pledge(pool.id, coins, msg); } },
      el("label.small", { for: coins.id }, "Coins"), coins, el("button", { type: "submit" }, "Pledge"));
    const node = el("li.pool", { dataset: { pool: pool.id } }, el("div.pool-head"), el("div.pool-bar"), el("p.pool-meta.small"), form, msg);
    entry = { pool, node, status };
    state.pools.set(pool.id, entry);
    $("#pools").append(node);
  }
  entry.pool = pool;
  entry.status = status;
  renderPool(entry);
  if (status !== "open") {
    clearTimeout(entry.removal);
    entry.removal = setTimeout(() => { entry.node.remove(); state.pools.delete(pool.id); }, 15000);
  }
}

function renderPool(entry) {
  const { pool, node, status } = entry;
  const gift = state.catalog.get(pool.gift) || { name: pool.gift, asset: "gift.svg" };
  node.dataset.status = status;
  node.querySelector(".pool-head").replaceChildren(giftIcon(gift, "mini-icon"), el("strong", {}, gift.name),
    el("span.muted.small", {}, ` ${fmt(pool.pledged)} / ${fmt(pool.price)} coins`));
  node.querySelector(".pool-bar").replaceChildren(progressBar(pool.pledged, pool.price, `${gift.name} pool: ${fmt(pool.pledged)} of ${fmt(pool.price)} coins`));
  const left = Math.max(0, (pool.deadline_ms - Date.now()) / 1000);
  const people = (pool.contributors || []).length;
  const meta = status === "completed" ? "Sent! Thanks to everyone who pledged."
    : status === "expired" ? "Time ran out; pledges were returned."
      : status === "cancelled" ? "Cancelled; pledges were returned."
        : status === "voided" ? "The stream ended; pledges were returned."
      : `${people} contributor${people === 1 ? "" : "s"} · ${duration(left)} left`;
  node.querySelector(".pool-meta").textContent = meta;
  const form = node.querySelector("form");
  form.hidden = status !== "open";
  for (const input of form.elements) input.disabled = !state.signedIn || state.status !== "live";
}

async function pledge(poolId, input, msg) {
  const coins = Number(input.value);
  msg.textContent = "Pledging…";
  msg.className = "form-msg";
  try {
    const answer = await api(`/v1/pools/${encodeURIComponent(poolId)}/pledges`, { method: "POST", token, body: { coins, pledge_id: uuid() } });
    if (answer?.status === "pending") {
      msg.textContent = "Pledge sent; waiting for it to settle…";
    } else {
      msg.textContent = `Pledged ${fmt(coins)} coins.`;
      msg.className = "form-msg ok";
    }
    if (answer?.pool) upsertPool(answer.pool, answer.pool.status && answer.pool.status !== "open" ? answer.pool.status : "open");
    if (typeof answer?.coins === "number") setBalance(answer.coins);
    else refreshWallet();
  } catch (err) {
    const reason = err instanceof ApiError && err.body?.reason;
    msg.textContent = `Couldn't pledge: ${reason ? reasonText(reason, err.message) : explain(err)}`;
    msg.className = "form-msg error";
  }
}

async function startPool(event) {
  event.preventDefault();
  const msg = $("#pool-msg");
  const gift = $("#pool-gift").value;
  const deadline = Number($("#pool-deadline").value);
  msg.textContent = "Starting…";
  msg.className = "form-msg";
  try {
    const answer = await api(`/v1/rooms/${encodeURIComponent(room)}/pools`, { method: "POST", token, body: { gift, deadline_s: deadline } });
    msg.textContent = "Pool started.";
    msg.className = "form-msg ok";
    if (answer?.pool || answer?.id) upsertPool(answer.pool || answer, "open");
  } catch (err) {
    msg.textContent = `Couldn't start the pool: ${explain(err)}`;
    msg.className = "form-msg error";
  }
}

function renderSummary(summary) {
  if (!summary) return;
  const node = el("div.stage-summary", {},
    el("h2", {}, "Stream ended"),
    el("p", {}, `${duration(summary.duration_s || 0)} · ${fmt(summary.gifts || 0)} gifts · ${fmt(summary.coins || 0)} coins`),
  );
  $("#stage .stage-summary")?.remove();
  $("#stage").append(node);
}

// Buy coins ---------------------------------------------------------------------------------------------

async function openBuy() {
  if (!state.signedIn) {
    signInBanner(token);
    toast("Sign in to buy coins.", "error");
    return;
  }
  const dialog = $("#buy-dialog");
  $("#buy-msg").textContent = "";
  dialog.showModal();
  if (!state.bundles.length) {
    try {
      state.bundles = (await api("/v1/catalog/bundles")).bundles;
    } catch (err) {
      $("#buy-msg").textContent = `Couldn't load the bundles: ${explain(err)}`;
      return;
    }
  }
  const fieldset = $("#bundles");
  fieldset.replaceChildren(el("legend", {}, "Choose a bundle"), ...state.bundles.map((b, i) => {
    const id = `bundle-${b.id}`;
    return el("div.bundle", {},
      el("input", { type: "radio", name: "bundle", id, value: b.id, checked: i === 1 || state.bundles.length === 1, onchange: () => { state.buyKey = null; } }),
      el("label", { for: id }, el("img", { src: "/static/icons/coin.svg", alt: "", width: 18, height: 18 }),
        el("strong", {}, fmt(b.coins)), " coins", el("span.price", {}, money(b.price_minor, b.currency))));
  }));
}

async function buy(event) {
  event.preventDefault(); // the form is method=dialog: do not close on submit
  const bundle = $("#bundles input[name=bundle]:checked")?.value;
  const msg = $("#buy-msg");
  if (!bundle) { msg.textContent = "Choose a bundle first."; return; }
  const paymentToken = $("#pay-method").value;
  // One key per purchase attempt: a retry after a network error cannot charge twice.
  const fingerprint = `${bundle}|${paymentToken}`;
  if (!state.buyKey || state.buyKey.fingerprint !== fingerprint) state.buyKey = { key: uuid(), fingerprint };
  const submit = $("#buy-submit");
  submit.disabled = true;
  msg.className = "form-msg";
  msg.textContent = "Paying…";
  try {
    const answer = await api("/v1/wallet/purchases", {
      method: "POST", token, idempotencyKey: state.buyKey.key, body: { bundle_id: bundle, payment_token: paymentToken },
    });
    state.buyKey = null;
    setBalance(answer.wallet.coins, answer.wallet.debt_coins);
    msg.className = "form-msg ok";
    msg.textContent = `Bought ${fmt(answer.purchase.coins)} coins. New balance: ${fmt(answer.wallet.coins)} coins.`;
  } catch (err) {
    if (!(err instanceof ApiError) || !err.unreachable) state.buyKey = null; // a final answer: next try is a new purchase
    msg.className = "form-msg error";
    msg.textContent = err.code === "payment_declined" ? "Your payment was declined. No coins were added." : `Couldn't buy coins: ${explain(err)}`;
    if (err instanceof ApiError && err.authFailed) signOut(err.code);
  } finally {
    submit.disabled = false;
  }
}

// Start -------------------------------------------------------------------------------------------------

function connect() {
  const live = new Live(token);
  state.live = live;
  connectionIndicator(live, (problem) => signOut(problem.code));
  live.addEventListener("joined", (e) => applyJoined(e.detail.message));
  live.addEventListener("snapshot", (e) => {
    if (e.detail.reset) {
      stage.clear();
      recentQueue.length = 0;
      $("#recent").replaceChildren();
    }
    for (const event of e.detail.events) handle(event, false);
  });
  live.addEventListener("events", (e) => { for (const event of e.detail.events) handle(event, true); });
  live.addEventListener("room_error", (e) => {
    if (e.detail.code === "room_not_found") notFound();
    else if (onTicketRequired(perks, e.detail.code)) return;
    else toast(`${e.detail.message} (${e.detail.code})`, "error");
  });
  live.addEventListener("error", (e) => toast(`${e.detail.message} (${e.detail.code})`, "error"));
  live.join(room);
  live.start();
  perks.start(live);
}

/** `joined` carries the room's live state (viewers, goal, top gifters, open pools) where the server has them. */
function applyJoined(message) {
  setRoom(message);
  perks.joined(message);
  if (typeof message.viewers === "number") setViewers(message.viewers);
  if (message.goal !== undefined) message.goal ? renderGoal(message.goal, message.goal.status === "completed") : hideGoal();
  if (Array.isArray(message.top)) renderTop(message.top);
  if (Array.isArray(message.pools)) for (const pool of message.pools) upsertPool(pool, pool.status === "open" || !pool.status ? "open" : pool.status);
}

function notFound() {
  setStatus("missing");
  $("#room-title").textContent = "Stream not found";
  banner("This stream doesn't exist (or its page expired).", "error", [el("a.button", { href: withToken("/", token) }, "See who's live")]);
}

async function loadLeaderboard() {
  try {
    const data = await api(`/v1/rooms/${encodeURIComponent(room)}/leaderboard`, { token });
    if (Array.isArray(data?.top)) renderTop(data.top);
  } catch { /* not available on this server yet: the card stays hidden until a leaderboard event */ }
}

async function loadRoom() {
  for (let attempt = 0; ; attempt++) {
    try {
      setRoom(await api(`/v1/rooms/${encodeURIComponent(room)}`));
      if (attempt) banner("");
      return true;
    } catch (err) {
      if (err instanceof ApiError && (err.status === 404 || err.status === 400)) { notFound(); return false; }
      banner(`Can't reach the server: ${explain(err)} Retrying…`, "warn");
      await new Promise((r) => setTimeout(r, Math.min(10000, 1000 * 2 ** attempt)));
    }
  }
}

async function main() {
  stage = new GiftStage($("#stage-fx"), state.catalog, { reducedMotion });
  $("#buy-open").addEventListener("click", openBuy);
  $("#buy-form").addEventListener("submit", buy);
  $("#buy-cancel").addEventListener("click", () => $("#buy-dialog").close());
  $("#pool-form").addEventListener("submit", startPool);
  if (!(await loadRoom())) return;
  try {
    await loadCatalog();
  } catch (err) {
    $("#gift-grid").replaceChildren(el("p.error", {}, `Couldn't load the gifts: ${explain(err)}`));
  }
  if (!state.signedIn) {
    signInBanner(token, token ? "token_expired" : null);
    updateGifts();
    return;
  }
  await refreshWallet();
  if (!state.signedIn) return;
  state.rewards = new RewardsPanel(token, (coins) => { state.rewardCoins = coins; updateGifts(); });
  state.rewards.start();
  connect();
  mountSponsored({ room, token, live: state.live, catalog: state.catalog, canSend: () => state.status === "live" });
  loadLeaderboard();
  loadMatchAndStage();
  setInterval(() => {
    tickMatch();
    for (const entry of state.pools.values()) if (entry.status === "open") renderPool(entry);
    if (state.signedIn && tokenExpired(token)) signOut("token_expired");
  }, 1000);
}

main();
