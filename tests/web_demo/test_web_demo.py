"""The web demo: its routes (pages, dev tokens) and the pages themselves in headless Chromium.

The browser tests run the real server in-process on 127.0.0.1 and drive Debian's Chromium with
fake camera and microphone. Screenshots of every step go to test-artifacts/web_demo/.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import os
import re
import time
from pathlib import Path
from typing import AsyncIterator

import pytest
from aiohttp import web

from signalling.app.factory import create_app
from signalling.auth.tokens import TOKENS, Role, TokenIssuer
from signalling.core.settings import Settings
from tests.externals import require
from web_demo.routes import STATIC

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",
    # getDisplayMedia picks the (fake) screen without a picker.
    "--auto-select-desktop-capture-source=Entire screen",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "web_demo"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}


# --- routes ---------------------------------------------------------------------------------


async def test_pages_and_assets_are_served_same_origin_only(client) -> None:  # type: ignore[no-untyped-def]
    for path, marker in (("/", "start-form"), ("/client", "search-form"), ("/expert", "profile-form")):
        resp = await client.get(path)
        assert resp.status == 200, path
        assert marker in await resp.text()
        csp = resp.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp
    resp = await client.get("/static/js/signalling.js")
    assert resp.status == 200
    assert "javascript" in resp.headers["Content-Type"]
    assert (await client.get("/static/js/nope.js")).status == 404
    assert (await client.get("/static/../routes.py")).status in (403, 404)


def test_no_external_resources_in_the_static_files() -> None:
    external = re.compile(r"""(?:src|href)\s*=\s*["'](?:https?:)?//|from\s+["']https?:|import\(\s*["']https?:|url\(\s*["']?https?:""")
    files = [p for p in STATIC.rglob("*") if p.suffix in {".html", ".js", ".css"}]
    assert len(files) >= 10
    for path in files:
        assert not external.search(path.read_text()), f"{path.name} loads something from another origin"


async def test_dev_token_is_minted_with_the_apps_secret(client, settings) -> None:  # type: ignore[no-untyped-def]
    resp = await client.post("/api/dev/token", json={"user": "alice", "role": "expert", "name": "Alice A."})
    assert resp.status == 200
    body = await resp.json()
    assert resp.headers["Cache-Control"] == "no-store"
    identity = TokenIssuer(settings.secret).verify(body["token"])
    assert (identity.user_id, identity.role, identity.name) == ("alice", Role.EXPERT, "Alice A.")
    resp = await client.post("/api/dev/token", json={"user": "bob", "role": "client"})
    assert TokenIssuer(settings.secret).verify((await resp.json())["token"]).name == "bob"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ("not json", "invalid_json"),
        ([1, 2], "invalid_json"),
        ({"role": "client"}, "invalid_user"),
        ({"user": "", "role": "client"}, "invalid_user"),
        ({"user": "x" * 129, "role": "client"}, "invalid_user"),
        ({"user": "a\nb", "role": "client"}, "invalid_user"),
        ({"user": "eve", "role": "admin"}, "invalid_role"),
        ({"user": "eve", "role": "client", "name": "n" * 81}, "invalid_name"),
        ({"user": "eve", "role": "client", "name": 7}, "invalid_name"),
    ],
)
async def test_dev_token_refuses_bad_input_with_a_code(client, body, code) -> None:  # type: ignore[no-untyped-def]
    if isinstance(body, str):
        resp = await client.post("/api/dev/token", data=body, headers={"Content-Type": "application/json"})
    else:
        resp = await client.post("/api/dev/token", json=body)
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == code


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        # A cross-site form can post text/plain without a preflight; it gets nothing.
        ({"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
        ({"Content-Type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type"),
        # DNS rebinding: the attacker's name now points at 127.0.0.1, but the browser still sends it.
        ({"Host": "attacker.example:8080"}, 403, "forbidden_host"),
        ({"Host": "127.0.0.1.attacker.example"}, 403, "forbidden_host"),
        ({"Origin": "http://attacker.example"}, 403, "origin_forbidden"),
        ({"Origin": "null"}, 403, "origin_forbidden"),
        ({"Sec-Fetch-Site": "cross-site"}, 403, "origin_forbidden"),
    ],
)
async def test_dev_tokens_only_for_this_machines_own_pages(client, headers, status, code) -> None:  # type: ignore[no-untyped-def]
    sent = {"Content-Type": "application/json", **headers}
    resp = await client.post("/api/dev/token", data=json.dumps({"user": "erin", "role": "expert"}), headers=sent)
    assert resp.status == status and (await resp.json())["error"]["code"] == code


async def test_dev_tokens_for_the_servers_own_page_and_for_curl(client) -> None:  # type: ignore[no-untyped-def]
    own = f"http://127.0.0.1:{client.server.port}"
    for headers in ({"Origin": own, "Sec-Fetch-Site": "same-origin"}, {"Host": f"localhost:{client.server.port}"}, {}):
        resp = await client.post("/api/dev/token", json={"user": "erin", "role": "expert"}, headers=headers)
        assert resp.status == 200, (headers, await resp.text())


async def test_dev_tokens_live_no_longer_than_the_servers_cap(aiohttp_client, tmp_path) -> None:  # type: ignore[no-untyped-def]
    client = await aiohttp_client(create_app(Settings(data_dir=tmp_path, token_max_ttl=600)))
    resp = await client.post("/api/dev/token", json={"user": "ann", "role": "client"})
    assert resp.status == 200 and (await resp.json())["expires_in"] == 600


async def test_no_dev_tokens_on_a_public_bind(aiohttp_client, tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(host="0.0.0.0", data_dir=tmp_path, secret="public-secret-0123456789abcdef-0123456789")
    assert settings.dev_tokens is False
    client = await aiohttp_client(create_app(settings))
    resp = await client.post("/api/dev/token", json={"user": "mallory", "role": "client"})
    assert resp.status in (404, 405)
    assert (await client.get("/")).status == 200


async def test_no_demo_means_no_pages_and_no_tokens(aiohttp_client, tmp_path) -> None:  # type: ignore[no-untyped-def]
    client = await aiohttp_client(create_app(Settings(data_dir=tmp_path, demo=False)))
    assert (await client.get("/")).status == 404
    assert (await client.post("/api/dev/token", json={"user": "a", "role": "client"})).status in (404, 405)


# --- the browser ----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[tuple[str, web.Application]]:
    """The whole app on a free 127.0.0.1 port, in this process: its base URL and the app."""
    app = create_app(settings)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}", app
    finally:
        await runner.cleanup()


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[str, web.Application]]:
    """The app with a 2 s billing unit."""
    async with serve(Settings(data_dir=tmp_path / "var", port=0, media_loopback=True,
                              billing_unit_seconds=2)) as served:
        yield served


@pytest.fixture
def server(served: tuple[str, web.Application]) -> str:
    return served[0]


@pytest.fixture
async def browser():  # type: ignore[no-untyped-def]
    require(os.path.exists(CHROMIUM), "chromium")
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            # The last state of every page, and its console, for whoever reads a failure.
            for i, context in enumerate(browser.contexts):
                for j, page in enumerate(context.pages):
                    await shoot(page, f"zz-last-{i}-{j}", check=False)
                    log = getattr(page, "console_log", [])
                    (ARTIFACTS / f"zz-last-{i}-{j}.log").write_text("\n".join(log))
            await browser.close()


