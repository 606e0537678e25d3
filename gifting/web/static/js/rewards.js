// The watch page's reward coins: the balance earned by watching, the daily streak and the first gift of the day
// (GET /v1/rewards), and the streak claim (POST /v1/rewards/streak). The server measures watching itself; this
// only shows what it counted.

import { $, api, explain, fmt, toast } from "./ui.js";

const REFRESH_MS_MAX = 30000; // never poll more often than the server's watch period, nor less often than this

export class RewardsPanel {
  constructor(token, onChange) {
    this.token = token;
    this.onChange = onChange; // (rewardCoins) -> void: the gift panel counts them as spendable
    this.timer = null;
  }

  async start() {
    $("#reward-claim").addEventListener("click", () => this.claim());
    const summary = await this.refresh();
    const everyMs = Math.min(REFRESH_MS_MAX, Math.max(1000, (summary?.watch_period_s ?? 30) * 1000));
    this.timer = setInterval(() => this.refresh(), everyMs);
  }

  async refresh() {
    try {
      const summary = await api("/v1/rewards", { token: this.token });
      this.render(summary);
      return summary;
    } catch {
      return null; // the wallet shows sign-in and network problems; the rewards line just waits for the next try
    }
  }

  render(summary) {
    $("#rewards").hidden = false;
    const coins = $("#reward-coins");
    coins.textContent = fmt(summary.reward_coins);
    coins.dataset.coins = String(summary.reward_coins);
    const today = $("#reward-today");
    today.textContent = `+${fmt(summary.earned_today)} today of ${fmt(summary.viewer_day_coins_max)}`;
    today.dataset.earned = String(summary.earned_today);
    const streak = summary.streak_days > 0 ? ` · ${summary.streak_days}-day streak` : "";
    $("#reward-streak").textContent = streak;
    const claim = $("#reward-claim");
    claim.hidden = summary.streak_claimed_today || summary.watch_periods_today < 1;
    this.onChange(summary.reward_coins);
  }

  async claim() {
    const button = $("#reward-claim");
    button.disabled = true;
    try {
      const answer = await api("/v1/rewards/streak", { method: "POST", token: this.token });
      toast(`Daily bonus: +${fmt(answer.coins)} reward coins (${answer.streak_days}-day streak)`, "info");
      this.render(answer);
    } catch (err) {
      toast(`Couldn't claim the daily bonus: ${explain(err)}`, "error");
      await this.refresh();
    } finally {
      button.disabled = false;
    }
  }
}
