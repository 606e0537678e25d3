// The creator studio (/studio): go live and end the stream, the live gift feed with earnings, running totals,
// diamonds per minute, goal, top gifters, pools, matches, the stage's guests, the wallet with cash-out, and past
// streams.
//
// Built for bursts of hundreds of gifts per second: events are buffered and drawn once per animation frame,
// the feed keeps only its newest FEED_MAX rows, and the chart redraws at most once a second.

import { Live, readToken, tokenExpired, uuid, withToken } from "./client.js";
import {
  $, api, ApiError, banner, clock, compact, connectionIndicator, duration, el, explain, fmt, giftIcon, levelBadge,
  signInBanner, toast, whoAmI,
} from "./ui.js";
import { poolGiftEvent } from "./gifts.js";
import { sponsorChip } from "./sponsored.js";

const FEED_MAX = 100;
const CHART_MINUTES = 30;
const SEEN_MAX = 5000;
const RESYNC_QUIET_MS = 1500;
const RESYNC_EVERY_MS = 15000;

const token = readToken();
const claims = whoAmI(token);
const me = claims?.sub ?? null;

const state = {
  room: null, // the live room's info
  live: null,
  catalog: new Map(),
  totals: { gifts: 0, coins: 0, diamonds: 0 },
  feedQueue: [],
  feedCount: 0,
  frame: 0,
  seen: new Set(), // gift ids already counted (snapshot and replays overlap)
  minutes: new Map(), // minute (ms / 60000) -> diamonds
  chartDirty: true,
  resyncTimer: 0,
  withdrawKey: null,
  withdrawals: [],
  pools: new Map(),
  match: null, // {id, a, b, points: {a, b}, result}
};

$("#home-link").href = withToken("/", token);

// Stream ------------------------------------------------------------------------------------------------

function showOffline() {
  state.room = null;
  $("#golive-form").hidden = false;
  $("#stream-live").hidden = true;
  $("#end").hidden = true;
  const badge = $("#room-state");
  badge.dataset.state = "offline";
  badge.textContent = "Offline";
  $("#viewers").hidden = true;
  $("#goal-set").disabled = true;
  $("#goal-msg").textContent = "Go live to set a goal.";
}

function showLive(info) {
  state.room = info;
  $("#golive-form").hidden = true;
  $("#stream-live").hidden = false;
  $("#end").hidden = false;
  $("#stream-title").textContent = info.title;
  const badge = $("#room-state");
  badge.dataset.state = "live";
  badge.textContent = "LIVE";
  $("#watch-link").href = withToken(`/watch/${encodeURIComponent(info.room)}`, token);
  showOverlayLink(info.room);
  $("#goal-set").disabled = false;
  $("#goal-msg").textContent = "";
  tickLiveFor();
}

/** The overlay link carries a read-only overlay token (POST /v1/overlay-tokens), never this tab's own token:
 * whoever sees the streaming software's settings can watch the feed, not spend or withdraw. */
async function showOverlayLink(room) {
  const input = $("#overlay-url");
  input.value = "";
  try {
    state.overlayToken ??= (await api("/v1/overlay-tokens", { method: "POST", token })).token;
    if (state.room?.room === room) input.value = `${location.origin}${withToken(`/overlay/${encodeURIComponent(room)}`, state.overlayToken)}`;
  } catch (err) {
    input.placeholder = `Couldn't get an overlay link: ${explain(err)}`;
  }
}

function tickLiveFor() {
  if (state.room) $("#live-for").textContent = `Live for ${duration((Date.now() - state.room.started_at_ms) / 1000)}`;
}

async function goLive(event) {
  event.preventDefault();
  const msg = $("#golive-msg");
  const button = $("#golive");
  button.disabled = true;
  msg.className = "form-msg";
  msg.textContent = "Going live…";
  try {
    const info = await api("/v1/rooms", { method: "POST", token, body: { title: $("#title").value } });
    msg.textContent = "";
    attach(info, true);
  } catch (err) {
    msg.className = "form-msg error";
    msg.textContent = `Couldn't go live: ${explain(err)}`;
    if (err instanceof ApiError && err.authFailed) signInBanner(token, err.code);
  } finally {
    button.disabled = false;
  }
}