async def sign_in(browser, base: str, role: str, name: str, viewport=DESKTOP, init_script: str = ""):  # type: ignore[no-untyped-def]
    """A fresh browser context (its own storage) signed in through the start page."""
    page = await new_page(browser, base, viewport, init_script)
    await page.goto("/")
    await page.get_by_label("Give help" if role == "expert" else "Get help").check()
    await page.get_by_label("Your name").fill(name)
    await page.get_by_role("button", name="Continue").click()
    await page.wait_for_url(f"**/{role}")
    return page


async def new_page(browser, base: str, viewport=DESKTOP, init_script: str = ""):  # type: ignore[no-untyped-def]
    """A page in a fresh context that records its errors, console and socket frames."""
    # bypass_csp: Playwright's wait_for_function evaluates strings, which the demo's CSP forbids.
    context = await browser.new_context(
        viewport=viewport, base_url=base, permissions=["camera", "microphone"], bypass_csp=True
    )
    if init_script:
        await context.add_init_script(init_script)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors  # type: ignore[attr-defined]
    console: list[str] = []
    page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
    page.on("websocket", lambda ws: ws.on("framereceived", lambda f: console.append(f"ws< {str(f)[:300] if 'media.offer' not in str(f) else str(f)}")))
    page.on("websocket", lambda ws: ws.on("framesent", lambda f: console.append(f"ws> {str(f)[:300]}")))
    page.console_log = console  # type: ignore[attr-defined]
    return page


