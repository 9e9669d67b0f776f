from __future__ import annotations

import asyncio

from signalling.billing.checkpointer import WalCheckpointer
from signalling.core.database import Database


async def test_checkpoints_run_off_the_loop_and_keep_the_wal_small(tmp_path) -> None:  # type: ignore[no-untyped-def]
    db = Database.in_dir(tmp_path)
    db.migrate("CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v TEXT)")
    checkpointer = WalCheckpointer(db, interval=0.05)
    checkpointer.start()
    assert db.fetchone("PRAGMA wal_autocheckpoint")[0] == 0  # type: ignore[index]
    wal = tmp_path / (Database.FILENAME + "-wal")
    with db.transaction():
        db.executemany("INSERT INTO t (v) VALUES (?)", [("x" * 1000,) for _ in range(3000)])
    # A passive checkpoint copies the WAL into the database; the next writes then restart the WAL
    # from its beginning instead of growing it.
    await asyncio.sleep(0.3)
    size = wal.stat().st_size
    for _ in range(3):
        with db.transaction():
            db.executemany("INSERT INTO t (v) VALUES (?)", [("y" * 1000,) for _ in range(3000)])
        await asyncio.sleep(0.3)
    assert wal.stat().st_size <= size * 1.5
    await checkpointer.close()
    await checkpointer.close()
    assert db.fetchone("PRAGMA wal_autocheckpoint")[0] == 1000  # type: ignore[index]
    assert db.fetchone("SELECT count(*) FROM t")[0] == 12_000  # type: ignore[index]


async def test_an_idle_database_is_not_checkpointed_again(tmp_path) -> None:  # type: ignore[no-untyped-def]
    db = Database.in_dir(tmp_path)
    db.migrate("CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v TEXT)")
    checkpointer = WalCheckpointer(db, interval=0.02)
    checkpointer.start()
    await asyncio.sleep(0.2)
    assert checkpointer.checkpoints == 1  # the first pass, then nothing while nothing changes
    with db.transaction():
        db.execute("INSERT INTO t (v) VALUES ('x')")
    await asyncio.sleep(0.2)
    assert checkpointer.checkpoints == 2
    await checkpointer.close()
