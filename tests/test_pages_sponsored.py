"""Sponsored gifts in the pages (headless Chromium, as tests/test_pages.py): the brand page creates, funds and
reports a campaign; the watch page offers its gift free, "sponsored by" the brand, and the room shows it so."""

from __future__ import annotations

from gifting import keys
from tests import test_pages
from tests.conftest import System, token
from tests.test_pages import Pages, text_is

# The browser and the served site, shared with tests/test_pages.py (pytest finds fixtures by name).
browser, site, browse = test_pages.browser, test_pages.site, test_pages.browse

COFFEE = 10


async def test_brand_funds_a_campaign_and_a_viewer_sends_its_gift_free(browse: Pages, site: System) -> None:
    """The brand creates a 100-coin campaign for coffee on its page; a viewer with no coins sends it free from the
    watch page; both viewers' feeds and the creator's studio say "sponsored by Acme"; the brand's report counts it."""
    await site.grant("acme", 500)
    brand = await browse.open("/brand", token("acme", "brand", "Acme"))
    await text_is(brand, "#balance", "500")
    await brand.fill("#c-name", "Coffee week")
    await brand.select_option("#c-gift", "coffee")
    await brand.fill("#c-budget", "100")
    await brand.click("#create")
    await brand.wait_for_selector("#campaigns li[data-status=active]")
    await text_is(brand, "#campaigns [data-figure=budget] strong", "100")
    await text_is(brand, "#balance", "400")

    studio = await browse.open("/studio", token("c1", "creator", "Cleo"), own_context=True)
    room = await test_pages.go_live(studio, "Coffee hour")
    viewer = await browse.open(f"/watch/{room}", token("v1", "viewer", "Ann"))
    other = await browse.open(f"/watch/{room}", token("v2", "viewer", "Bob"), own_context=True)
    for page in (viewer, other):
        await page.wait_for_selector("#conn[data-state=open]")
    await viewer.wait_for_selector("#sponsored:not([hidden]) .sponsored-gift[data-gift=coffee]")
    assert "sponsored by Acme" in await viewer.inner_text("#sponsored-list")
    await viewer.click(".sponsored-gift[data-gift=coffee]")
    await viewer.wait_for_selector(".toast.ok >> text=sponsored by Acme")
    for page in (viewer, other):
        await page.wait_for_selector("#recent li .sponsor-chip >> text=sponsored by Acme")
    await studio.wait_for_selector("#feed tr .sponsor-chip >> text=sponsored by Acme")  # the creator's feed too
    assert await site.wallet("v1") == {"coins": 0, "diamonds": 0}

    await brand.reload()
    await text_is(brand, "#campaigns [data-figure=sends] strong", "1")
    await text_is(brand, "#campaigns [data-figure=spent] strong", str(COFFEE))
    await text_is(brand, "#campaigns [data-figure=budget] strong", str(100 - COFFEE))
    await text_is(brand, "#campaigns [data-figure=creators] strong", "1")
    await brand.click("#campaigns button >> text=End now")
    await brand.wait_for_selector("#campaigns li[data-status=closed]")
    await text_is(brand, "#balance", str(500 - COFFEE))
    campaign = await brand.get_attribute("#campaigns li", "data-campaign")
    assert await site.redis.hget(keys.campaign(str(campaign)), "returned") == str(100 - COFFEE)


async def test_brand_page_refuses_other_roles(browse: Pages, site: System) -> None:
    """A viewer's token on the brand page gets a banner saying the page is for brands."""
    page = await browse.open("/brand", token("v1", "viewer"))
    await page.wait_for_selector("#banner:not([hidden]) >> text=for brands")


async def test_brand_page_is_served_with_the_pages_policy(site: System) -> None:
    """/brand is HTML with the same same-origin CSP as the other pages, and its scripts and styles ship here."""
    response = await site.http.get("/brand")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in response.headers["content-security-policy"]
    for ref in ("/static/js/brand.js", "/static/js/sponsored.js", "/static/css/app.css"):
        assert (await site.http.get(ref)).status_code == 200, ref