async def shoot(page, name: str, check: bool = True) -> None:  # type: ignore[no-untyped-def]
    """A screenshot of the step, and axe-core's verdict on the page as it is at that step."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    if check:
        await assert_accessible(page, name)


UNLABELLED_CONTROLS = """() => [...document.querySelectorAll('input, select, textarea, button')]
  .filter((n) => n.type !== 'hidden' && n.getClientRects().length)
  .filter((n) => !(n.labels && n.labels.length) && !n.getAttribute('aria-label')
                 && !n.getAttribute('aria-labelledby') && !(n.tagName === 'BUTTON' && n.textContent.trim()))
  .map((n) => n.outerHTML.slice(0, 120))"""

HORIZONTAL_OVERFLOW = "() => document.scrollingElement.scrollWidth - window.innerWidth"

AXE = Path(__file__).resolve().parent / "vendor" / "axe-core" / "axe.min.js"
AXE_RUN = """async () => {
  const result = await axe.run(document, { resultTypes: ['violations'] });
  return result.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical')
    .map((v) => `${v.id} (${v.impact}): ${v.nodes.slice(0, 3).map((n) => n.target.join(' ')).join(', ')}`);
}"""


@functools.cache
def axe_source() -> str:
    return AXE.read_text()


async def assert_accessible(page, where: str) -> None:  # type: ignore[no-untyped-def]
    """axe-core (WCAG 2.x A/AA rules, contrast included) finds no serious or critical violation."""
    if not await page.evaluate("typeof window.axe !== 'undefined'"):
        # Evaluated over the DevTools protocol, which the page's CSP does not govern.
        await page.evaluate(f"(() => {{ {axe_source()}\n }})()")
    assert await page.evaluate(AXE_RUN) == [], where


async def test_pages_are_labelled_and_fit_a_phone(server, browser) -> None:  # type: ignore[no-untyped-def]
    start = await (await browser.new_context(viewport=PHONE, base_url=server)).new_page()
    await start.goto("/")
    await start.get_by_role("button", name="Continue").click()
    assert await start.get_by_text("Please enter your name.").is_visible()
    assert await start.get_by_label("Your name").get_attribute("aria-invalid") == "true"
    await shoot(start, "00-start-phone")
    # A pasted token (what a non-loopback server needs) decides the role, whatever is ticked.
    await start.get_by_text("Advanced").click()
    await start.get_by_label("Or paste a token").fill("not-a-token")
    await start.get_by_role("button", name="Continue").click()
    await start.get_by_text("That does not look like an expertcall token.").wait_for()
    minted = await (await start.request.post("/api/dev/token", data={"user": "tess", "role": "expert", "name": "Tess"})).json()
    await start.get_by_label("Or paste a token").fill(minted["token"])
    await start.get_by_role("button", name="Continue").click()
    await start.wait_for_url("**/expert")
    assert "Tess · expert" in await start.locator("#who").inner_text()
    await start.context.close()

    expert = await sign_in(browser, server, "expert", "Ada Expert")
    client = await sign_in(browser, server, "client", "Cleo Client", viewport=PHONE)
    for page, name in ((expert, "expert"), (client, "client")):
        assert await page.evaluate(UNLABELLED_CONTROLS) == [], name
        assert await page.evaluate(HORIZONTAL_OVERFLOW) <= 0, name
        assert page.errors == [], name  # type: ignore[attr-defined]
    assert await expert.get_by_role("heading", name="Expert console").is_visible()
    assert await expert.get_by_label("Online").count() == 1
    assert await expert.get_by_label("Price", exact=True).input_value() == "1.00"
    assert await client.get_by_role("search").is_visible()
    assert await client.locator("#queue-position").get_attribute("aria-live") == "assertive"
    assert await expert.locator("#incoming").get_attribute("aria-live") == "assertive"

    # Keyboard: the skip link comes first; the view's heading takes focus and Tab goes on to the
    # first control of the search form.
    first = "document.querySelector('a[href], button, input, select, textarea').className"
    assert await client.evaluate(first) == "skip-link"
    assert await client.evaluate("document.activeElement.id") == "browse-heading"
    await client.keyboard.press("Tab")
    assert await client.evaluate("document.activeElement.id") == "search-q"

    # Money is formatted from integer minor units by the page's own module.
    money = await client.evaluate(
        """async () => { const m = await import('/static/js/money.js');
           return [m.formatMoney(1999, 'USD', 'en-US'), m.formatMoney(500, 'JPY', 'en-US'),
                   m.formatMoney(1234567, 'KWD', 'en-US'), m.parseMoneyInput('12.5', 'USD'),
                   m.parseMoneyInput('0.1', 'JPY'), m.minorToDecimalString(-5, 'EUR')]; }"""
    )
    assert money == ["$19.99", "¥500", "KWD\u00a01,234.567", 1250, None, "-0.05"]

    # The budget cap: asked of the server (which enforces it), shown from its billing.cost, a
    # warning near it by integer comparison of minor units, and the server's refusals explained.
    budget = await client.evaluate(
        """async () => {
          const { InCallView } = await import('/static/js/incall.js');
          const root = document.createElement('div');
          document.body.append(root);
          const asked = [];
          const onBudget = async (minor) => {
            asked.push(minor);
            if (minor < 200) throw Object.assign(new Error('no'), { code: 'budget_below_spent' });
          };
          const view = new InCallView(root, { role: 'client', peerName: 'X', onHangUp: () => {}, onChat: async () => {}, onBudget });
          const hint = () => root.querySelector('[data-ref=budget-hint]').textContent;
          const submit = async (text) => {
            root.querySelector('#budget-input').value = text;
            root.querySelector('[data-ref=budget-form]').requestSubmit();
            await new Promise((r) => setTimeout(r, 0));
          };
          view.setCost({ amount: 150, currency: 'USD', budget: null });
          await submit('2.50');
          view.setCost({ amount: 150, currency: 'USD', budget: { amount: 250, currency: 'USD' } });
          const set = hint();
          view.setCost({ amount: 200, currency: 'USD' });
          const near = hint();
          await submit('1');
          const refused = [hint(), root.querySelector('#budget-input').getAttribute('aria-invalid')];
          await submit('abc');
          const invalid = hint();
          view.destroy();
          root.remove();
          return [asked, set, near, refused, invalid];
        }"""
    )
    assert budget == [
        [250, 100],
        "The call ends at $2.50.",
        "Nearly at your cap of $2.50.",
        ["That is less than the call has cost already.", "true"],
        "Enter an amount such as 5 or 12.50.",
    ]
    # The accessibility check can fail: a grey-on-grey, nameless button is caught.
    await client.evaluate(
        """() => { const b = document.createElement('button'); b.id = 'bad'; b.style.cssText = 'color:#bbb;background:#ccc';
                   b.innerHTML = '<svg width="9" height="9"></svg>'; document.body.append(b); }"""
    )
    with pytest.raises(AssertionError, match="button-name"):
        await assert_accessible(client, "a deliberately bad button")
    await client.evaluate("document.getElementById('bad').remove()")
    await shoot(expert, "01-expert-console")
    await shoot(client, "01-client-phone")
    await expert.set_viewport_size(PHONE)
    assert await expert.evaluate(HORIZONTAL_OVERFLOW) <= 0
    await shoot(expert, "01-expert-console-phone")



async def test_search_filters_and_booking_a_slot(server, browser) -> None:  # type: ignore[no-untyped-def]
    expert = await sign_in(browser, server, "expert", "Bo Booker")
    await expert.get_by_label("Skills").fill("plumbing")
    await expert.get_by_label("Pricing").select_option("per_session")
    await expert.get_by_label("Price", exact=True).fill("30")
    for day in ("Sat", "Sun"):
        await expert.get_by_label(day, exact=True).check()
    await expert.get_by_label("From").fill("00:00")
    await expert.get_by_label("To", exact=True).fill("00:00")  # midnight to midnight: every hour of the week
    await expert.get_by_role("button", name="Save profile").click()
    await expert.get_by_text("Profile saved.").wait_for()
    await expert.locator("#connection[data-state=open]").wait_for()
    await expert.get_by_text("Offline", exact=True).click()
    await expert.get_by_text("You are offline").wait_for()

    client = await sign_in(browser, server, "client", "Pat Planner", viewport=PHONE)
    await client.get_by_label("Availability").select_option("")
    await client.get_by_label("Skill", exact=True).fill("plumbing")
    await client.get_by_label("Max price (USD)").fill("20")
    await client.get_by_role("button", name="Search").click()
    await client.get_by_role("heading", name="No experts match").wait_for()
    await client.get_by_label("Max price (USD)").fill("30.00")
    await client.get_by_role("button", name="Search").click()
    card = client.locator("[data-expert-id=bo-booker]")
    await card.wait_for()
    assert "$30.00 per session" in await card.inner_text()
    assert "Offline" in await card.inner_text()
    assert await card.get_by_role("button", name="Ask for help now").is_disabled()

    await card.get_by_role("button", name="Book a slot").click()
    dialog = client.get_by_role("dialog", name="Book Bo Booker")
    await dialog.wait_for()
    assert "Working hours (UTC)" in await dialog.inner_text()
    price = await dialog.get_by_test_id("book-price").inner_text()
    assert price.startswith("$30.00 per session: $30.00 for the session, charged once you have both been connected for 1 minute")
    assert "You or the expert can cancel until the start." in await dialog.inner_text()
    # Only the expert's free slots are offered, in the viewer's time zone; the first is chosen.
    slot = dialog.get_by_label("Time")
    await client.wait_for_function("document.querySelectorAll('#book-slot option[value]:not([value=\"\"])').length > 0")
    options = await slot.locator("option").all_inner_texts()
    assert len(options) > 40 and all(" – " in o for o in options)
    first = await slot.input_value()
    await shoot(client, "10-client-booking-phone")
    await dialog.get_by_label("Length").select_option("60")
    await client.wait_for_function("document.querySelector('#book-slot option').textContent.includes('–')")
    await dialog.get_by_role("button", name="Book").click()
    booked = client.locator("#my-bookings li", has_text="Bo Booker")
    await booked.wait_for()
    assert "Booked" in await booked.inner_text()
    await shoot(client, "11-client-booked-phone")

    await expert.reload()
    scheduled = expert.locator("#scheduled li", has_text="Pat Planner")
    await scheduled.wait_for()
    assert await expert.get_by_label("To", exact=True).input_value() == "00:00"  # 24:00 as a time input shows it
    await shoot(expert, "11-expert-scheduled")

    # The booked slot is no longer offered; a second booking, which the expert cancels.
    await card.get_by_role("button", name="Book a slot").click()
    await client.wait_for_function("document.querySelectorAll('#book-slot option[value]:not([value=\"\"])').length > 0")
    assert await slot.input_value() != first
    await dialog.get_by_role("button", name="Book").click()
    await client.locator("#my-bookings li[data-state=booked]").nth(1).wait_for()
    await expert.locator("#scheduled li[data-state=booked]").nth(1).wait_for()
    await expert.locator("#scheduled li").nth(1).get_by_role("button", name=re.compile("^Cancel the session with Pat Planner")).click()
    await client.locator("#my-bookings li", has_text="Cancelled by Bo Booker").wait_for()
    await client.get_by_text("Bo Booker cancelled your session of").wait_for()

    # Cancelling from the client's list frees the slot on both sides.
    await booked.first.get_by_role("button", name=re.compile("^Cancel the session with Bo Booker")).click()
    await client.locator("#my-bookings li", has_text="Cancelled by you").wait_for()
    await expert.locator("#scheduled li", has_text="Cancelled by Pat Planner").nth(0).wait_for()
    await shoot(expert, "12-expert-cancelled")
    # A booking whose session opened says so (and offers no cancel).
    opened = await client.evaluate(
        """async () => (await import('/static/js/terms.js')).bookingState(
             {state: 'open', opened_at: '2026-12-03T10:00:00Z', start: '2026-12-03T10:00:00Z'}, 'me')"""
    )
    assert opened.startswith("Opened ") and opened.endswith("— the session started")
    for page in (expert, client):
        assert page.errors == []  # type: ignore[attr-defined]


# --- signalling.js against a scripted server ------------------------------------------------


class ScriptedServer:
    """Speaks the /ws protocol as docs/protocol.md describes it, with knobs to misbehave, so that
    the client library's handshake, replies, pacing, resume and close handling can be checked."""

    RATE = 10

    def __init__(self) -> None:
        self.received: list[tuple[float, dict]] = []
        self.sockets: list[web.WebSocketResponse] = []
        self.upgrade_urls: list[str] = []
        self.valid_resume = ""
        self.answer_pings = True
        self.count = 0

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.upgrade_urls.append(str(request.rel_url))
        self.sockets.append(ws)
        async for frame in ws:
            msg = json.loads(frame.data)
            self.received.append((time.monotonic(), msg))
            await self.answer(ws, msg)
        return ws

    def welcome(self, ref: object, resumed: bool) -> dict:
        self.count += 1
        self.valid_resume = f"rt-{self.count}"
        return {
            "v": 1, "type": "welcome", "ref": ref, "protocol": 1, "resumed": resumed,
            "user": {"id": "u", "role": "expert", "name": "U"}, "resume_token": self.valid_resume,
            "ping_interval": 1, "ping_timeout": 2, "resume_grace": 30, "max_message_bytes": 65536,
            "max_messages_per_second": self.RATE, "max_message_burst": self.RATE, "ice_servers": [],
            "billing_unit_seconds": 60, "session": None, "presence": None,
        }

    async def answer(self, ws: web.WebSocketResponse, msg: dict) -> None:
        kind, ref = msg["type"], msg.get("id")
        if kind == "hello":
            await ws.send_json(self.welcome(ref, resumed=False))
        elif kind == "resume":
            if msg["resume_token"] == self.valid_resume:
                await ws.send_json(self.welcome(ref, resumed=True))
            else:
                await ws.send_json({"v": 1, "type": "error", "code": "resume_invalid", "message": "no", "ref": ref})
        elif kind == "ping" and self.answer_pings:
            await ws.send_json({"v": 1, "type": "pong", "ref": ref, "time": time.time()})
        elif kind == "presence.set":
            await ws.send_json({"v": 1, "type": "presence", "ref": ref, "user_id": "u", "status": msg["status"]})
        elif kind == "help.cancel":
            await ws.send_json({"v": 1, "type": "error", "code": "session_not_found", "message": "none", "ref": ref})

    def types(self) -> list[str]:
        return [m["type"] for _, m in self.received if m["type"] != "ping"]