function attach(info, fresh) {
  resetStream();
  showLive(info);
  $("#summary-card").hidden = true;
  state.live.join(info.room);
  if (!fresh) resync();
  loadLeaderboard();
}

function resetStream() {
  state.totals = { gifts: 0, coins: 0, diamonds: 0 };
  state.seen.clear();
  state.minutes.clear();
  state.feedQueue = [];
  state.feedCount = 0;
  state.chartDirty = true;
  $("#feed").replaceChildren();
  renderTotals();
  updateFeedNote();
  for (const entry of state.pools.values()) entry.node.remove();
  state.pools.clear();
  $("#pools-card").hidden = true;
  $("#top-card").hidden = true;
  renderGoal(null);
}

async function endStream() {
  if (!state.room) return;
  if (!confirm("End the stream now? Viewers can no longer send gifts.")) return;
  const room = state.room.room;
  const button = $("#end");
  button.disabled = true;
  try {
    await api(`/v1/rooms/${encodeURIComponent(room)}/end`, { method: "POST", token });
    await ended(room);
  } catch (err) {
    if (err.code === "room_not_live") await ended(room);
    else toast(`Couldn't end the stream: ${explain(err)}`, "error");
  } finally {
    button.disabled = false;
  }
}

async function ended(room) {
  if (!state.room || state.room.room !== room) return;
  state.live.leave(room);
  let summary = null;
  try {
    const answer = await api(`/v1/rooms/${encodeURIComponent(room)}/summary`, { token });
    summary = answer?.summary || answer;
  } catch {
    try { summary = await api(`/v1/rooms/${encodeURIComponent(room)}/earnings`, { token }); } catch { summary = null; }
  }
  if (summary) renderSummary(summary);
  showOffline();
  loadSessions();
  loadWallet();
}

function renderSummary(summary) {
  $("#summary-card").hidden = false;
  const facts = [
    ["Duration", duration(summary.duration_s || 0)],
    ["Gifts", fmt(summary.gifts || 0)],
    ["Coins", fmt(summary.coins || 0)],
    ["Diamonds", fmt(summary.diamonds || 0)],
  ];
  if (typeof summary.goals_met === "number") facts.push(["Goals met", fmt(summary.goals_met)]);
  const top = Array.isArray(summary.top) ? summary.top.slice(0, 3).map((t) => t.name || t.user).join(", ") : "";
  $("#summary").replaceChildren(
    el("div.totals", {}, ...facts.map(([label, value]) => el("p.total", {}, el("span.value", {}, value), el("span.label", {}, label)))),
    top ? el("p.small", {}, `Top gifters: ${top}`) : null,
  );
}

// Totals and chart --------------------------------------------------------------------------------------

function renderTotals() {
  $("#t-gifts").textContent = fmt(state.totals.gifts);
  $("#t-coins").textContent = fmt(state.totals.coins);
  $("#t-diamonds").textContent = fmt(state.totals.diamonds);
}

/** Totals are counted from the events as they come and checked against the server when the feed is quiet. */
function scheduleResync() {
  clearTimeout(state.resyncTimer);
  state.resyncTimer = setTimeout(resync, RESYNC_QUIET_MS);
}

async function resync() {
  const room = state.room?.room;
  if (!room) return;
  try {
    const earnings = await api(`/v1/rooms/${encodeURIComponent(room)}/earnings`, { token });
    if (state.room?.room !== room) return;
    state.totals = { gifts: earnings.gifts, coins: earnings.coins, diamonds: earnings.diamonds };
    renderTotals();
    loadWallet();
  } catch (err) {
    if (err instanceof ApiError && err.authFailed) signInBanner(token, err.code);
  }
}

