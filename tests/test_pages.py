"""The web pages end to end: headless Chromium (Playwright) drives the lobby, watch, studio and overlay pages
against the app on 127.0.0.1, with a real Valkey and settlement worker (conftest.start_system).

Without Chromium or Playwright the browser tests are skipped with a message saying how to install them; set
GIFTING_REQUIRE_BROWSER=1 (CI does) to make that a failure instead. GIFTING_SCREENSHOTS=DIR saves the pages'
screenshots there (docs/img for the README).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import jwt
import pytest

from gifting.catalog.model import Catalog
from gifting.ledger.audit import run_audit
from gifting.web import pages
from tests.conftest import REPO, System, SystemFactory, gift_id, token

try:
    from playwright.async_api import Browser, BrowserContext, Page, ViewportSize, WebSocketRoute, async_playwright
except ImportError:  # pragma: no cover - exercised only where Playwright is not installed
    async_playwright = None  # type: ignore[assignment]

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
INSTALL_HINT = (
    "browser tests need Chromium and Playwright for Python: `apt-get install -y chromium` (or set "
    "GIFTING_CHROMIUM=/path/to/chrome) and `pip install -e '.[dev]'` (the system Chromium is used: no "
    "`playwright install`). .ci/run installs Chromium, so CI always runs these tests."
)
WAIT_MS = 10_000
PHONE: ViewportSize = {"width": 390, "height": 844}
DESKTOP: ViewportSize = {"width": 1280, "height": 860}
OVERLAY: ViewportSize = {"width": 1280, "height": 720}


def chromium_path() -> str | None:
    configured = os.environ.get("GIFTING_CHROMIUM")
    if configured:
        return configured if Path(configured).exists() else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def mount_pages(system: System) -> None:
    """Serve the pages on the test's app (create_app mounts pages.routes; older apps get them here)."""
    if not any(getattr(route, "path", None) == "/studio" for route in system.app.routes):
        system.app.router.routes.extend(pages.routes)


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    executable = chromium_path()
    if async_playwright is None or executable is None:
        if os.environ.get("GIFTING_REQUIRE_BROWSER"):
            pytest.fail(INSTALL_HINT)
        pytest.skip(INSTALL_HINT)
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


class Cable:
    """Every websocket of a page goes through here, so a test can pull the network cable and plug it back."""

    def __init__(self) -> None:
        self.plugged = True
        self.routes: list[tuple[WebSocketRoute, WebSocketRoute]] = []

    async def route(self, ws: WebSocketRoute) -> None:
        if not self.plugged:
            await ws.close(code=1011, reason="network down")
            return
        self.routes.append((ws, ws.connect_to_server()))

    async def pull(self) -> None:
        self.plugged = False
        for page_side, server_side in self.routes:
            await page_side.close(code=1011, reason="network down")
            await server_side.close()
        self.routes.clear()

    def inject(self, frame: dict[str, Any]) -> None:
        """A frame as if the server sent it (for room events this server may not send yet)."""
        self.routes[-1][0].send(json.dumps(frame))


class Pages:
    """Opens pages (each tab signed in as its own person: the token lives in the tab's sessionStorage) and
    watches what they do: uncaught errors, console errors, and any request that leaves the server's origin."""

    def __init__(self, browser: Browser, system: System) -> None:
        self.browser = browser
        self.system = system
        self.contexts: list[BrowserContext] = []
        self.problems: list[str] = []
        self.ws_origin = system.base_url.replace("http://", "ws://")

    async def context(self) -> BrowserContext:
        context = await self.browser.new_context(viewport=DESKTOP, reduced_motion="no-preference")
        context.set_default_timeout(WAIT_MS)
        context.on("request", self._check_request)
        self.contexts.append(context)
        return context

    async def open(
        self,
        path: str,
        tok: str | None = None,
        *,
        viewport: ViewportSize = DESKTOP,
        cable: Cable | None = None,
        own_context: bool = False,
    ) -> Page:
        context = self.contexts[0] if self.contexts and not own_context else await self.context()
        page = await context.new_page()
        await page.set_viewport_size(viewport)
        page.on("pageerror", lambda exc: self.problems.append(f"{path}: uncaught {exc}"))
        page.on("console", lambda msg: self._check_console(path, msg.type, msg.text))
        page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
        if cable is not None:
            await page.route_web_socket(re.compile(r".*/v1/ws.*"), cable.route)
        await page.goto(self.system.base_url + path + (f"#token={tok}" if tok else ""), wait_until="domcontentloaded")
        return page

    def _check_request(self, request: Any) -> None:
        url: str = request.url
        if not (url.startswith(self.system.base_url + "/") or url.startswith(self.ws_origin + "/")):
            self.problems.append(f"external request: {url}")

    def _check_console(self, path: str, kind: str, text: str) -> None:
        if kind == "error" and "Failed to load resource" not in text:
            self.problems.append(f"{path}: console error: {text}")

    async def close(self) -> None:
        for context in self.contexts:
            with contextlib.suppress(Exception):
                await context.close()


@pytest.fixture
async def site(start_system: SystemFactory, request: pytest.FixtureRequest) -> System:
    system = await start_system(**getattr(request, "param", {}))
    mount_pages(system)
    return system


