from __future__ import annotations

import asyncio
import time

import pytest

from signalling.auth.tokens import TOKENS
from signalling.billing.money import Money
from signalling.billing.pricing import BillingPolicy, Price
from signalling.billing.service import METER


def auth(client, user: str, role: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {"Authorization": "Bearer " + client.app[TOKENS].mint(user, role)}


async def run_session(client, sid: str = "s1", seconds: float = 125) -> None:  # type: ignore[no-untyped-def]
    meter = client.app[METER]
    t0 = time.time() - 3600
    await meter.started(sid, "alice", "bob", Price.per_minute(Money(200, "EUR")), BillingPolicy(), at=t0)
    await meter.media_live(sid, at=t0)
    await meter.ended(sid, at=t0 + seconds, reason="hangup")


async def test_metering_feed_pages_from_sqlite_for_admins(client) -> None:  # type: ignore[no-untyped-def]
    await run_session(client)
    assert (await client.get("/api/metering")).status == 401
    assert (await client.get("/api/metering", headers=auth(client, "alice", "expert"))).status == 403
    admin = auth(client, "root", "admin")
    resp = await client.get("/api/metering?after=0&limit=3", headers=admin)
    page = await resp.json()
    assert [e["id"] for e in page["events"]] == ["s1:started", "s1:resumed:0", "s1:unit:0"]
    page2 = await (await client.get(f"/api/metering?after={page['next']}&limit=100", headers=admin)).json()
    assert [e["id"] for e in page2["events"]] == ["s1:unit:1", "s1:unit:2", "s1:ended"]
    assert page2["events"][-1]["data"]["total"] == 600
    bad = await client.get("/api/metering?limit=0", headers=admin)
    assert bad.status == 400 and (await bad.json())["error"]["code"] == "bad_request"
    # int() takes other scripts' digits; the API takes ASCII digits only, as everywhere else.
    for odd in ("\u0663", "+3", " 3", "3_0"):
        bad = await client.get("/api/metering", params={"limit": odd}, headers=admin)
        assert bad.status == 400 and (await bad.json())["error"]["code"] == "bad_request", odd


async def test_running_cost_and_refund_by_the_expert(client) -> None:  # type: ignore[no-untyped-def]
    await run_session(client)
    cost = await (await client.get("/api/billing/sessions/s1", headers=auth(client, "bob", "client"))).json()
    assert (cost["open"], cost["units"], cost["total"], cost["currency"]) == (False, 3, 600, "EUR")
    assert (await client.get("/api/billing/sessions/s1", headers=auth(client, "eve", "client"))).status == 403
    assert (await client.post("/api/billing/sessions/s1/refund", headers=auth(client, "bob", "client"))).status == 403
    assert (await client.post("/api/billing/sessions/s1/refund", headers=auth(client, "carol", "expert"))).status == 403
    resp = await client.post("/api/billing/sessions/s1/refund", json={"reason": "no show"},
                             headers=auth(client, "alice", "expert"))
    assert resp.status == 201 and (await resp.json())["amount"] == 600
    again = await client.post("/api/billing/sessions/s1/refund", headers=auth(client, "root", "admin"))
    assert again.status == 200 and (await again.json())["created"] is False
    missing = await client.post("/api/billing/sessions/nope/refund", headers=auth(client, "root", "admin"))
    assert missing.status == 404 and (await missing.json())["error"]["code"] == "unknown_session"


async def test_statement_and_export(client) -> None:  # type: ignore[no-untyped-def]
    await run_session(client)
    st = await (await client.get("/api/billing/statement", headers=auth(client, "alice", "expert"))).json()
    assert st["totals"] == {"EUR": {"sessions": 1, "gross": 600, "fee": 120, "payout": 480}}
    assert (await client.get("/api/billing/statement?expert=zed", headers=auth(client, "alice", "expert"))).status == 403
    resp = await client.get("/api/billing/export?format=csv&from=2020-01-01", headers=auth(client, "root", "admin"))
    lines = (await resp.text()).splitlines()
    assert lines[0].startswith("entry_id,") and len(lines) == 1 + 9
    bad = await client.get("/api/billing/export?from=yesterday", headers=auth(client, "root", "admin"))
    assert bad.status == 400


async def test_open_sessions_survive_an_app_restart(aiohttp_client, settings) -> None:  # type: ignore[no-untyped-def]
    from signalling.app.factory import create_app

    first = await aiohttp_client(create_app(settings))
    meter = first.app[METER]
    t0 = time.time() - 125
    await meter.started("live", "alice", "bob", Price.per_minute(Money(200, "EUR")), BillingPolicy(), at=t0)
    await meter.media_live("live", at=t0)
    await first.close()  # graceful shutdown: due units charged, the session left open

    second = await aiohttp_client(create_app(settings))
    meter = second.app[METER]
    assert meter.is_open("live")
    cost = meter.running_cost("live")
    assert (cost.units, cost.total) == (3, Money(600, "EUR"))
    assert [p.unit_index for p in await meter.ledger.postings("live")] == [0, 1, 2]


async def test_app_relays_the_outbox_to_redis(aiohttp_client, settings, redis, stream) -> None:  # type: ignore[no-untyped-def]
    import dataclasses

    from signalling.app.factory import create_app

    settings = dataclasses.replace(settings, redis_url="redis://127.0.0.1:6379/0", metering_stream=stream)
    client = await aiohttp_client(create_app(settings))
    await run_session(client, seconds=30)
    deadline = time.time() + 10
    while await redis.xlen(stream) < 4 and time.time() < deadline:
        await asyncio.sleep(0.05)
    ids = [f[b"id"].decode() for _, f in await redis.xrange(stream)]
    assert ids == ["s1:started", "s1:resumed:0", "s1:unit:0", "s1:ended"]


async def test_webhooks_without_a_secret_refuse_to_start(aiohttp_client, settings) -> None:  # type: ignore[no-untyped-def]
    import dataclasses

    from signalling.app.factory import create_app
    from signalling.core.settings import SettingsError

    settings = dataclasses.replace(settings, webhook_urls=("http://127.0.0.1:9/hook",))
    with pytest.raises(SettingsError, match="webhook_secret"):
        await aiohttp_client(create_app(settings))


async def test_metrics(client) -> None:  # type: ignore[no-untyped-def]
    await run_session(client)
    text = await (await client.get("/metrics", headers=auth(client, "ops", "admin"))).text()
    assert "expertcall_billing_units_total 3.0" in text
    assert "expertcall_billing_open_sessions 0.0" in text


async def test_two_apps_on_one_postgresql_give_one_billing_view(aiohttp_client, settings, postgres_url) -> None:  # type: ignore[no-untyped-def]
    """With --database postgresql://, every node answers the billing REST from the same ledger:
    a session metered on one is seen, refunded and exported on the other; fee overrides too."""
    import dataclasses

    from signalling.app.factory import create_app

    one = await aiohttp_client(create_app(dataclasses.replace(
        settings, database_url=postgres_url, node_id="n1", data_dir=settings.data_dir / "n1")))
    two = await aiohttp_client(create_app(dataclasses.replace(
        settings, database_url=postgres_url, node_id="n2", data_dir=settings.data_dir / "n2")))
    await run_session(one)
    admin = auth(two, "root", "admin")
    views = [await (await c.get("/api/billing/sessions/s1", headers=admin)).json() for c in (one, two)]
    assert views[0] == views[1] and (views[1]["open"], views[1]["units"], views[1]["total"]) == (False, 3, 600)
    feeds = [await (await c.get("/api/metering?limit=100", headers=admin)).json() for c in (one, two)]
    assert feeds[0] == feeds[1] and len(feeds[1]["events"]) == 6
    resp = await two.post("/api/billing/sessions/s1/refund", json={"reason": "test"}, headers=admin)
    assert resp.status == 201
    again = await one.post("/api/billing/sessions/s1/refund", headers=admin)
    assert again.status == 200 and (await again.json())["created"] is False
    statements = [await (await c.get("/api/billing/statement?expert=alice", headers=admin)).json() for c in (one, two)]
    assert statements[0] == statements[1] and statements[1]["totals"]["EUR"]["gross"] == 0
    put = await one.put("/api/billing/experts/alice/fee", json={"platform_fee_bps": 1000}, headers=admin)
    assert put.status == 200
    fee = await (await two.get("/api/billing/experts/alice/fee", headers=admin)).json()
    assert (fee["platform_fee_bps"], fee["default"]) == (1000, False)