function drawChart() {
  if (!state.chartDirty) return;
  state.chartDirty = false;
  const now = Math.floor(Date.now() / 60000);
  const values = [];
  for (let m = now - CHART_MINUTES + 1; m <= now; m++) values.push(state.minutes.get(m) || 0);
  const max = Math.max(1, ...values);
  const w = 600, h = 110, pad = 0, bw = w / CHART_MINUTES;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `Diamonds per minute over the last ${CHART_MINUTES} minutes; this minute: ${fmt(values.at(-1))}, best minute: ${fmt(Math.max(...values))}`);
  values.forEach((v, i) => {
    const bh = v ? Math.max(2, ((h - pad) * v) / max) : 0;
    const rect = document.createElementNS(ns, "rect");
    rect.setAttribute("x", String(i * bw + 1));
    rect.setAttribute("y", String(h - pad - bh));
    rect.setAttribute("width", String(bw - 2));
    rect.setAttribute("height", String(bh));
    rect.setAttribute("class", i === values.length - 1 ? "bar now" : "bar");
    const title = document.createElementNS(ns, "title");
    title.textContent = `${CHART_MINUTES - 1 - i} min ago: ${fmt(v)} diamonds`;
    rect.append(title);
    svg.append(rect);
  });
  $("#chart").replaceChildren(
    el("div.chart-axis", {}, el("span", {}, `best minute: ${compact(Math.max(...values))} diamonds`)),
    svg,
    el("div.chart-axis", { "aria-hidden": "true" }, el("span", {}, `${CHART_MINUTES} min ago`), el("span", {}, "now")),
  );
}

// Feed --------------------------------------------------------------------------------------------------

function countGift(event, live) {
  if (state.seen.has(event.gift_id)) return false;
  state.seen.add(event.gift_id);
  if (state.seen.size > SEEN_MAX) state.seen.delete(state.seen.values().next().value);
  const diamonds = event.diamonds || 0;
  if (typeof event.ts === "number") {
    const minute = Math.floor(event.ts / 60000);
    state.minutes.set(minute, (state.minutes.get(minute) || 0) + diamonds);
    state.chartDirty = true;
  }
  if (live) {
    state.totals.gifts += 1;
    state.totals.coins += event.coins || 0;
    state.totals.diamonds += diamonds;
  }
  state.feedQueue.push(event);
  state.feedCount += 1;
  if (!state.frame) state.frame = requestAnimationFrame(flushFeed);
  return true;
}

function flushFeed() {
  state.frame = 0;
  const batch = state.feedQueue.splice(0).slice(-FEED_MAX);
  const fragment = document.createDocumentFragment();
  for (let i = batch.length - 1; i >= 0; i--) fragment.append(feedRow(batch[i]));
  const feed = $("#feed");
  feed.prepend(fragment);
  while (feed.childElementCount > FEED_MAX) feed.lastElementChild.remove();
  renderTotals();
  updateFeedNote();
}

function feedRow(event) {
  const gift = state.catalog.get(event.gift) || { name: event.gift, asset: "gift.svg" };
  return el("tr", { dataset: { giftId: event.gift_id, offset: event.offset ?? "" } },
    el("td.col-time", {}, event.ts ? el("time", { datetime: new Date(event.ts).toISOString() }, clock(event.ts)) : ""),
    el("td", {}, event.sender_name || event.sender),
    el("td", {}, giftIcon(gift, "mini-icon"), gift.name, sponsorChip(event) ? " " : "", sponsorChip(event)),
    el("td.num", {}, fmt(event.count)),
    el("td.num", {}, fmt(event.diamonds || 0)),
  );
}

function updateFeedNote() {
  const shown = Math.min(state.feedCount, FEED_MAX);
  $("#feed-note").textContent = state.feedCount > FEED_MAX
    ? `Showing the newest ${FEED_MAX} of ${fmt(state.feedCount)} gifts seen on this page.`
    : state.feedCount ? `${fmt(shown)} gift${shown === 1 ? "" : "s"}.` : "Gifts appear here the moment they settle.";
}