async def blank_page(request: web.Request) -> web.Response:
    return web.Response(text="<!doctype html><title>signalling.js</title>", content_type="text/html")


@pytest.fixture
async def scripted(browser):  # type: ignore[no-untyped-def]
    server = ScriptedServer()
    app = web.Application()
    app.router.add_get("/ws", server.handle)
    app.router.add_get("/", blank_page)
    app.router.add_static("/static/", STATIC)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    page = await (await browser.new_context(base_url=f"http://{host}:{port}")).new_page()
    await page.goto("/")
    await page.evaluate(
        """async () => {
          const { SignallingClient, defaultSocketUrl } = await import('/static/js/signalling.js');
          const client = new SignallingClient({ url: defaultSocketUrl(), token: () => 'tkn', backoff: { initial: 50, max: 200 } });
          window.events = [];
          for (const type of ['open', 'resumed', 'reset', 'fatal', 'connection'])
            client.on(type, (detail) => window.events.push(type === 'connection' ? detail.state : type));
          window.client = client;
          await client.connect();
        }"""
    )
    try:
        yield server, page
    finally:
        await page.context.close()
        await runner.cleanup()


async def test_signalling_client_follows_the_protocol(scripted) -> None:  # type: ignore[no-untyped-def]
    server, page = scripted
    hello = server.received[0][1]
    assert hello == {"v": 1, "type": "hello", "id": "c1", "token": "tkn", "client": {"name": "expertcall-web-demo", "version": "1"}}
    # The token travels in hello, never in the URL (which logs and browser histories keep).
    assert server.upgrade_urls == ["/ws"]
    assert await page.evaluate("window.events") == ["connecting", "open", "open"]

    # A reply resolves its request by ref; an error with that ref rejects it with the code.
    assert await page.evaluate("window.client.setPresence('away').then((m) => m.status)") == "away"
    assert await page.evaluate("window.client.cancelHelp('s1').catch((e) => e.code)") == "session_not_found"

    # A burst is paced below the announced rate (10/s: at most 8 in any second), in order.
    await page.evaluate(
        "for (let i = 0; i < 20; i++) window.client.notify('media.ice', {session_id: 's', transport: 'publish', candidate: null, n: i})"
    )
    for _ in range(40):
        if sum(1 for _, m in server.received if m["type"] == "media.ice") == 20:
            break
        await asyncio.sleep(0.1)
    stamps = [t for t, m in server.received if m["type"] in ("media.ice", "ping")]
    assert [m["n"] for _, m in server.received if m["type"] == "media.ice"] == list(range(20))
    assert max(sum(1 for u in stamps if t <= u < t + 0.95) for t in stamps) <= 8

    # A dropped socket resumes with the last resume token.
    token, seen = server.valid_resume, len(server.received)
    await page.evaluate("window.client.simulateDrop()")
    await page.wait_for_function("window.events.includes('resumed')")
    resume = [m for _, m in server.received[seen:] if m["type"] == "resume"][0]
    assert resume["resume_token"] == token and set(resume) == {"v", "type", "id", "token", "resume_token"}
    assert resume["token"] == "tkn" and set(server.upgrade_urls) == {"/ws"}

    # A refused resume falls back to hello: a fresh start the page is told about.
    server.valid_resume = "expired"
    await server.sockets[-1].close(code=1011)
    await page.wait_for_function("window.events.includes('reset')")
    assert server.types()[-2:] == ["resume", "hello"]

    # No pong within ping_timeout: the client gives up on the socket and resumes on a new one.
    server.answer_pings = False
    sockets = len(server.sockets)
    for _ in range(80):
        if len(server.sockets) > sockets:
            break
        await asyncio.sleep(0.1)
    assert len(server.sockets) > sockets
    server.answer_pings = True

    # Close 4001 (token refused) is final: a fatal event and no reconnect.
    await page.wait_for_function("window.client.state === 'open'")
    sockets = len(server.sockets)
    await server.sockets[-1].close(code=4001, message=b"token expired")
    await page.wait_for_function("window.events.includes('fatal')")
    await asyncio.sleep(0.5)
    assert len(server.sockets) == sockets
    assert await page.evaluate("window.client.state") == "closed"


# --- the whole flow -------------------------------------------------------------------------

FRAMES = "async () => (await window.expertcall.inboundVideo()).framesDecoded"


async def frames_increasing(page, timeout: float = 20.0) -> int:  # type: ignore[no-untyped-def]
    """Wait until the page decodes inbound video frames and their count keeps growing."""
    first = None
    for _ in range(int(timeout / 0.25)):
        frames = int(await page.evaluate(FRAMES))
        if first is None and frames > 0:
            first = frames
        elif first is not None and frames > first:
            return frames
        await asyncio.sleep(0.25)
    raise AssertionError(f"inbound video frames did not grow (first {first})")