@pytest.fixture
async def browse(browser: Browser, site: System) -> AsyncIterator[Pages]:
    opened = Pages(browser, site)
    await opened.context()  # the shared one, before pages open concurrently
    yield opened
    await opened.close()
    assert opened.problems == [], opened.problems


async def go_live(page: Page, title: str) -> str:
    await page.fill("#title", title)
    await page.click("#golive")
    await page.wait_for_selector("#stream-live:not([hidden])")
    await page.wait_for_function("() => document.querySelector('#overlay-url').value.includes('#token=')")
    overlay_url = await page.input_value("#overlay-url")
    return overlay_url.split("/overlay/")[1].split("#")[0]


async def text_is(page: Page, selector: str, expected: str) -> None:
    """Wait until the element's text is exactly `expected`."""
    await page.wait_for_function(
        "([s, t]) => document.querySelector(s)?.textContent.trim() === t", arg=[selector, expected], timeout=WAIT_MS
    )


async def until(check: Callable[[], Awaitable[bool]], timeout_s: float = WAIT_MS / 1000) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def http_gift(
    system: System, room: str, sender: str, gift: str, count: int = 1, headers: dict[str, str] | None = None
) -> str:
    """Send a gift over HTTP and wait until it settled; returns its gift_id."""
    gid = gift_id()
    body = {"gift": gift, "count": count, "gift_id": gid}
    for _ in range(5):  # 202: not settled yet (a slow machine); the same gift_id again learns the outcome
        response = await system.http.post(f"/v1/rooms/{room}/gifts", headers=headers or system.auth(sender), json=body)
        if response.status_code != 202:
            break
    assert response.status_code == 200 and response.json()["status"] == "settled", response.text
    return gid


def feed_ids(page: Page) -> Awaitable[list[str]]:
    return page.eval_on_selector_all("#feed tr", "rows => rows.map(r => r.dataset.giftId)")


# Served pages (no browser) ---------------------------------------------------------------------------------


async def test_pages_are_served_with_a_policy_that_forbids_other_origins(site: System) -> None:
    """Every page is HTML with a same-origin-only CSP; scripts, styles and every catalog gift icon ship here."""
    for path in ("/", "/watch/r_abc", "/studio", "/overlay/r_abc", "/dev"):
        response = await site.http.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith("text/html")
        csp = response.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "http" not in csp.split("connect-src")[0]
        for ref in re.findall(r'(?:src|href)="(/static/[^"]+)"', response.text):
            assert (await site.http.get(ref)).status_code == 200, ref
    catalog = Catalog.from_dict(json.loads((REPO / "gifting/catalog/catalog.json").read_text()))
    for gift in catalog.gifts.values():
        response = await site.http.get(f"/static/gifts/{gift.asset}")
        assert response.status_code == 200 and response.headers["content-type"].startswith("image/svg"), gift.asset


async def test_create_app_serves_the_pages(start_system: SystemFactory) -> None:
    """The app itself serves the pages (create_app mounts gifting.web.pages.routes)."""
    system = await start_system(worker=False)
    response = await system.http.get("/")
    assert response.status_code == 200, "create_app does not mount gifting.web.pages.routes: add *pages.routes"
    assert (await system.http.get("/static/js/client.js")).status_code == 200


async def test_dev_token_page_exists_only_in_dev_mode(start_system: SystemFactory) -> None:
    """/dev answers 404 with an explanation unless GIFTING_DEV is set, like GET /dev/token."""
    system = await start_system(dev_mode=False)
    mount_pages(system)
    response = await system.http.get("/dev")
    assert response.status_code == 404 and "dev mode" in response.text
    assert (await system.http.get("/")).status_code == 200


# Browser ---------------------------------------------------------------------------------------------------


async def test_viewer_buys_coins_and_a_combo_reaches_viewers_studio_and_overlay(browse: Pages, site: System) -> None:
    """Buy coins in the dialog, tap a gift five times: x5 combo on another viewer's page, studio feed and totals,
    overlay alert; a gift the viewer can no longer afford is rejected with the reason."""
    studio = await browse.open("/studio", token("creator1", "creator", "Cleo"))
    room = await go_live(studio, "Friday night synthwave")
    overlay_path, _, overlay_token = (await studio.input_value("#overlay-url")).partition("#token=")
    claims = jwt.decode(unquote(overlay_token), options={"verify_signature": False})
    assert claims["scope"] == "overlay"  # the link carries a read-only token, not the creator's own
    overlay, other, viewer = await asyncio.gather(
        browse.open(overlay_path.removeprefix(site.base_url), unquote(overlay_token)),
        browse.open(f"/watch/{room}", token("viewer2", "viewer", "Bob"), viewport=PHONE),
        browse.open(f"/watch/{room}", token("viewer1", "viewer", "Ann")),
    )
    for page in (other, viewer):
        await page.wait_for_selector("#conn[data-state=open]")
    await text_is(viewer, "#room-title", "Friday night synthwave")
    assert await viewer.locator("#gift-grid .gift:not([disabled])").count() == 0  # no coins yet

    await viewer.click("#buy-open")
    await viewer.click("label[for=bundle-coins_328]")
    await viewer.click("#buy-submit")
    await viewer.wait_for_selector("#buy-msg.ok")
    assert "New balance: 328 coins" in await viewer.inner_text("#buy-msg")
    await viewer.click("#buy-cancel")
    assert await viewer.is_enabled(".gift[data-gift=finger_heart]")
    assert not await viewer.is_enabled(".gift[data-gift=galaxy]")  # 1,000 coins: unaffordable

    for _ in range(5):
        await viewer.click(".gift[data-gift=finger_heart]")
    await text_is(other, ".bubble[data-gift=finger_heart] .combo", "x5")
    await text_is(overlay, ".alert[data-gift=finger_heart] .combo", "x5")
    await text_is(studio, "#t-gifts", "5")
    await text_is(studio, "#t-coins", "25")
    await text_is(studio, "#t-diamonds", "10")
    assert len(set(await feed_ids(studio))) == 5
    assert await studio.inner_text("#feed tr:first-child td:nth-child(5)") == "2"
    await viewer.wait_for_selector("#balance[data-coins='303']")

    # Coins spent elsewhere (another device): the page still offers the puppy; the server says why not.
    for _ in range(3):
        await http_gift(site, room, "viewer1", "cap")
    await viewer.click(".gift[data-gift=puppy]")
    await viewer.wait_for_selector(".toast.error >> text=Not enough coins")
    await viewer.wait_for_selector("#balance[data-coins='6']")
    assert not await viewer.is_enabled(".gift[data-gift=puppy]")