// Goal, top gifters, pools (lit up when the server sends them) ------------------------------------------

function progressBar(value, max, label) {
  const bar = el("div.bar");
  bar.style.width = `${max > 0 ? Math.min(100, (100 * value) / max) : 0}%`;
  return el("div.progress", { role: "progressbar", "aria-valuemin": 0, "aria-valuemax": max, "aria-valuenow": Math.min(value, max), "aria-label": label }, bar);
}

function renderGoal(goal, completed) {
  state.goal = goal && goal.status !== "cancelled" ? goal : null;
  $("#goal-cancel").hidden = !(state.goal && state.goal.status === "active" && !completed);
  if (!state.goal || typeof goal.target !== "number") {
    $("#goal").replaceChildren(el("p.muted.small", {}, "No goal set."));
    return;
  }
  const gift = goal.kind === "gift" ? state.catalog.get(goal.gift) : null;
  const label = gift ? `${fmt(goal.target)} × ${gift.name}` : goal.kind === "gift" ? `${fmt(goal.target)} × ${goal.gift}` : `${fmt(goal.target)} diamonds`;
  const done = completed || goal.progress >= goal.target;
  $("#goal").replaceChildren(
    el("p.goal-line", {}, gift ? giftIcon(gift, "mini-icon") : el("img.mini-icon", { src: "/static/icons/diamond.svg", alt: "" }), el("span", {}, label)),
    progressBar(goal.progress, goal.target, `Goal progress: ${fmt(goal.progress)} of ${fmt(goal.target)}`),
    el("p.small", {}, done ? el("strong.ok", {}, "Goal reached!") : `${fmt(goal.progress)} / ${fmt(goal.target)}`),
  );
}

async function setGoal(event) {
  event.preventDefault();
  const msg = $("#goal-msg");
  if (!state.room) { msg.textContent = "Go live to set a goal."; return; }
  const kind = $("#goal-kind").value;
  const target = Number($("#goal-target").value);
  const body = kind === "gift" ? { gift: $("#goal-gift").value, target } : { diamonds: target };
  msg.className = "form-msg";
  msg.textContent = "Setting the goal…";
  try {
    const answer = await api(`/v1/rooms/${encodeURIComponent(state.room.room)}/goals`, { method: "POST", token, body });
    msg.className = "form-msg ok";
    msg.textContent = "Goal set.";
    const goal = answer?.goal || answer;
    if (goal && typeof goal.target === "number") renderGoal(goal, false);
  } catch (err) {
    msg.className = "form-msg error";
    msg.textContent = `Couldn't set the goal: ${explain(err)}`;
  }
}

// Stage: invite guests, see who accepted, take one off ------------------------------------------------------

function stagePath(action = "") {
  return `/v1/rooms/${encodeURIComponent(state.room.room)}/stage${action}`;
}

async function inviteGuest(event) {
  event.preventDefault();
  const msg = $("#stage-msg");
  if (!state.room) { msg.textContent = "Go live to invite guests."; return; }
  const guest = $("#stage-guest").value.trim();
  msg.className = "form-msg";
  msg.textContent = "Inviting…";
  try {
    await api(stagePath("/invites"), { method: "POST", token, body: { guest } });
    msg.className = "form-msg ok";
    msg.textContent = `Invited ${guest}: they appear here once they accept.`;
    $("#stage-guest").value = "";
  } catch (err) {
    msg.className = "form-msg error";
    msg.textContent = `Couldn't invite ${guest}: ${explain(err)}`;
  }
}

async function removeGuest(guest) {
  const msg = $("#stage-msg");
  try {
    renderStage((await api(stagePath("/leave"), { method: "POST", token, body: { guest } })).guests);
    msg.className = "form-msg ok";
    msg.textContent = `${guest} left the stage.`;
  } catch (err) {
    msg.className = "form-msg error";
    msg.textContent = `Couldn't remove ${guest}: ${explain(err)}`;
  }
}