async def test_a_paid_session_end_to_end(server, browser) -> None:  # type: ignore[no-untyped-def]
    # The expert sets a price and goes online.
    expert = await sign_in(browser, server, "expert", "Ada Expert")
    await expert.get_by_label("Skills").fill("python, debugging")
    await expert.get_by_label("Pricing").select_option("per_minute")
    await expert.get_by_label("Price", exact=True).fill("1.50")
    await expert.get_by_role("button", name="Save profile").click()
    await expert.get_by_text("Profile saved.").wait_for()
    await expert.locator("#connection[data-state=open]").wait_for()
    # A fresh expert socket starts online (docs/protocol.md); step away and back through presence.set.
    await expert.get_by_text("Away", exact=True).click()
    await expert.get_by_text("You are away").wait_for()
    await expert.get_by_text("Online", exact=True).click()
    await expert.get_by_text("You are online").wait_for()
    await shoot(expert, "02-expert-online")

    # A client finds them by skill and asks for help; a second client (on a phone) queues behind.
    client = await sign_in(browser, server, "client", "Cleo Client")
    second = await sign_in(browser, server, "client", "Sam Second", viewport=PHONE)
    await client.get_by_label("Skill", exact=True).fill("python")
    await client.get_by_role("button", name="Search").click()
    card = client.locator("[data-expert-id=ada-expert]")
    await card.get_by_text("Available now").wait_for()
    assert "$1.50 / min" in await card.inner_text()
    await shoot(client, "02-client-search")
    # The price and the rule are confirmed before the expert is asked.
    await card.get_by_role("button", name="Ask for help now").click()
    confirm = client.get_by_role("dialog", name="Ask Ada Expert for help now?")
    await confirm.wait_for()
    assert await confirm.get_by_test_id("confirm-price").inner_text() == "$1.50 / min"
    assert "$1.50 per started 2-second unit, charged only while you are both connected." in await confirm.inner_text()
    await shoot(client, "02-client-confirm-price")
    await confirm.get_by_role("button", name="Ask Ada Expert").click()
    await client.get_by_text("Ringing Ada Expert").wait_for()
    assert "charged only while you are both connected" in await client.get_by_test_id("waiting-price").inner_text()
    await expert.get_by_role("button", name="Accept Cleo Client").wait_for()
    await shoot(client, "03-client-ringing")
    await shoot(expert, "03-expert-incoming")

    await second.get_by_label("Skill", exact=True).fill("python")
    await second.get_by_role("button", name="Ask any available expert with this skill").click()
    await second.locator("[data-testid=queue-position][data-position='2']").wait_for()
    assert "number 2" in await second.get_by_test_id("queue-position").inner_text()
    await expert.locator("#queue li[data-session-id]").nth(1).wait_for()
    assert await expert.get_by_role("button", name="Decline Sam Second (waiting)").is_visible()
    assert "ringing" in await expert.locator("#queue li[data-session-id]").nth(0).inner_text()
    await shoot(second, "03-second-queued-phone")
    # A reload while waiting keeps the place: the welcome brings the waiting session back.
    await second.reload()
    await second.get_by_role("heading", name="Waiting for Ada Expert").wait_for()

    # The expert accepts: the second client moves up; both sides of the call see video.
    await expert.get_by_role("button", name="Accept Cleo Client").click()
    await second.locator("[data-testid=queue-position][data-position='1']").wait_for()
    assert "next in line" in await second.get_by_test_id("queue-position").inner_text()
    await shoot(second, "04-second-moved-up-phone")
    await frames_increasing(client)
    await frames_increasing(expert)
    await client.locator("[data-ref=state][data-state=live]").wait_for()
    await shoot(client, "04-client-in-call")
    await shoot(expert, "04-expert-in-call")

    # Mute and camera toggles say their state to assistive technology and act on the tracks.
    mute = client.get_by_role("button", name="Mute")
    await mute.click()
    await client.get_by_role("button", name="Unmute").wait_for()
    assert await client.get_by_role("button", name="Unmute").get_attribute("aria-pressed") == "true"
    assert await client.evaluate("window.expertcall.call.localStream.getAudioTracks()[0].enabled") is False
    await client.get_by_role("button", name="Unmute").click()
    await client.get_by_role("button", name="Stop camera").click()
    assert await client.evaluate("window.expertcall.call.localStream.getVideoTracks()[0].enabled") is False
    await client.get_by_role("button", name="Start camera").click()

    # Chat both ways over the SFU's data channel.
    await client.get_by_role("textbox", name="Message").fill("Hello, my build is broken")
    await client.get_by_role("button", name="Send").click()
    await expert.locator(".chat-theirs", has_text="Hello, my build is broken").wait_for()
    await expert.get_by_role("textbox", name="Message").fill("Show me the traceback")
    await expert.get_by_role("button", name="Send").click()
    await client.locator(".chat-theirs", has_text="Show me the traceback").wait_for()

    # Screen sharing: the client shares; the expert sees it large, the camera in a corner.
    await client.get_by_role("button", name="Share screen").click()
    await client.get_by_role("button", name="Stop sharing").wait_for()
    assert await client.get_by_role("button", name="Stop sharing").get_attribute("aria-pressed") == "true"
    screen = expert.get_by_test_id("remote-screen")
    await screen.wait_for()
    await expert.wait_for_function(
        "(() => { const v = document.querySelector('[data-testid=remote-screen]'); return !v.hidden && v.videoWidth > 0; })()"
    )
    assert "Cleo Client is sharing their screen" in await expert.get_by_test_id("screen-badge").inner_text()
    big, corner = await screen.bounding_box(), await expert.get_by_test_id("remote-video").bounding_box()
    assert big and corner and big["width"] > 3 * corner["width"]
    await shoot(expert, "05-expert-sees-the-clients-screen")
    await client.get_by_role("button", name="Stop sharing").click()
    await screen.wait_for(state="hidden", timeout=15000)
    await client.get_by_role("button", name="Share screen").wait_for()
    await frames_increasing(expert)  # the camera carries on

    # A budget cap goes to the server, whose billing.cost answer shows it.
    await client.get_by_label("Budget cap").fill("100")
    await client.get_by_role("button", name="Set").click()
    await client.get_by_text("The call ends at $100.00.").wait_for()

    # The running cost grows with each 2 s billing unit.
    cost = client.get_by_test_id("running-cost")
    await client.wait_for_function("document.querySelector('[data-testid=running-cost]')?.textContent.startsWith('$')")
    first_cost = await cost.inner_text()
    await client.wait_for_function(
        f"document.querySelector('[data-testid=running-cost]')?.textContent !== {first_cost!r}", timeout=15000
    )
    await shoot(client, "05-client-cost-and-chat")
    await shoot(expert, "05-expert-cost-and-chat")
    await client.set_viewport_size(PHONE)
    assert await client.evaluate(HORIZONTAL_OVERFLOW) <= 0
    await shoot(client, "05-client-in-call-phone")
    await client.set_viewport_size(DESKTOP)

    # The client's socket drops: it resumes, restarts ICE, and video keeps coming on both sides.
    await client.evaluate("window.expertcall.dropSocket()")
    await client.locator("#connection[data-state=reconnecting]").wait_for()
    await client.locator("#connection[data-state=open]").wait_for(timeout=15000)
    await frames_increasing(client)
    await frames_increasing(expert)
    for page in (client, expert):  # the same session carries on, live again
        await page.locator("[data-ref=state][data-state=live]").wait_for()
    await shoot(client, "06-client-resumed")

    # The client hangs up; both see the summary with the amount charged.
    await client.get_by_role("button", name="Hang up").click()
    for page in (client, expert):
        await page.get_by_role("heading", name="Session summary").wait_for()
        await page.wait_for_function(
            "document.querySelector('[data-testid=amount-charged]')?.textContent.startsWith('$')"
        )
    # Then billing's final totals: the same amount on both sides, and the expert's share.
    for page in (client, expert):
        await page.locator("[data-testid=summary][data-final=true]").wait_for()
    charged = await client.get_by_test_id("amount-charged").inner_text()
    assert charged != "$0.00" and charged == await expert.get_by_test_id("amount-charged").inner_text()
    assert "Your share" in await expert.get_by_test_id("summary").inner_text()
    # The call's length is told apart from what was billed, and the rule says why they differ.
    summary = await client.get_by_test_id("summary").inner_text()
    for row in ("Call length", "Both connected", "Billed", "started 2-second unit"):
        assert row in summary, row
    assert "Charged by the rule you accepted" in await client.get_by_test_id("billing-rule").inner_text()
    await shoot(client, "07-client-summary")
    await shoot(expert, "07-expert-summary")
    await client.set_viewport_size(PHONE)
    await shoot(client, "07-client-summary-phone")

    # Free again, the expert is rung for the second client and declines: they are told why.
    await expert.get_by_role("button", name="Back to the console").click()
    await expert.get_by_role("button", name="Decline Sam Second").click()
    await second.get_by_text("The expert declined.").wait_for()
    await second.get_by_role("heading", name="Find an expert").wait_for()
    await shoot(second, "08-second-declined-phone")

    # The client rates the session; the expert's earnings show it.
    await client.locator("label[for=star-5]").click()
    await client.get_by_label("Review (optional)").fill("Fixed in ten minutes.")
    await client.get_by_role("button", name="Send rating").click()
    await client.get_by_text("Thank you for your rating.").wait_for()
    await expert.wait_for_function("document.querySelector('[data-testid=earnings]').textContent.startsWith('$')")
    await expert.locator("#earnings-list li", has_text="Cleo Client").wait_for()
    assert "Your share of 1 paid session" in await expert.locator("#earnings-detail").inner_text()
    await expert.get_by_label("Period").select_option("today")
    await expert.locator("#earnings-list li", has_text="Cleo Client").wait_for()
    await shoot(expert, "08-expert-earnings")

    # The client's past sessions, by the expert's name, with the amount and a printable receipt.
    past = client.locator("#history li[data-session-id]", has_text="Ada Expert")
    await past.wait_for()
    assert charged in await past.inner_text() and "connected · billed" in await past.inner_text()
    await shoot(client, "08-client-history")
    await past.get_by_role("link", name=re.compile("Receipt for the session with Ada Expert")).click()
    await client.wait_for_url("**/receipt?session=*")
    await client.set_viewport_size(DESKTOP)
    receipt = client.get_by_test_id("receipt")
    await receipt.wait_for()
    assert await client.get_by_test_id("receipt-total").inner_text() == charged
    text = await receipt.inner_text()
    assert "Cleo Client" in text and "Ada Expert" in text and "Both connected" in text and "Platform fee" not in text
    await shoot(client, "08-client-receipt")
    await client.set_viewport_size(PHONE)
    assert await client.evaluate(HORIZONTAL_OVERFLOW) <= 0
    await shoot(client, "08-client-receipt-phone")
    await client.emulate_media(media="print")
    assert await client.get_by_role("button", name="Print").is_hidden()
    await client.emulate_media(media="screen")
    await client.get_by_role("link", name="Back").click()
    await client.wait_for_url("**/client")
    # The review shows on the expert's profile.
    await client.get_by_role("button", name="Profile of Ada Expert").click()
    await client.get_by_test_id("profile").get_by_text("Fixed in ten minutes.").wait_for()
    await client.get_by_role("button", name="← Back to experts").click()

    # A second session with a budget cap: the server ends it when the budget is used up.
    await client.locator("[data-expert-id=ada-expert]").get_by_role("button", name="Ask for help now").click()
    await client.get_by_role("button", name="Ask Ada Expert").click()
    await expert.get_by_role("button", name="Accept Cleo Client").click()
    await client.locator("[data-ref=state][data-state=live]").wait_for(timeout=20000)
    await client.wait_for_function("document.querySelector('[data-testid=running-cost]')?.textContent.startsWith('$')")
    await client.get_by_label("Budget cap").fill("6")
    await client.get_by_role("button", name="Set").click()
    for page in (client, expert):
        await page.get_by_role("heading", name="Session summary").wait_for(timeout=30000)
        assert "The budget cap was reached." in await page.get_by_test_id("summary").inner_text()
    await client.locator("[data-testid=summary][data-final=true]").wait_for()
    assert await client.get_by_test_id("amount-charged").inner_text() == "$6.00"  # never past the cap
    await shoot(client, "09-client-budget-reached")

    for page, name in ((expert, "expert"), (client, "client"), (second, "second")):
        assert page.errors == [], name  # type: ignore[attr-defined]