async def test_dropped_connection_resumes_without_losing_or_repeating_gifts(browse: Pages, site: System) -> None:
    """With the network down the pages say they are reconnecting; back up, they resume with `since` and show
    every gift sent meanwhile exactly once."""
    room = await site.open_room("creator1", "Resume test")
    await site.buy("viewer1", "coins_657")
    studio_cable, watch_cable = Cable(), Cable()
    studio, watch = await asyncio.gather(
        browse.open("/studio", token("creator1", "creator"), cable=studio_cable),
        browse.open(f"/watch/{room}", token("viewer2", "viewer"), cable=watch_cable),
    )
    for page in (studio, watch):
        await page.wait_for_selector("#conn[data-state=open]")
    before = [await http_gift(site, room, "viewer1", gift) for gift in ("rose", "heart", "coffee")]
    await until(lambda: _count(studio, "#feed tr", 3))

    await studio.context.set_offline(True)
    await studio_cable.pull()
    await watch_cable.pull()
    for page in (studio, watch):
        await page.wait_for_selector("#conn[data-state=reconnecting]")
    during = [await http_gift(site, room, "viewer1", gift) for gift in ("perfume", "doughnut", "cap", "confetti")]
    await watch.wait_for_selector("#banner >> text=Can't reach the server")
    studio_cable.plugged = watch_cable.plugged = True
    await studio.context.set_offline(False)  # the pages hear "online" and reconnect at once

    for page in (studio, watch):
        await page.wait_for_selector("#conn[data-state=open]", timeout=15_000)
    sent = before + during
    await until(lambda: _count(studio, "#feed tr", 7))
    await until(lambda: _count(watch, "#recent li[data-gift-id]", 7))
    await asyncio.sleep(0.3)  # anything repeated would arrive now
    assert sorted(await feed_ids(studio)) == sorted(sent)
    watched = await watch.eval_on_selector_all("#recent li[data-gift-id]", "items => items.map(i => i.dataset.giftId)")
    assert sorted(watched) == sorted(sent)
    await text_is(studio, "#t-gifts", "7")
    await text_is(studio, "#t-coins", str(1 + 1 + 10 + 20 + 30 + 99 + 100))
    assert await watch.is_hidden("#banner")


async def test_studio_feed_stays_capped_through_a_burst_of_gifts(browse: Pages, site: System) -> None:
    """Hundreds of gifts in a few ticks: the studio counts every one, keeps only its newest 100 feed rows, and
    the watch page keeps at most 50 recent gifts."""
    room = await site.open_room("creator1", "Burst")
    studio, watch = await asyncio.gather(
        browse.open("/studio", token("creator1", "creator")), browse.open(f"/watch/{room}", token("viewer9", "viewer"))
    )
    for page in (studio, watch):
        await page.wait_for_selector("#conn[data-state=open]")
    senders = [f"burst{i}" for i in range(8)]
    clients = []
    for sender in senders:
        await site.grant(sender, 100)
        clients.append(await site.connect(sender))
    ids = [await client.gift(room, "rose") for _ in range(50) for client in clients]
    for client in clients:
        await client.wait_for(lambda m: m.get("type") == "gift_result" and m.get("coins") == 50, 20)
    await text_is(studio, "#t-gifts", "400")
    await studio.wait_for_selector("#feed-note >> text=newest 100 of 400")
    assert await studio.locator("#feed tr").count() == 100
    assert len(ids) == 400 and set(await feed_ids(studio)) <= set(ids)
    await until(lambda: _at_most(watch, "#recent li", 50, at_least=1))


async def _at_most(page: Page, selector: str, most: int, at_least: int = 0) -> bool:
    return at_least <= await page.locator(selector).count() <= most


async def _count(page: Page, selector: str, expected: int) -> bool:
    return await page.locator(selector).count() == expected