function renderStage(guests) {
  $("#stage-empty").hidden = guests.length > 0;
  $("#stage-guests").replaceChildren(...guests.map((guest) => el("li.pool", { dataset: { guest } },
    el("div.row", {}, el("span.avatar", { "aria-hidden": "true" }, guest.slice(0, 1).toUpperCase()), el("span", {}, guest),
      el("button", { type: "button", "aria-label": `Remove ${guest} from the stage`, onclick: () => removeGuest(guest) }, "Remove")))));
}

async function loadStage() {
  if (!state.room) return;
  try {
    renderStage((await api(stagePath())).guests);
  } catch { /* shown again by the next stage event */ }
}

// Match: invite, answer, the live score -------------------------------------------------------------------

async function inviteMatch(event) {
  event.preventDefault();
  const msg = $("#match-msg");
  const body = { opponent: $("#match-opponent").value.trim(), duration_s: Number($("#match-duration").value) };
  msg.className = "form-msg";
  msg.textContent = "Inviting…";
  try {
    await api("/v1/matches", { method: "POST", token, body });
    msg.className = "form-msg ok";
    msg.textContent = `Invited ${body.opponent}: waiting for an answer.`;
  } catch (err) {
    msg.className = "form-msg error";
    msg.textContent = `Couldn't invite: ${explain(err)}`;
  }
}

function showInvite(match) {
  if (!match || !(match.waiting_for ?? [match.b?.creator]).includes(me) || match.status !== "invited") return;
  if (match.invite_deadline_ms < Date.now() || document.querySelector(`[data-invite="${match.id}"]`)) return;
  const row = el("li.pool", { dataset: { invite: match.id } }, el("p", {}, `${match.a.creator} invites you to a match (${duration(match.duration_s)})`));
  const msg = el("p.form-msg", { role: "status" });
  const answer = async (action) => {
    try {
      const view = await api(`/v1/matches/${encodeURIComponent(match.id)}/${action}`, { method: "POST", token });
      row.remove();
      if (view.status === "live") renderMatch(view);
    } catch (err) {
      msg.className = "form-msg error";
      msg.textContent = `Couldn't ${action}: ${explain(err)}`;
    }
  };
  row.append(el("div.row", {}, el("button.primary", { type: "button", onclick: () => answer("accept") }, "Accept"),
    el("button", { type: "button", onclick: () => answer("decline") }, "Decline")), msg);
  $("#match-invites").append(row);
}

function renderMatch(match) {
  if (!match || !match.a) return;
  const points = match.result?.points ?? { a: match.a.points, b: match.b.points };
  const known = state.match?.id === match.id ? state.match.points : { a: 0, b: 0 };
  state.match = { ...match, points: { a: Math.max(points.a, known.a), b: Math.max(points.b, known.b) } };
  drawMatch();
}

function scoreMatch(event) {
  const match = state.match;
  if (!match || match.id !== event.match || match.result) return;
  match.points = { a: Math.max(event.points_a, match.points.a), b: Math.max(event.points_b, match.points.b) };
  drawMatch();
}

function drawMatch() {
  const { a, b, result } = state.match;
  const { a: pa, b: pb } = state.match.points;
  const winner = result?.winner ? state.match[result.winner].creator : null;
  $("#match-live").hidden = false;
  $("#match-live").replaceChildren(
    el("p.goal-line", {}, el("span", { id: "studio-score" }, `${a.creator} ${fmt(pa)} : ${fmt(pb)} ${b.creator}`)),
    progressBar(pa, pa + pb || 1, "Score"),
    el("p.small", { id: "studio-match-state" }, result ? (winner ? `${winner} wins` : "Draw") : "Live"),
  );
}