# --- failures, said in words ----------------------------------------------------------------

BLOCKED_DEVICES = """navigator.mediaDevices.getUserMedia = () =>
  Promise.reject(new DOMException('Permission denied', 'NotAllowedError'));"""
DESKTOP_800 = {"width": 1280, "height": 800}
IN_VIEW = """(selector) => { const r = document.querySelector(selector).getBoundingClientRect();
  return window.scrollY === 0 && r.height > 0 && r.top >= 0 && r.bottom <= window.innerHeight; }"""


async def online_expert(browser, server: str, name: str, skill: str = "python"):  # type: ignore[no-untyped-def]
    expert = await sign_in(browser, server, "expert", name)
    await expert.get_by_label("Skills").fill(skill)
    await expert.get_by_role("button", name="Save profile").click()
    await expert.get_by_text("Profile saved.").wait_for()
    await expert.get_by_text("You are online: clients can ask you for help.").wait_for()
    return expert


async def ask(client, expert_id: str, expert_name: str, skill: str = "python") -> None:  # type: ignore[no-untyped-def]
    """Search for the expert, ask for help now and confirm the price."""
    await client.get_by_label("Skill", exact=True).fill(skill)
    await client.get_by_role("button", name="Search").click()
    await client.locator(f"[data-expert-id={expert_id}]").get_by_role("button", name="Ask for help now").click()
    await client.get_by_role("button", name=f"Ask {expert_name}").click()


async def test_the_final_summary_shows_whichever_of_billing_and_the_end_arrives_first(server, browser) -> None:  # type: ignore[no-untyped-def]
    # Billing's summary may reach the client before the session's end (they are sent by different
    # parts of the server): the client's summary must still become final, with the amount.
    expert = await sign_in(browser, server, "expert", "Ada Expert")
    await expert.get_by_label("Skills").fill("python")
    await expert.get_by_label("Pricing").select_option("per_minute")
    await expert.get_by_label("Price", exact=True).fill("1.50")
    await expert.get_by_role("button", name="Save profile").click()
    await expert.get_by_text("You are online: clients can ask you for help.").wait_for()
    client = await sign_in(browser, server, "client", "Cleo Client")

    def hold_back_the_end(ws) -> None:  # type: ignore[no-untyped-def]
        def from_server(message: str | bytes) -> None:
            parsed = json.loads(message)
            if parsed.get("type") == "session.state" and parsed["session"]["state"] == "ended":
                asyncio.get_running_loop().call_later(1.5, ws.send, message)
            else:
                ws.send(message)

        ws.connect_to_server().on_message(from_server)

    await client.route_web_socket("**/ws", hold_back_the_end)
    await client.reload()
    await client.locator("#connection[data-state=open]").wait_for()
    await ask(client, "ada-expert", "Ada Expert")
    await expert.get_by_role("button", name="Accept Cleo Client").click()
    await client.locator("[data-ref=state][data-state=live]").wait_for(timeout=20000)
    await client.wait_for_function("document.querySelector('[data-testid=running-cost]')?.textContent.startsWith('$')")
    await client.get_by_role("button", name="Hang up").click()
    await client.get_by_role("heading", name="Session summary").wait_for(timeout=15000)
    await client.locator("[data-testid=summary][data-final=true]").wait_for(timeout=15000)
    assert (await client.get_by_test_id("amount-charged").inner_text()).startswith("$")


# An expert's camera that takes 2 s to start (a slow machine, a permission prompt), recording every
# stream it hands out so that a test can see whether the page stopped them.
SLOW_CAMERA = """{
  const real = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
  window.__streams = [];
  window.__starting = 0;
  navigator.mediaDevices.getUserMedia = async (constraints) => {
    window.__starting += 1;
    await new Promise((resolve) => setTimeout(resolve, 2000));
    const stream = await real(constraints);
    window.__streams.push(stream);
    window.__starting -= 1;
    return stream;
  };
}"""
# The camera starts at once, the offer to the SFU takes 2 s: the session ends mid-negotiation.
SLOW_OFFER = """{
  const real = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
  window.__streams = [];
  window.__starting = 0;
  navigator.mediaDevices.getUserMedia = async (constraints) => {
    const stream = await real(constraints);
    window.__streams.push(stream);
    return stream;
  };
  const createOffer = RTCPeerConnection.prototype.createOffer;
  RTCPeerConnection.prototype.createOffer = async function (...args) {
    window.__starting += 1;
    await new Promise((resolve) => setTimeout(resolve, 2000));
    window.__starting -= 1;
    return createOffer.apply(this, args);
  };
}"""


