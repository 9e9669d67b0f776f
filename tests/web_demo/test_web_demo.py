"""The web demo: its routes (pages, dev tokens) and the pages themselves in headless Chromium.

The browser tests run the real server in-process on 127.0.0.1 and drive Debian's Chromium with
fake camera and microphone. Screenshots of every step go to test-artifacts/web_demo/.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from pathlib import Path
from typing import AsyncIterator

import pytest
from aiohttp import web

from signalling.app.factory import create_app
from signalling.auth.tokens import Role, TokenIssuer
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


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[str]:
    """The whole app on a free 127.0.0.1 port, in this process, with a 2 s billing unit."""
    settings = Settings(data_dir=tmp_path / "var", port=0, media_loopback=True, billing_unit_seconds=2)
    runner = web.AppRunner(create_app(settings))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


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
                    await shoot(page, f"zz-last-{i}-{j}")
                    log = getattr(page, "console_log", [])
                    (ARTIFACTS / f"zz-last-{i}-{j}.log").write_text("\n".join(log))
            await browser.close()


async def sign_in(browser, base: str, role: str, name: str, viewport=DESKTOP):  # type: ignore[no-untyped-def]
    """A fresh browser context (its own storage) signed in through the start page."""
    # bypass_csp: Playwright's wait_for_function evaluates strings, which the demo's CSP forbids.
    context = await browser.new_context(
        viewport=viewport, base_url=base, permissions=["camera", "microphone"], bypass_csp=True
    )
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors  # type: ignore[attr-defined]
    console: list[str] = []
    page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
    page.on("websocket", lambda ws: ws.on("framereceived", lambda f: console.append(f"ws< {str(f)[:300] if 'media.offer' not in str(f) else str(f)}")))
    page.on("websocket", lambda ws: ws.on("framesent", lambda f: console.append(f"ws> {str(f)[:300]}")))
    page.console_log = console  # type: ignore[attr-defined]
    await page.goto("/")
    await page.get_by_label("Give help" if role == "expert" else "Get help").check()
    await page.get_by_label("Your name").fill(name)
    await page.get_by_role("button", name="Continue").click()
    await page.wait_for_url(f"**/{role}")
    return page


async def shoot(page, name: str) -> None:  # type: ignore[no-untyped-def]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


UNLABELLED_CONTROLS = """() => [...document.querySelectorAll('input, select, textarea, button')]
  .filter((n) => n.type !== 'hidden' && n.getClientRects().length)
  .filter((n) => !(n.labels && n.labels.length) && !n.getAttribute('aria-label')
                 && !n.getAttribute('aria-labelledby') && !(n.tagName === 'BUTTON' && n.textContent.trim()))
  .map((n) => n.outerHTML.slice(0, 120))"""

HORIZONTAL_OVERFLOW = "() => document.scrollingElement.scrollWidth - window.innerWidth"


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
    assert await client.evaluate("document.activeElement.id") == "search-skill"

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
    await expert.get_by_label("To").fill("00:00")  # midnight to midnight: every hour of the week
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
    await client.get_by_text("No experts match").wait_for()
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
    await shoot(client, "10-client-booking-phone")
    await dialog.get_by_role("button", name="Book").click()
    await client.locator("#my-bookings li", has_text="bo-booker").wait_for()
    assert "booked" in await client.locator("#my-bookings").inner_text()
    await shoot(client, "11-client-booked-phone")

    await expert.reload()
    await expert.locator("#scheduled li", has_text="pat-planner").wait_for()
    assert await expert.get_by_label("To").input_value() == "00:00"  # 24:00 as a time input shows it
    await shoot(expert, "11-expert-scheduled")

    # Cancelling from the client's list frees the slot on both sides.
    await client.locator("#my-bookings li", has_text="bo-booker").get_by_role("button", name="Cancel").click()
    await client.locator("#my-bookings li", has_text="cancelled").wait_for()
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
    await card.get_by_role("button", name="Ask for help now").click()
    await client.get_by_text("Ringing Ada Expert").wait_for()
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
    await shoot(expert, "08-expert-earnings")

    # A second session with a budget cap: the server ends it when the budget is used up.
    await client.locator("[data-expert-id=ada-expert]").get_by_role("button", name="Ask for help now").click()
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
