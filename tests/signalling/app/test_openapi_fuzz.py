"""schemathesis against a live ``expertcall serve``, on the memory and on the Redis backend.

Property-based tests generated from /api/openapi.json, as an admin, a client and an expert: no
500 anywhere, and every status, content type, header and body one the document allows. Every
check runs except ``positive_data_acceptance``, which expects any input the schema allows to
succeed: bookings, ratings and profiles have rules a JSON Schema cannot state (an end after its
start, inside the expert's working hours, a session that has ended), so schema-valid input is
rightly refused with a coded 400 there. Schema-violating input must be refused (its negative
twin, ``negative_data_rejection``, does run).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis as sync_redis

from ...backends import REDIS_URL, delete_prefix, redis_available
from ...externals import require
from ...served import ROOT, run_cli, serve

pytestmark = pytest.mark.integration

ROLES = ("admin", "client", "expert")
EXAMPLES = "15"


def fuzz(url: str, token: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    st = Path(sys.executable).with_name("st")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks"}
    return subprocess.run(
        [str(st), "run", f"{url}/api/openapi.json", "--header", f"Authorization: Bearer {token}",
         "--checks", "all", "--exclude-checks", "positive_data_acceptance", "--max-examples", EXAMPLES,
         "--generation-database", "none", "--no-color", "--report-dir", str(tmp_path / "schemathesis")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )


def our_tracebacks(log: str) -> list[str]:
    """Exceptions that reached aiohttp from our code (its own HTTP parser's 400s are not ours)."""
    return [block for block in log.split("Traceback (most recent call last):")[1:]
            if re.search(r'File "[^"]*/(signalling|sfu|web_demo|turn_config)/', block)]


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_schemathesis_finds_nothing(tmp_path: Path, backend: str) -> None:
    env: dict[str, str] = {}
    prefix = f"test-{uuid.uuid4().hex}"
    if backend == "redis":
        require(redis_available(), "redis-server on 127.0.0.1:6379")
        env = {"EXPERTCALL_REDIS_URL": REDIS_URL, "EXPERTCALL_REDIS_PREFIX": prefix,
               "EXPERTCALL_METERING_STREAM": f"{prefix}:metering"}
    try:
        with serve(tmp_path, "--media-loopback", env=env) as server:
            for role in ROLES:
                minted = run_cli("token", "--user", f"fuzz-{role}", "--role", role, cwd=tmp_path)
                assert minted.returncode == 0, minted.stderr
                result = fuzz(server.url, minted.stdout.strip(), tmp_path)
                assert result.returncode == 0, f"as {role}:\n{result.stdout[-12000:]}\n{result.stderr[-2000:]}"
                assert re.search(r"\d+ generated, \d+ passed", result.stdout), result.stdout[-3000:]
            log = server.log()
        assert not our_tracebacks(log), our_tracebacks(log)[0][-3000:]
    finally:
        if backend == "redis":
            delete_prefix(prefix)
            client = sync_redis.Redis.from_url(REDIS_URL)
            client.delete(f"{prefix}:metering")
            client.close()