@pytest.mark.parametrize("slow", [SLOW_CAMERA, SLOW_OFFER], ids=["camera", "offer"])
async def test_a_call_that_ends_while_media_starts_is_no_failure_of_the_side_still_starting(  # type: ignore[no-untyped-def]
    server, browser, slow: str
) -> None:
    # The client leaves (blocked devices) while the expert's media is still starting: the expert is
    # told the client left, is shown no failure of their own, and their camera is switched off.
    expert = await sign_in(browser, server, "expert", "Sam Slow", init_script=slow)
    await expert.get_by_label("Skills").fill("python")
    await expert.get_by_role("button", name="Save profile").click()
    await expert.get_by_text("You are online: clients can ask you for help.").wait_for()
    blocked = await sign_in(browser, server, "client", "Bea Blocked", init_script=BLOCKED_DEVICES)
    await ask(blocked, "sam-slow", "Sam Slow")
    await expert.get_by_role("button", name="Accept Bea Blocked").click()
    await blocked.get_by_test_id("problem").wait_for()
    await expert.get_by_role("heading", name="Session summary").wait_for()
    # Whether the page got as far as the slow step depends on when the end arrived; once no slow
    # step is pending, every camera it started must be off again.
    await expert.wait_for_function("window.__starting === 0", timeout=15000)
    await expert.wait_for_function(
        "window.__streams.every((s) => s.getTracks().every((track) => track.readyState === 'ended'))",
        timeout=5000,
    )
    await asyncio.sleep(0.5)  # what would follow the slow step, had the page gone on
    assert "Bea Blocked left before the call connected" in await expert.get_by_test_id("never-live").inner_text()
    assert await expert.get_by_test_id("problem").count() == 0
    assert not expert.errors  # type: ignore[attr-defined]


async def test_failures_are_explained_in_words(server, browser) -> None:  # type: ignore[no-untyped-def]
    # A new expert without a profile is told that nobody can find them yet.
    expert = await sign_in(browser, server, "expert", "Erin Expert")
    await expert.get_by_text("clients cannot find or call you until you save your profile").wait_for()
    await shoot(expert, "20-expert-without-profile")
    await expert.get_by_label("Skills").fill("python")
    await expert.get_by_role("button", name="Save profile").click()
    await expert.get_by_text("You are online: clients can ask you for help.").wait_for()

    # Blocked camera and microphone: the client is told how to allow them, is not asked to rate a
    # call that never started, and pays nothing; the expert hears that the client left.
    blocked = await sign_in(browser, server, "client", "Bea Blocked", init_script=BLOCKED_DEVICES)
    await ask(blocked, "erin-expert", "Erin Expert")
    await expert.get_by_role("button", name="Accept Bea Blocked").click()
    problem = blocked.get_by_test_id("problem")
    await problem.wait_for()
    assert "Your camera or microphone is blocked." in await problem.inner_text()
    assert "choose Allow, then try again" in await problem.inner_text()
    assert "nothing was charged" in await blocked.get_by_test_id("never-live").inner_text()
    assert await blocked.locator("#rating-form").is_hidden()
    await shoot(blocked, "21-client-devices-blocked")
    await expert.get_by_role("heading", name="Session summary").wait_for()
    assert "Bea Blocked left before the call connected" in await expert.get_by_test_id("never-live").inner_text()
    await shoot(expert, "21-expert-client-never-connected")
    await blocked.get_by_role("button", name="Back to experts").click()
    await expert.get_by_role("button", name="Back to the console").click()

    # In a live call the controls, the cost and the budget hint are in view without scrolling.
    client = await sign_in(browser, server, "client", "Cleo Client", viewport=DESKTOP_800)
    await ask(client, "erin-expert", "Erin Expert")
    await expert.get_by_role("button", name="Accept Cleo Client").click()
    await client.locator("[data-ref=state][data-state=live]").wait_for(timeout=20000)
    for viewport, label in ((DESKTOP_800, "desktop"), (PHONE, "phone")):
        await client.set_viewport_size(viewport)
        await client.evaluate("window.scrollTo(0, 0)")
        for selector in ("[data-ref=hangup]", "[data-ref=mute]", "[data-ref=budget-hint]", "[data-testid=running-cost]"):
            assert await client.evaluate(IN_VIEW, selector), (label, selector)
        await shoot(client, f"22-client-controls-in-view-{label}")

    # The expert closes their tab: the client is told who dropped and that billing is paused.
    await client.set_viewport_size(DESKTOP_800)
    await expert.context.close()
    alert = client.get_by_test_id("call-alert")
    await alert.wait_for(timeout=30000)
    text = await alert.inner_text()
    assert "Erin Expert's connection dropped — billing is paused." in text and "ends by itself" in text
    await shoot(client, "23-client-expert-dropped")
    await client.get_by_role("button", name="Hang up").click()
    await client.get_by_role("heading", name="Session summary").wait_for()
    for page in (blocked, client):
        assert page.errors == []  # type: ignore[attr-defined]


async def test_sign_in_problems_are_explained(served, browser) -> None:  # type: ignore[no-untyped-def]
    base, app = served
    issuer = app[TOKENS]
    start = await new_page(browser, base, PHONE)
    await start.goto("/")
    await start.get_by_text("Advanced").click()
    paste = start.get_by_label("Or paste a token")

    # A token that has expired, or one this server did not sign: said, not a silent reload.
    expired = issuer.mint("old", "client", ttl=1)
    await asyncio.sleep(1.5)
    await paste.fill(expired)
    await start.get_by_role("button", name="Continue").click()
    await start.get_by_text("That token expired on").wait_for()
    await shoot(start, "24-start-expired-token-phone")
    await paste.fill(TokenIssuer("another-servers-secret-0123456789abcdef").mint("x", "client"))
    await start.get_by_role("button", name="Continue").click()
    await start.get_by_text("This server does not accept that token (token_invalid)").wait_for()

    # A sign-in that runs out while the page is open: one explanation, then the start page says why.
    await paste.fill(issuer.mint("tim", "client", ttl=15, name="Tim Timeout"))
    await start.get_by_role("button", name="Continue").click()
    await start.wait_for_url("**/client")
    dialog = start.get_by_role("alertdialog", name="Your sign-in has expired")
    await dialog.wait_for(timeout=40000)
    assert await start.locator(".toast").count() == 0
    await shoot(start, "25-client-sign-in-expired-phone")
    await dialog.get_by_role("button", name="Sign in again").click()
    await start.wait_for_url("**/?role=client&reason=expired")
    assert "Your sign-in expired." in await start.get_by_test_id("start-notice").inner_text()

    # Signing in again elsewhere: the old tab says so instead of waiting for ever.
    old = await sign_in(browser, base, "client", "Rita Twice")
    await old.locator("#connection[data-state=open]").wait_for()
    new = await sign_in(browser, base, "client", "Rita Twice")
    await new.locator("#connection[data-state=open]").wait_for()
    replaced = old.get_by_role("alertdialog", name="expertcall is open somewhere else")
    await replaced.wait_for()
    await shoot(old, "26-client-replaced")
    await replaced.get_by_role("button", name="Use this tab instead").click()
    await old.locator("#connection[data-state=open]").wait_for()
    await new.get_by_role("alertdialog", name="expertcall is open somewhere else").wait_for()
    for page in (start, old, new):
        assert page.errors == []  # type: ignore[attr-defined]