async def test_live_room_state_lights_up_when_the_server_sends_it(browse: Pages, site: System) -> None:
    """Viewer count, top gifters with levels, goal progress, pools and a busy room's tick summary render from the
    live-room events; a pledge shows the server's answer; a pool started and filled from the page is sent."""
    room = await site.open_room("creator1", "Contract")
    await site.buy("viewer1", "coins_657")
    cable = Cable()
    watch = await browse.open(f"/watch/{room}", token("viewer1", "viewer", "Ann"), cable=cable)
    await watch.wait_for_selector("#conn[data-state=open]")
    await asyncio.sleep(0.2)
    contributors = [{"user": "viewer3", "name": "Cy", "coins": 3000}]
    pool = {
        "id": "p_test",
        "gift": "yacht",
        "price": 7019,
        "pledged": 3000,
        "deadline_ms": 10**13,
        "contributors": contributors,
    }
    cable.inject(
        {
            "type": "events",
            "room": room,
            "events": [
                {"kind": "viewers", "count": 1234},
                {"kind": "leaderboard", "top": [{"user": "viewer3", "name": "Cy", "coins": 3000, "level": 12}]},
                {
                    "kind": "goal_progress",
                    "goal": {"id": "g1", "kind": "gift", "gift": "rose", "target": 10, "progress": 4},
                },
                {"kind": "pool_progress", "pool": pool},
                {"kind": "tick_summary", "gifts": 120, "coins": 180},
            ],
        }
    )
    await watch.wait_for_selector("#viewers >> text=1.2K watching")
    await text_is(watch, "#top li .level", "Lv 12")
    assert await watch.get_attribute("#goal .progress", "aria-valuenow") == "4"
    assert "10 \u00d7 Rose" in await watch.inner_text("#goal")
    await watch.wait_for_selector("#recent li.more >> text=+120 more gifts")
    await watch.fill("#pledge-p_test", "50")
    await watch.click(".pool[data-pool=p_test] button[type=submit]")
    message = watch.locator(".pool[data-pool=p_test] .form-msg")
    await until(lambda: _has_text(message, "Couldn't pledge:", "Pledged"))
    cable.inject(
        {
            "type": "events",
            "room": room,
            "events": [
                {
                    "kind": "goal_completed",
                    "goal": {"id": "g1", "kind": "gift", "gift": "rose", "target": 10, "progress": 10},
                }
            ],
        }
    )
    await watch.wait_for_selector("#goal >> text=Goal reached!")

    # A real group gift: start one from the page, pledge the whole price, see it sent.
    await watch.click(".pool-start summary")
    await watch.select_option("#pool-gift", "money_rain")
    await watch.click("#pool-form button[type=submit]")
    await watch.wait_for_selector("#pool-msg >> text=Pool started.")
    pool_id = await watch.get_attribute(".pool:not([data-pool=p_test])", "data-pool")
    await watch.fill(f"[id='pledge-{pool_id}']", "500")
    await watch.click(f".pool[data-pool='{pool_id}'] button[type=submit]")
    await watch.wait_for_selector(f".pool[data-pool='{pool_id}'][data-status=completed]")
    await watch.wait_for_selector(".spotlight[data-gift=money_rain] >> text=1 viewer together")
    await watch.wait_for_selector("#balance[data-coins='157']")


async def _has_text(locator: Any, *options: str) -> bool:
    text = await locator.inner_text()
    return any(option in text for option in options)


async def test_studio_shows_server_errors_ends_the_stream_and_lists_it(browse: Pages, site: System) -> None:
    """Bad input gets the server's own error; a goal is set (or the server says why not); ending the stream
    shows its summary and adds it to past streams."""
    studio = await browse.open("/studio", token("creator1", "creator", "Cleo"))
    await studio.wait_for_selector("#golive-form:not([hidden])")
    await studio.fill("#title", "x" * 200)
    await studio.click("#golive")
    await studio.wait_for_selector("#golive-msg >> text=(bad_title)")
    room = await go_live(studio, "Short stream")
    await studio.fill("#cashout-amount", "5")
    await studio.click("#cashout")
    await studio.wait_for_selector("#cashout-msg >> text=withdrawals start at 1000 diamonds (below_minimum)")
    await studio.select_option("#goal-kind", "diamonds")
    await studio.fill("#goal-target", "500")
    await studio.click("#goal-set")
    await until(lambda: _has_text(studio.locator("#goal-msg"), "Goal set.", "Couldn't set the goal:"))
    await site.buy("viewer1", "coins_65")
    await http_gift(site, room, "viewer1", "doughnut", 2)
    await text_is(studio, "#t-coins", "60")
    await studio.click("#end")
    await studio.wait_for_selector("#summary-card:not([hidden])")
    await studio.wait_for_selector("#golive-form:not([hidden])")
    assert "60" in await studio.inner_text("#summary")
    await studio.wait_for_selector(f"#sessions tr[data-room='{room}']")