async function cancelGoal() {
  const msg = $("#goal-msg");
  if (!state.room) return;
  try {
    const answer = await api(`/v1/rooms/${encodeURIComponent(state.room.room)}/goals`, { method: "DELETE", token });
    renderGoal(answer?.goal || null);
    msg.className = "form-msg";
    msg.textContent = "Goal cancelled.";
  } catch (err) {
    msg.className = "form-msg error";
    msg.textContent = `Couldn't cancel the goal: ${explain(err)}`;
  }
}

function renderTop(top) {
  if (!Array.isArray(top)) return;
  $("#top-card").hidden = false;
  $("#top").replaceChildren(...top.map((entry, i) => el("li", {},
    el("span.rank", {}, String(i + 1)), el("span.top-name", {}, entry.name || entry.user), levelBadge(entry.level),
    el("span.top-coins", {}, el("img", { src: "/static/icons/coin.svg", alt: "", width: 14, height: 14 }), compact(entry.coins)))));
  if (!top.length) $("#top").append(el("li.muted", {}, "No gifts yet."));
}

async function loadLeaderboard() {
  const room = state.room?.room;
  if (!room) return;
  try {
    const data = await api(`/v1/rooms/${encodeURIComponent(room)}/leaderboard`, { token });
    if (Array.isArray(data?.top)) renderTop(data.top);
  } catch { /* not on this server yet: shown when a leaderboard event arrives */ }
}

function upsertPool(pool, status) {
  if (!pool?.id) return;
  $("#pools-card").hidden = false;
  let entry = state.pools.get(pool.id);
  if (!entry) {
    entry = { node: el("li.pool", { dataset: { pool: pool.id } }) };
    state.pools.set(pool.id, entry);
    $("#pools").append(entry.node);
  }
  entry.pool = pool;
  entry.status = status;
  renderPool(entry);
  if (status !== "open") setTimeout(() => { entry.node.remove(); state.pools.delete(pool.id); }, 15000);
}

function renderPool(entry) {
  const { pool, status, node } = entry;
  const gift = state.catalog.get(pool.gift) || { name: pool.gift, asset: "gift.svg" };
  const left = Math.max(0, (pool.deadline_ms - Date.now()) / 1000);
  node.dataset.status = status;
  node.replaceChildren(
    el("div.pool-head", {}, giftIcon(gift, "mini-icon"), el("strong", {}, gift.name), el("span.muted.small", {}, ` ${fmt(pool.pledged)} / ${fmt(pool.price)} coins`)),
    progressBar(pool.pledged, pool.price, `${gift.name} pool`),
    el("p.small.muted", {}, status === "completed" ? "Completed: sent!" : status === "expired" ? "Expired: pledges returned."
      : status === "cancelled" ? "Cancelled: pledges returned." : status === "voided" ? "Stream ended: pledges returned."
      : `${(pool.contributors || []).length} contributors · ${duration(left)} left`),
  );
}

// Wallet and past streams -------------------------------------------------------------------------------

async function loadWallet() {
  try {
    const wallet = await api("/v1/wallet", { token });
    const node = $("#diamonds");
    node.textContent = fmt(wallet.diamonds);
    node.dataset.diamonds = String(wallet.diamonds);
  } catch (err) {
    if (err instanceof ApiError && err.authFailed) signInBanner(token, err.code);
  }
}

function shortDate(ms) {
  return new Date(ms).toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
}

async function loadWithdrawals() {
  try {
    state.withdrawals = (await api("/v1/wallet/withdrawals?limit=20", { token })).withdrawals;
    renderWithdrawals();
  } catch { /* shown on the next try */ }
  const pending = state.withdrawals.some((w) => w.status === "pending");
  setTimeout(loadWithdrawals, pending ? 2000 : 30000);
  if (!pending) loadWallet();
}

