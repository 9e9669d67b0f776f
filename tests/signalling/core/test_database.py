from __future__ import annotations

import pytest

from signalling.core.database import Database


def test_transaction_rolls_back_and_nests(tmp_path) -> None:  # type: ignore[no-untyped-def]
    db = Database.in_dir(tmp_path)
    db.migrate("CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY)")
    with pytest.raises(RuntimeError):
        with db.transaction():
            db.execute("INSERT INTO t VALUES ('a')")
            raise RuntimeError
    assert db.fetchall("SELECT * FROM t") == []
    with db.transaction():
        db.execute("INSERT INTO t VALUES ('b')")
        with db.transaction():
            db.execute("INSERT INTO t VALUES ('c')")
    db.close()
    assert [r["k"] for r in Database.in_dir(tmp_path).fetchall("SELECT k FROM t ORDER BY k")] == ["b", "c"]