async def test_pages_explain_sign_in_problems_and_an_unreachable_server(browse: Pages, site: System) -> None:
    """No token, an expired token and a viewer in the studio each get a clear message; so does a lost network."""
    room = await site.open_room("creator1", "Signed out")
    anonymous, expired, viewer_in_studio, lobby = await asyncio.gather(
        browse.open(f"/watch/{room}"),
        browse.open(f"/watch/{room}", token("viewer1", "viewer", ttl_s=-10)),
        browse.open("/studio", token("viewer1", "viewer")),
        browse.open("/", token("viewer1"), own_context=True),
    )
    await anonymous.wait_for_selector("#banner >> text=not signed in")
    await anonymous.wait_for_selector("#banner a[href='/dev']")
    await expired.wait_for_selector("#banner >> text=sign-in expired")
    await viewer_in_studio.wait_for_selector("#banner >> text=for creators")
    await lobby.wait_for_selector(f".room-card[data-room='{room}'] a")
    href = await lobby.get_attribute(f".room-card[data-room='{room}'] a", "href")
    assert href is not None and href.startswith(f"/watch/{room}#token=")
    await lobby.context.set_offline(True)
    await lobby.click("#refresh")
    await lobby.wait_for_selector("#banner >> text=Can't reach the server")
    await lobby.context.set_offline(False)


PEOPLE = {"cleo": "Cleo Park", "ann": "Ann", "bob": "Bob", "cy": "Cy Rivera", "dee": "Dee"}
SHOW = {"diamond_hold_s": 0, "withdrawal_diamonds_min": 100, "payout_interval_ms": 200}
SHOW_WALLETS = (("ann", "coins_16500"), ("bob", "coins_6595"), ("cy", "coins_16500"), ("dee", "coins_657"))


def named(user: str, role: str = "viewer") -> dict[str, str]:
    return {"Authorization": f"Bearer {token(user, role, PEOPLE.get(user, user))}"}  # type: ignore[arg-type]


async def show_room(system: System, creator: str, name: str, title: str) -> str:
    headers = {"Authorization": f"Bearer {token(creator, 'creator', name)}"}
    response = await system.http.post("/v1/rooms", headers=headers, json={"title": title})
    assert response.status_code == 201, response.text
    return str(response.json()["room"])


async def show_gifts(system: System, room: str, *gifts: tuple[str, str, int]) -> None:
    """Send (sender, gift, count) gifts as named viewers over HTTP, all at once; return when all settled."""
    await asyncio.gather(*(http_gift(system, room, s, g, n, named(s)) for s, g, n in gifts))


@pytest.mark.parametrize("site", [SHOW], indirect=True)
async def test_every_page_fits_a_phone_and_shows_a_busy_stream(browse: Pages, site: System) -> None:
    """A busy stream on every page: nothing overflows a 390 px wide screen; GIFTING_SCREENSHOTS=DIR saves the
    screenshots shown in the README."""
    shots = Path(os.environ["GIFTING_SCREENSHOTS"]) if os.environ.get("GIFTING_SCREENSHOTS") else None
    await asyncio.gather(*(site.buy(user, bundle) for user, bundle in SHOW_WALLETS))
    past = await show_room(site, "cleo", PEOPLE["cleo"], "Sunday sketching")
    await show_gifts(site, past, ("ann", "swan", 1), ("bob", "cap", 3), ("cy", "galaxy", 1), ("dee", "rose", 40))
    assert (await site.http.post(f"/v1/rooms/{past}/end", headers=named("cleo", "creator"))).status_code == 200
    for account in ("acct_sandbox_ok", "acct_sandbox_fail"):
        response = await site.http.post(
            "/v1/wallet/withdrawals",
            headers={**named("cleo", "creator"), "Idempotency-Key": gift_id()},
            json={"diamonds": 300, "payout_account": account},
        )
        assert response.status_code == 201, response.text
    await show_room(site, "max", "Max Weber", "Morning yoga flow")
    await show_room(site, "ivy", "Ivy", "Speedrun practice: any% glitchless")
    room = await show_room(site, "cleo", PEOPLE["cleo"], "Late night lo-fi beats")
    await site.http.post(
        f"/v1/rooms/{room}/goals", headers=named("cleo", "creator"), json={"gift": "rose", "target": 100}
    )

    creator = token("cleo", "creator", PEOPLE["cleo"])
    studio, watch, phone, overlay, lobby, dev = await asyncio.gather(
        browse.open("/studio", creator),
        browse.open(f"/watch/{room}", token("ann", "viewer", "Ann")),
        browse.open(f"/watch/{room}", token("bob", "viewer", "Bob"), viewport=PHONE),
        browse.open(f"/overlay/{room}", creator, viewport=OVERLAY),
        browse.open("/", token("ann", "viewer", "Ann")),
        browse.open("/dev"),
    )
    for page in (studio, watch, phone):
        await page.wait_for_selector("#conn[data-state=open]")
    await show_gifts(site, room, *[("dee", "rose", 1)] * 12, ("bob", "sunglasses", 1), ("cy", "heart", 5))
    await show_gifts(site, room, ("ann", "confetti", 2), *[("dee", "rose", 1)] * 6, ("cy", "sunglasses", 1))
    await text_is(studio, "#t-gifts", "22")
    if shots:
        await asyncio.sleep(1.6)  # the next top-gifters push, for the picture
    await show_gifts(site, room, ("ann", "galaxy", 1), *[("dee", "rose", 1)] * 4, ("bob", "doughnut", 3))
    # Screenshots are taken as soon as each page shows its animation (they take a moment each).
    await watch.wait_for_selector(".spotlight[data-gift=galaxy]")
    if shots:
        shots.mkdir(parents=True, exist_ok=True)
        await watch.screenshot(path=str(shots / "pages-watch.png"), animations="disabled")
        await phone.screenshot(path=str(shots / "pages-watch-phone.png"), animations="disabled")
    if shots:
        await overlay.wait_for_selector(".alert.tier-premium")
        await overlay.evaluate(CHECKERBOARD)  # the page is transparent: show that in the picture
        await overlay.screenshot(path=str(shots / "pages-overlay.png"), animations="disabled")
        await studio.screenshot(path=str(shots / "pages-studio.png"), full_page=True, animations="disabled")

    await lobby.wait_for_selector(".room-card >> nth=2")
    await dev.wait_for_selector("#quick a")
    if shots:
        await lobby.screenshot(path=str(shots / "pages-lobby.png"))
        await dev.screenshot(path=str(shots / "pages-dev.png"))
    for page in (lobby, watch, studio, dev):
        await page.set_viewport_size(PHONE)
        await asyncio.sleep(0.1)
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"{page.url.split('#')[0]}: {width} px wide on a phone"
    if shots:
        await studio.screenshot(path=str(shots / "pages-studio-phone.png"))


