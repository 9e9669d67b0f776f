from __future__ import annotations

from signalling.calls.resume import MAX_AGE, ResumeTokens


def test_tokens_name_the_user_and_connection_and_resist_forgery() -> None:
    tokens = ResumeTokens("s" * 32)
    token = tokens.issue("alice", "conn-1", now=1000.0)
    claim = tokens.verify(token, now=1001.0)
    assert claim is not None and (claim.user_id, claim.conn_id) == ("alice", "conn-1")
    assert ResumeTokens("t" * 32).verify(token, now=1001.0) is None
    body, _, sig = token.partition(".")
    assert tokens.verify(body + "." + sig[::-1], now=1001.0) is None
    assert tokens.verify(tokens.issue("mallory", "c")[:-1] + "é") is None
    for junk in ("", ".", "a.b", "é.é", "e30.e30"):
        assert tokens.verify(junk) is None
    assert tokens.verify(token, now=1000.0 + MAX_AGE + 1) is None
