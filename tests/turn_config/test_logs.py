"""docs/turn.md against a real coturn run as documented (`turnserver -c FILE`): every log line the
docs quote appears, and coturn opens the database the generated file names."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from aioice import stun

from ..coturn_server import running_coturn
from .test_relay import allocate, create_permission, credential

pytestmark = pytest.mark.integration

DOCS = Path(__file__).resolve().parents[2] / "docs" / "turn.md"

# What docs/turn.md quotes under "What coturn logs", as patterns over the real lines.
DOCUMENTED = {
    "SQLite DB connection success: <the --db file>": r"SQLite DB connection success: {db}",
    "user <>: incoming packet message processed, error 401: Unauthorized":
        r"user <>: incoming packet message processed, error 401: Unauthorized",
    "new, realm=<realm>, username=<expiry:user>, lifetime=600":
        r"new, realm=<expertcall\.test>, username=<{good}>, lifetime=600",
    "incoming packet ALLOCATE processed, success": r"user <{good}>: incoming packet ALLOCATE processed, success",
    "usage: realm=<realm>, username=<expiry:user>, rp=…, rb=…, sp=…, sb=…":
        r"usage: realm=<expertcall\.test>, username=<{good}>, rp=\d+, rb=\d+, sp=\d+, sb=\d+",
    "ERROR: check_stun_auth: Cannot find credentials of user <expiry:user>":
        r"ERROR: check_stun_auth: Cannot find credentials of user <{forged}>",
    "error 401: Unauthorized": r"user <{expired}>: incoming packet message processed, error 401: Unauthorized",
    "ERROR: A peer IP 10.0.0.1 denied in the range: 10.0.0.0-10.255.255.255":
        r"ERROR: A peer IP 10\.0\.0\.1 denied in the range: 10\.0\.0\.0-10\.255\.255\.255",
    "CREATE_PERMISSION processed, error 403: Forbidden IP": r"CREATE_PERMISSION processed, error 403: Forbidden IP",
}


def test_the_docs_quote_these_lines() -> None:
    text = DOCS.read_text()
    for quoted in DOCUMENTED:
        assert f"`{quoted}`" in text, quoted
    # What main's docs said, and coturn never logs for a refused credential.
    assert "shows `401` for expired or forged" not in text


async def test_coturn_logs_what_the_docs_say(tmp_path: Path) -> None:
    with running_coturn(tmp_path / "coturn") as coturn:
        good = credential("alice")
        forged = credential("mallory", secret="another-secret-0123456789")
        expired = credential("bob", expires_in=-60)
        protocol = await allocate(coturn, *good)
        try:
            with pytest.raises(stun.TransactionFailed):
                await create_permission(protocol, ("10.0.0.1", 9))
        finally:
            await protocol.delete()
        for refused in (forged, expired):
            with pytest.raises(stun.TransactionFailed):
                await allocate(coturn, *refused)
        patterns = {
            quoted: re.compile(pattern.format(db=re.escape(str(coturn.config.userdb)), good=re.escape(good[0]),
                                              forged=re.escape(forged[0]), expired=re.escape(expired[0])))
            for quoted, pattern in DOCUMENTED.items()
        }
        missing = dict(patterns)
        for _ in range(75):  # the usage line comes when coturn closes the allocation
            log = coturn.log()
            missing = {q: p for q, p in missing.items() if not p.search(log)}
            if not missing:
                break
            await asyncio.sleep(0.2)
        assert not missing, f"coturn never logged {list(missing)}:\n{coturn.log()[-3000:]}"
        assert coturn.config.userdb.exists()
        # An expired credential is logged like a forged one: coturn does not tell them apart.
        assert f"Cannot find credentials of user <{expired[0]}>" in coturn.log()