CHECKERBOARD = """() => {
  const s = document.body.style;
  const square = "#353a45 25%, transparent 25%";
  s.backgroundColor = "#2b2f38";
  s.backgroundImage = [
    `linear-gradient(45deg, ${square})`, `linear-gradient(-45deg, ${square})`,
    "linear-gradient(45deg, transparent 75%, #353a45 75%)", "linear-gradient(-45deg, transparent 75%, #353a45 75%)",
  ].join(", ");
  s.backgroundSize = "40px 40px";
  s.backgroundPosition = "0 0, 0 20px, 20px -20px, -20px 0";
}"""


async def test_studio_and_lobby_find_a_creators_room_behind_a_full_lobby(browse: Pages, site: System) -> None:
    """With 120 newer rooms of other creators ahead of it, the studio still finds its creator's live stream
    (GET /v1/creators/{c}/live), and the lobby pages on to it with "More streams"."""
    room = await site.open_room("creator1", "Mine")
    for i in range(120):
        await site.app.state.rooms.open(f"flood{i}", "Flood", f"Flood {i}")
    studio = await browse.open("/studio", token("creator1", "creator", "Cleo"))
    await studio.wait_for_selector("#stream-live:not([hidden])")
    await studio.wait_for_function("() => document.querySelector('#overlay-url').value.includes('#token=')")
    assert f"/overlay/{room}" in await studio.input_value("#overlay-url")
    lobby = await browse.open("/", token("viewer1"))
    for shown in (50, 100):
        await lobby.wait_for_function("n => document.querySelectorAll('#rooms li').length === n", arg=shown)
        await lobby.click("#more")
    await lobby.wait_for_selector(f"#rooms li[data-room='{room}']")
    await lobby.wait_for_selector("#more", state="hidden")


# Matches and the multi-guest stage (issue #13) -------------------------------------------------------------

MATCH_SITE = {"payout_interval_ms": 50}  # the worker sweeps matches every payout interval


@pytest.mark.parametrize("site", [MATCH_SITE], indirect=True)
async def test_watch_page_shows_the_match_live_and_gifts_to_the_chosen_guest(browse: Pages, site: System) -> None:
    """A viewer picks a guest on stage as the recipient and gifts from the page; the score bar (and the
    overlay's) follows both rooms' gifts, the countdown runs, and the result with each side's MVPs appears
    when the match ends."""
    room_a, room_b = await site.open_room("cleo"), await site.open_room("max")
    await site.buy("ann", "coins_65")
    await site.buy("bob", "coins_65")
    invited = await site.http.post(
        f"/v1/rooms/{room_a}/stage/invites", headers=site.auth("cleo", "creator"), json={"guest": "ivy"}
    )
    assert invited.status_code == 201
    await site.http.post(f"/v1/rooms/{room_a}/stage/accept", headers=site.auth("ivy", "creator"))
    invite = await site.http.post(
        "/v1/matches", headers=site.auth("cleo", "creator"), json={"opponent": "max", "duration_s": 6}
    )
    match = invite.json()["id"]
    assert (await site.http.post(f"/v1/matches/{match}/accept", headers=site.auth("max", "creator"))).is_success

    watch = await browse.open(f"/watch/{room_a}", token("ann", "viewer", "Ann"))
    overlay = await browse.open(f"/overlay/{room_a}", token("cleo", "creator", "Cleo"), viewport=OVERLAY)
    await watch.wait_for_selector("#conn[data-state=open]")
    await watch.wait_for_selector("#match-card:not([hidden])")
    await watch.wait_for_selector("#recipient-row:not([hidden])")
    await watch.select_option("#recipient", "ivy")
    await watch.click(".gift[data-gift=finger_heart]")
    await http_gift(site, room_b, "bob", "rose")
    await text_is(watch, "#score-a", "cleo 5")
    await text_is(watch, "#score-b", "1 max")
    assert ":" in await watch.inner_text("#match-clock")  # the countdown, m:ss
    await text_is(overlay, "#bar-a", "cleo 5")
    await text_is(overlay, "#bar-b", "1 max")
    assert (await site.wallet("ivy"))["diamonds"] > 0 and (await site.wallet("cleo"))["diamonds"] == 0
    await watch.wait_for_selector("#match-result >> text=cleo wins", timeout=20_000)
    assert "Ann" in await watch.inner_text("#match .match-mvps")
    if os.environ.get("GIFTING_SCREENSHOTS"):
        shot = Path(os.environ["GIFTING_SCREENSHOTS"]) / "pages-watch-match.png"
        await asyncio.to_thread(shot.parent.mkdir, parents=True, exist_ok=True)
        await watch.screenshot(path=str(shot), animations="disabled")
        await overlay.screenshot(path=str(shot.parent / "pages-overlay-match.png"), animations="disabled")