PNG_PHOTO = base64.b64decode(
    # 64×48 PNG of one colour, made with Pillow and inlined: the browser uploads real image bytes.
    "iVBORw0KGgoAAAANSUhEUgAAAEAAAAAwCAIAAAAuKetIAAAAU0lEQVR4nO3PQQ3AIADAQEAIOpGIrIngcVnSU9DOfe74s6UDXjWgNaA1oDWgNaA1oDWgNaA1oDWgNaA1oDWgNaA1oDWgNaA1oDWgNaA1oDWgNaB9ZrIBvgrj1UYAAAAASUVORK5CYII="
)


async def test_profiles_photos_search_categories_and_the_empty_state(server, browser) -> None:  # type: ignore[no-untyped-def]
    # Nobody yet: the landing list says what to do instead of showing nothing.
    client = await sign_in(browser, server, "client", "Cleo Client")
    empty = client.get_by_test_id("empty-state")
    await empty.get_by_text("Nobody is available right now").wait_for()
    await shoot(client, "30-client-empty-state")

    expert = await sign_in(browser, server, "expert", "Pia Photo")
    await expert.get_by_label("Skills").fill("python, debugging")
    await expert.get_by_label("Languages").fill("en, pt-BR")
    await expert.get_by_label("About you").fill("I untangle build failures and flaky tests.")
    await expert.get_by_role("button", name="Save profile").click()
    await expert.get_by_text("Profile saved.").wait_for()
    await expert.get_by_label("Photo").set_input_files({"name": "me.png", "mimeType": "image/png", "buffer": PNG_PHOTO})
    await expert.get_by_text("Photo saved.").wait_for()
    assert (await expert.locator("#photo-preview img").get_attribute("src") or "").startswith("/api/experts/pia-photo/photo?v=")
    await expert.get_by_label("Photo").set_input_files({"name": "x.png", "mimeType": "image/png", "buffer": b"not a png"})
    await expert.get_by_text("Photo not saved: the body is not a readable image").wait_for()
    await shoot(expert, "30-expert-photo")

    # Words that start a name, a skill or a bio find the expert; the card shows the photo.
    await client.get_by_label("Availability").select_option("")
    for words in ("pyth", "untang", "pia"):
        await client.get_by_label("Search", exact=True).fill(words)
        await client.get_by_role("button", name="Search", exact=True).click()
        await client.locator("[data-expert-id=pia-photo]").wait_for()
    card = client.locator("[data-expert-id=pia-photo]")
    assert await card.locator("img.avatar").evaluate("(img) => img.complete && img.naturalWidth") == 320
    await client.get_by_label("Language").select_option("de")
    await client.get_by_text("No experts match").first.wait_for()
    assert await empty.is_visible()
    await client.get_by_label("Language").select_option("pt")
    await card.wait_for()

    # Categories: the skills on offer, one click each.
    await client.get_by_label("Search", exact=True).fill("")
    await client.reload()
    await client.get_by_role("navigation", name="Browse by skill").get_by_role("button", name=re.compile("^debugging")).click()
    await card.wait_for()
    assert await client.get_by_label("Skill", exact=True).input_value() == "debugging"
    await shoot(client, "31-client-search-with-photos")

    # The profile page: photo, price and its rule, languages, hours in the viewer's zone, reviews.
    await card.get_by_role("button", name="Profile of Pia Photo").click()
    profile = client.get_by_test_id("profile")
    await profile.get_by_role("heading", name="Pia Photo").wait_for()
    await profile.get_by_text("No reviews yet.").wait_for()  # the reviews arrive after the page
    text = await profile.inner_text()
    for shown in ("$1.00 / min", "charged only while you are both connected", "English, Brazilian Portuguese",
                  "I untangle build failures", "No reviews yet.", "your time, UTC"):
        assert shown in text, shown
    await profile.locator("#profile-hours li").first.wait_for()
    assert client.url.endswith("#expert=pia-photo")
    await shoot(client, "32-client-profile")
    await client.set_viewport_size(PHONE)
    assert await client.evaluate(HORIZONTAL_OVERFLOW) <= 0
    await shoot(client, "32-client-profile-phone")
    await profile.get_by_role("button", name="Book a slot").click()
    await client.get_by_role("dialog", name="Book Pia Photo").wait_for()
    for page in (client, expert):
        assert page.errors == []  # type: ignore[attr-defined]


ACTIVE = "(() => { const a = document.activeElement; return (a.getAttribute('aria-label') || a.textContent || a.id).trim(); })()"


async def test_the_paid_flow_by_keyboard_alone(server, browser) -> None:  # type: ignore[no-untyped-def]
    """Search, the price confirmation, the ring, the call and hang-up without a mouse; dialogs
    take focus when they open and give it back when they close."""
    expert = await online_expert(browser, server, "Kim Keys")
    await expert.evaluate("document.activeElement.blur()")  # an idle console: nothing being typed
    client = await sign_in(browser, server, "client", "Kai Keyboard")
    await client.locator("#browse-heading:focus").wait_for()
    await client.keyboard.press("Tab")
    await client.keyboard.type("python")  # the Search box comes first
    await client.keyboard.press("Enter")
    card = client.locator("[data-expert-id=kim-keys]")
    await card.wait_for()
    ask = card.get_by_role("button", name="Ask for help now")
    while await client.evaluate(ACTIVE) != "Ask for help now":
        await client.keyboard.press("Tab")
    # The booking dialog: focus goes in, Escape closes it, focus comes back to its opener.
    await client.keyboard.press("Tab")
    assert await client.evaluate(ACTIVE) == "Book a slot"
    await client.keyboard.press("Enter")
    dialog = client.get_by_role("dialog", name="Book Kim Keys")
    await dialog.wait_for()
    assert await client.evaluate("document.getElementById('book-dialog').contains(document.activeElement)")
    await client.keyboard.press("Escape")
    await dialog.wait_for(state="hidden")
    assert await client.evaluate(ACTIVE) == "Book a slot"
    await client.keyboard.press("Shift+Tab")
    assert await ask.evaluate("(b) => b === document.activeElement")
    await client.keyboard.press("Enter")
    confirm = client.get_by_role("dialog", name="Ask Kim Keys for help now?")
    await confirm.wait_for()
    assert await client.evaluate(ACTIVE) == "Ask Kim Keys"  # the confirming button has focus
    await shoot(client, "40-keyboard-confirm")
    await client.keyboard.press("Enter")
    # The expert's Accept button takes focus when the ring arrives.
    await expert.get_by_role("button", name="Accept Kai Keyboard").wait_for()
    await expert.wait_for_function("document.activeElement?.getAttribute('aria-label') === 'Accept Kai Keyboard'")
    await expert.keyboard.press("Enter")
    await client.locator("[data-ref=state][data-state=live]").wait_for(timeout=20000)
    # In the call: Tab reaches Hang up; Enter ends the call and focus lands on the summary.
    hang_up = client.get_by_role("button", name="Hang up")
    for _ in range(30):
        if await hang_up.evaluate("(b) => b === document.activeElement"):
            break
        await client.keyboard.press("Tab")
    await shoot(client, "41-keyboard-in-call")
    await client.keyboard.press("Enter")
    await client.get_by_role("heading", name="Session summary").wait_for()
    assert await client.evaluate("document.activeElement.id") == "summary-heading"
    for page in (client, expert):
        assert page.errors == []  # type: ignore[attr-defined]