function renderWithdrawals() {
  const body = $("#withdrawals");
  if (!state.withdrawals.length) {
    body.replaceChildren(el("tr", {}, el("td.muted", { colspan: 3 }, "None yet.")));
    return;
  }
  body.replaceChildren(...state.withdrawals.map((w) => el("tr", { dataset: { withdrawal: w.withdrawal_id } },
    el("td", {}, shortDate(w.created_ms)),
    el("td.num", {}, fmt(w.diamonds)),
    el("td", {}, el("span.status-pill", { dataset: { status: w.status } }, w.status), w.reason ? el("span.muted.small.withdrawal-reason", {}, w.reason.replace(/_/g, " ")) : null),
  )));
}

async function cashOut(event) {
  event.preventDefault();
  const msg = $("#cashout-msg");
  const diamonds = Number($("#cashout-amount").value);
  const account = $("#cashout-account").value;
  const fingerprint = `${diamonds}|${account}`;
  if (!state.withdrawKey || state.withdrawKey.fingerprint !== fingerprint) state.withdrawKey = { key: uuid(), fingerprint };
  msg.className = "form-msg";
  msg.textContent = "Requesting…";
  try {
    const answer = await api("/v1/wallet/withdrawals", {
      method: "POST", token, idempotencyKey: state.withdrawKey.key, body: { diamonds, payout_account: account },
    });
    state.withdrawKey = null;
    msg.className = "form-msg ok";
    msg.textContent = `Cash-out of ${fmt(answer.withdrawal.diamonds)} diamonds requested: ${answer.withdrawal.status}.`;
    loadWallet();
    state.withdrawals = [answer.withdrawal, ...state.withdrawals.filter((w) => w.withdrawal_id !== answer.withdrawal.withdrawal_id)];
    renderWithdrawals();
    setTimeout(loadWithdrawals, 1500);
  } catch (err) {
    if (!(err instanceof ApiError) || !err.unreachable) state.withdrawKey = null;
    msg.className = "form-msg error";
    msg.textContent = `Couldn't cash out: ${explain(err)}`;
  }
}

async function loadSessions() {
  try {
    const sessions = (await api("/v1/wallet/sessions?limit=20", { token })).sessions;
    const body = $("#sessions");
    if (!sessions.length) return;
    body.replaceChildren(...sessions.map((s) => el("tr", { dataset: { room: s.room } },
      el("td", {}, s.started_at_ms ? shortDate(s.started_at_ms) : s.room),
      el("td.num", {}, duration(s.duration_s || 0)),
      el("td.num", {}, fmt(s.gifts)),
      el("td.num", {}, fmt(s.coins)),
      el("td.num", {}, fmt(s.diamonds)),
    )));
  } catch { /* kept as it was */ }
}

// Events ------------------------------------------------------------------------------------------------

function handle(event, live) {
  switch (event.kind) {
    case "gift":
      if (countGift(event, live) && live) scheduleResync();
      break;
    case "room_ended": if (state.room) ended(state.room.room); break;
    case "goal_progress": renderGoal(event.goal, false); break;
    case "goal_completed": renderGoal(event.goal, true); break;
    case "pool_progress": upsertPool(event.pool, "open"); break;
    case "pool_completed":
      upsertPool(event.pool, "completed");
      if (countGift(poolGiftEvent(event), live) && live) scheduleResync();
      break;
    case "pool_expired": upsertPool(event.pool, "expired"); break;
    case "pool_cancelled": upsertPool(event.pool, "cancelled"); break;
    case "pool_voided": upsertPool(event.pool, "voided"); break;
    case "leaderboard": renderTop(event.top); break;
    case "viewers":
      if (typeof event.count === "number") {
        $("#viewers").hidden = false;
        $("#viewers").textContent = `${compact(event.count)} watching`;
      }
      break;
    case "stream_summary": if (event.summary) renderSummary(event.summary); break;
    case "stage": renderStage(event.guests); break;
    case "match_invited": showInvite(event.match); break;
    case "match_started": case "match_ended": renderMatch(event.match); break;
    case "match_score": scoreMatch(event); break;
    default: break;
  }
}