@pytest.mark.parametrize("site", [MATCH_SITE], indirect=True)
async def test_studio_invites_declines_accepts_and_shows_the_match(browse: Pages, site: System) -> None:
    """One studio invites another creator; the invited studio shows the invite, declines it, accepts the next;
    both studios then show the same live score, moved by a gift in either room."""
    cleo = await browse.open("/studio", token("cleo", "creator", "Cleo"))
    max_ = await browse.open("/studio", token("max", "creator", "Max"))
    await go_live(cleo, "Cleo's room")
    room_b = await go_live(max_, "Max's room")
    for page in (cleo, max_):
        await page.wait_for_selector("#conn[data-state=open]")

    async def invite() -> None:
        await cleo.fill("#match-opponent", "max")
        await cleo.click("#match-invite")
        await cleo.wait_for_selector("#match-msg >> text=Invited max")

    await invite()
    await max_.click("#match-invites li button >> text=Decline")
    await max_.wait_for_selector("#match-invites li", state="detached")
    await invite()
    await max_.click("#match-invites li button >> text=Accept")
    await site.buy("bob", "coins_65")
    await http_gift(site, room_b, "bob", "finger_heart")
    for page in (cleo, max_):
        await text_is(page, "#studio-score", "cleo 0 : 5 max")
        await text_is(page, "#studio-match-state", "Live")


@pytest.mark.parametrize("site", [{"reward_watch_period_s": 1, "reward_first_gift_coins": 0}], indirect=True)
async def test_watch_page_shows_earned_rewards_claims_the_streak_and_spends_them(browse: Pages, site: System) -> None:
    """Watching earns reward coins the page shows as they come; the daily bonus is claimed once; a viewer with
    no bought coins sends a gift paid with reward coins."""
    funded = await site.http.post(
        "/v1/admin/rewards/budget",
        headers={**site.auth("boss", "admin"), "Idempotency-Key": "fund-1"},
        json={"coins": 1000},
    )
    assert funded.status_code == 201, funded.text
    room = await site.open_room("creator1")
    viewer = await browse.open(f"/watch/{room}", token("viewer1", "viewer", "Ann"))
    await viewer.wait_for_selector("#conn[data-state=open]")
    await viewer.wait_for_selector("#rewards:not([hidden])")
    assert not await viewer.is_enabled(".gift[data-gift=rose]")  # no coins of any kind yet
    # The hub counts the watching itself (a 1 s period here); the page shows it as it comes.
    await viewer.wait_for_function("() => Number(document.querySelector('#reward-coins').dataset.coins) >= 1")
    await viewer.click("#reward-claim")
    await viewer.wait_for_selector(".toast >> text=Daily bonus: +2 reward coins (1-day streak)")
    await viewer.wait_for_selector("#reward-claim[hidden]", state="attached")
    assert "1-day streak" in await viewer.inner_text("#reward-streak")
    again = await site.http.post("/v1/rewards/streak", headers=site.auth("viewer1"))
    assert again.json()["error"]["code"] == "reward_already_claimed"

    await viewer.click(".gift[data-gift=rose]")  # paid with reward coins: the viewer never bought any
    statement = site.auth("viewer1")

    async def paid_with_rewards() -> bool:
        items = (await site.http.get("/v1/wallet/transactions", headers=statement)).json()["transactions"]
        return any(i["kind"] == "gift_sent" and i["ledger"] == "rewards" for i in items)

    await until(paid_with_rewards)
    assert (await site.wallet("viewer1"))["coins"] == 0
    report = await run_audit(site.redis)
    assert report.clean, report.summary()


@pytest.mark.parametrize("site", [MATCH_SITE], indirect=True)
async def test_studio_invites_guests_on_stage_lists_them_and_removes_one(browse: Pages, site: System) -> None:
    """The studio invites two guests; each appears once they accept (the `stage` event); Remove takes one off,
    after which a gift to them is refused; inviting yourself shows the error code."""
    cleo = await browse.open("/studio", token("cleo", "creator", "Cleo"))
    room = await go_live(cleo, "Cleo's room")
    await cleo.wait_for_selector("#conn[data-state=open]")
    assert await cleo.is_visible("#stage-empty")
    for guest in ("ivy", "joe"):
        await cleo.fill("#stage-guest", guest)
        await cleo.click("#stage-invite")
        await cleo.wait_for_selector(f"#stage-msg >> text=Invited {guest}")
        accepted = await site.http.post(f"/v1/rooms/{room}/stage/accept", headers=site.auth(guest, "creator"))
        assert accepted.status_code == 200, accepted.text
        await cleo.wait_for_selector(f"#stage-guests li[data-guest={guest}]")
    assert await cleo.is_hidden("#stage-empty")
    if os.environ.get("GIFTING_SCREENSHOTS"):
        shot = Path(os.environ["GIFTING_SCREENSHOTS"]) / "pages-studio-stage.png"
        await asyncio.to_thread(shot.parent.mkdir, parents=True, exist_ok=True)
        await cleo.locator("#stage-card").screenshot(path=str(shot), animations="disabled")
    await cleo.click("#stage-guests li[data-guest=ivy] button >> text=Remove")
    await cleo.wait_for_selector("#stage-guests li[data-guest=ivy]", state="detached")
    await cleo.wait_for_selector("#stage-msg >> text=ivy left the stage.")
    assert (await site.http.get(f"/v1/rooms/{room}/stage")).json()["guests"] == ["joe"]
    await site.buy("ann", "coins_65")
    refused = await site.http.post(
        f"/v1/rooms/{room}/gifts", headers=site.auth("ann"), json={"gift": "rose", "gift_id": gift_id(),
                                                                    "count": 1, "to": "ivy"},
    )  # fmt: skip
    assert refused.json()["reason"] == "recipient_not_on_stage"
    await cleo.fill("#stage-guest", "cleo")  # the host is always on stage
    await cleo.click("#stage-invite")
    await cleo.wait_for_selector("#stage-msg.error >> text=bad_guest")


# Perks and fan clubs --------------------------------------------------------------------------------------


async def test_watch_page_buys_a_highlight_sees_entrances_badges_and_joins_the_fan_club(
    browse: Pages, site: System
) -> None:
    """A viewer buys a highlighted message (pinned on every viewer's page), sees another viewer's entrance
    effect when they join, joins the creator's fan club from the page, and their gifts show the club badge."""
    club = {"membership_gift": "finger_heart", "member_gift": None, "free_premium": False}
    assert (await site.http.put("/v1/fanclub", headers=site.auth("cleo", "creator"), json=club)).status_code == 200
    room = await site.open_room("cleo")
    await site.buy("ann", "coins_328")
    await site.buy("bob", "coins_328")
    bought = await site.http.post(
        f"/v1/rooms/{room}/perks", headers={**site.auth("bob"), "Idempotency-Key": "e1"}, json={"perk": "entrance_week"}
    )
    assert bought.json()["status"] == "settled", bought.text
    ann, other = await asyncio.gather(
        browse.open(f"/watch/{room}", token("ann", "viewer", "Ann")),
        browse.open(f"/watch/{room}", token("cid", "viewer", "Cid"), own_context=True),
    )
    for page in (ann, other):
        await page.wait_for_selector("#conn[data-state=open]")
    await ann.wait_for_selector("#perk option[value=highlight_small]", state="attached")
    await ann.select_option("#perk", "highlight_small")
    await ann.fill("#perk-message", "Hello from Ann")
    await ann.click("#perk-form button[type=submit]")
    await ann.wait_for_selector("#perk-msg >> text=pinned")
    for page in (ann, other):
        await page.wait_for_selector("#pins .pin >> text=Hello from Ann")
    await ann.wait_for_selector(f"#balance[data-coins='{328 - 50}']")

    bob = await site.connect("bob")
    await bob.join(room)
    await other.wait_for_selector("#entrances .entrance[data-user=bob]")

    await ann.wait_for_selector("#fan-card:not([hidden])")
    await ann.click("#fan-join")
    await other.wait_for_selector("#recent li .fan-badge >> text=♥1")
    await ann.wait_for_selector("#fan-status >> text=Member")


async def test_studio_marks_premium_chooses_member_perks_and_lists_members(browse: Pages, site: System) -> None:
    """The studio makes the stream premium and saves the fan club's choices; a viewer without a ticket is
    offered one on the watch page and gets in with it; a member joins by gift and appears with their level."""
    studio = await browse.open("/studio", token("cleo", "creator", "Cleo"))
    room = await go_live(studio, "Premium night")
    await studio.fill("#premium-coins", "30")
    await studio.click("#premium-set")
    await studio.wait_for_selector("#premium-msg >> text=30 coins per ticket")
    await studio.wait_for_selector("#club-gift option[value=rose]", state="attached")
    await studio.select_option("#club-gift", "rose")
    await studio.select_option("#club-member-gift", "cap")
    await studio.check("#club-free")
    await studio.click("#club-save")
    await studio.wait_for_selector("#club-msg >> text=Fan club saved")

    await site.buy("bob", "coins_65")
    watch = await browse.open(f"/watch/{room}", token("bob", "viewer", "Bob"), own_context=True)
    await watch.wait_for_selector("#ticket-card:not([hidden])")
    await text_is(watch, "#ticket-price", "30")
    await watch.click("#ticket-buy")
    await watch.wait_for_selector("#ticket-card", state="hidden")
    await watch.wait_for_selector("#balance[data-coins='35']")
    await site.grant("ann", 100)
    ann = await site.connect("ann")
    assert (await ann.join(room))["code"] == "ticket_required"
    await http_gift(site, room, "ann", "rose")  # the membership gift: ann is a member, free entry
    await watch.wait_for_selector("#recent li .fan-badge")
    assert (await ann.join(room))["type"] == "joined"
    await studio.click("#members-refresh")
    await studio.wait_for_selector("#members tr[data-user=ann] >> text=active")
    assert await studio.inner_text("#members tr[data-user=ann] td:nth-child(2)") == "1"