function connect() {
  const live = new Live(token);
  state.live = live;
  connectionIndicator(live, (problem) => signInBanner(token, problem.code));
  live.addEventListener("joined", (e) => {
    const m = e.detail.message;
    if (typeof m.viewers === "number") handle({ kind: "viewers", count: m.viewers }, true);
    if (m.goal !== undefined) m.goal ? renderGoal(m.goal, m.goal.status === "completed") : renderGoal(null);
    if (Array.isArray(m.top)) renderTop(m.top);
    if (Array.isArray(m.pools)) for (const pool of m.pools) upsertPool(pool, "open");
    loadStage();
  });
  live.addEventListener("snapshot", (e) => {
    for (const event of e.detail.events) handle(event, false);
    if (e.detail.reset || state.room) resync();
  });
  live.addEventListener("events", (e) => { for (const event of e.detail.events) handle(event, true); });
  live.addEventListener("room_error", (e) => toast(`${e.detail.message} (${e.detail.code})`, "error"));
  live.addEventListener("error", (e) => toast(`${e.detail.message} (${e.detail.code})`, "error"));
  live.start();
}

// Start -------------------------------------------------------------------------------------------------

async function copyOverlay() {
  const input = $("#overlay-url");
  try {
    await navigator.clipboard.writeText(input.value);
  } catch {
    input.select();
    document.execCommand("copy");
  }
  toast("Overlay link copied.", "ok", 2500);
}

function toggleGoalKind() {
  $("#goal-gift-field").hidden = $("#goal-kind").value !== "gift";
}

async function main() {
  $("#golive-form").addEventListener("submit", goLive);
  $("#end").addEventListener("click", endStream);
  $("#goal-form").addEventListener("submit", setGoal);
  $("#match-form").addEventListener("submit", inviteMatch);
  $("#stage-form").addEventListener("submit", inviteGuest);
  $("#goal-kind").addEventListener("change", toggleGoalKind);
  $("#goal-cancel").addEventListener("click", cancelGoal);
  $("#cashout-form").addEventListener("submit", cashOut);
  $("#copy-overlay").addEventListener("click", copyOverlay);
  if (!token || tokenExpired(token)) {
    signInBanner(token, token ? "token_expired" : null);
    showOffline();
    return;
  }
  if (!["creator", "admin"].includes(claims?.role)) {
    banner("The studio is for creators; you're signed in as a viewer.", "error", [el("a.button", { href: withToken("/", token) }, "Go to the lobby")]);
    showOffline();
    $("#golive").disabled = true;
    return;
  }
  try {
    const gifts = (await api("/v1/catalog/gifts")).gifts;
    state.catalog = new Map(gifts.map((g) => [g.id, g]));
    $("#goal-gift").replaceChildren(...gifts.map((g) => el("option", { value: g.id }, `${g.name} (${fmt(g.coins)})`)));
  } catch (err) {
    banner(`Couldn't load the gift catalog: ${explain(err)}`, "warn");
  }
  connect();
  let mine = null;
  for (let attempt = 0; ; attempt++) {
    try {
      mine = (await api(`/v1/creators/${encodeURIComponent(me)}/live`)).room;
      banner("");
      break;
    } catch (err) {
      banner(`Can't reach the server: ${explain(err)} Retrying…`, "warn");
      await new Promise((r) => setTimeout(r, Math.min(10000, 1000 * 2 ** attempt)));
    }
  }
  if (mine) attach(mine, false);
  else showOffline();
  loadWallet();
  loadWithdrawals();
  loadSessions();
  drawChart();
  setInterval(() => {
    tickLiveFor();
    const minute = Math.floor(Date.now() / 60000);
    if (minute !== state.chartMinute) { state.chartMinute = minute; state.chartDirty = true; } // bars move left
    drawChart();
    for (const entry of state.pools.values()) if (entry.status === "open") renderPool(entry);
    if (tokenExpired(token)) signInBanner(token, "token_expired");
  }, 1000);
  setInterval(() => { if (state.room) resync(); }, RESYNC_EVERY_MS);
}

main();
