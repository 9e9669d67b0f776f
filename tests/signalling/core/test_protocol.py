"""The protocol artefacts (schemas, codes), and random or mutated messages thrown at /ws."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from aiohttp import WSMsgType
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from signalling.auth.tokens import TOKENS
from signalling.calls.node import SIGNALLING
from signalling.core import protocol
from signalling.core.protocol import CloseCode, ErrorCode, ProtocolError

from ...utils import FakePlane, Peer, build_app


def test_every_schema_is_valid_draft_2020_12() -> None:
    paths = sorted(protocol.SCHEMA_DIR.glob("*.json"))
    assert len(paths) == 1 + len(protocol.client_types()) + len(protocol.server_types())
    for path in paths:
        schema = json.loads(path.read_text())
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        Draft202012Validator.check_schema(schema)


def test_validation_names_the_offending_field() -> None:
    with pytest.raises(ProtocolError) as info:
        protocol.validate_client({"v": 1, "type": "help.accept", "session_id": "not valid!"})
    assert info.value.code == "invalid_message" and info.value.message.startswith("session_id:")
    with pytest.raises(ProtocolError) as info:
        protocol.validate_client({"v": 1, "type": "nope"})
    assert info.value.code == "unknown_type"
    protocol.validate_client({"v": 1, "type": "help.request", "id": 7, "skill": "python", "note": "hi"})


def test_error_messages_and_close_codes_are_what_the_docs_say() -> None:
    assert protocol.server_errors(protocol.error(ErrorCode.FORBIDDEN, "no", "r1")) == []
    assert protocol.server_errors({"v": 1, "type": "error", "code": "Bad Code", "message": "", "ref": None})
    assert all(4000 <= c < 5000 for c in CloseCode)
    docs = (protocol.SCHEMA_DIR.parent.parent / "docs" / "protocol.md").read_text()
    for code in ErrorCode:
        assert f"`{code.value}`" in docs, code
    for close in CloseCode:
        assert str(close.value) in docs, close
    for type_ in protocol.client_types() | protocol.server_types():
        assert f"`{type_}`" in docs, type_


def test_safe_ref_only_echoes_sane_ids() -> None:
    assert protocol.safe_ref("abc") == "abc" and protocol.safe_ref(5) == 5
    assert protocol.safe_ref(True) is None and protocol.safe_ref("x" * 65) is None
    assert protocol.safe_ref(2**60) is None and protocol.safe_ref({"a": 1}) is None


# --- fuzzing /ws ------------------------------------------------------------------------------

TEMPLATES: list[dict[str, Any]] = [
    {"v": 1, "type": "ping", "id": "p"},
    {"v": 1, "type": "presence.set", "id": 1, "status": "online"},
    {"v": 1, "type": "help.request", "id": 2, "expert_id": "erin", "note": "help"},
    {"v": 1, "type": "help.request", "id": 3, "skill": "python"},
    {"v": 1, "type": "help.accept", "id": 4, "session_id": "SESSION"},
    {"v": 1, "type": "help.decline", "id": 5, "session_id": "SESSION", "message": "no"},
    {"v": 1, "type": "help.cancel", "id": 6, "session_id": "SESSION"},
    {"v": 1, "type": "session.end", "id": 7, "session_id": "SESSION"},
    {"v": 1, "type": "media.offer", "id": 8, "session_id": "SESSION", "transport": "publish", "sdp": "v=0"},
    {"v": 1, "type": "media.answer", "id": 9, "session_id": "SESSION", "transport": "subscribe", "sdp": "v=0", "offer_id": 1},
    {"v": 1, "type": "media.ice", "id": 10, "session_id": "SESSION", "transport": "publish", "candidate": None},
    {"v": 1, "type": "resume", "id": 11, "resume_token": "abc.def"},
    {"v": 1, "type": "hello", "id": 12, "token": "not-a-token"},
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@st.composite
def mutated(draw: st.DrawFn) -> str:
    msg = dict(draw(st.sampled_from(TEMPLATES)))
    for _ in range(draw(st.integers(0, 3))):
        action = draw(st.sampled_from(["drop", "set", "add", "retype"]))
        if action == "drop" and msg:
            msg.pop(draw(st.sampled_from(sorted(msg))))
        elif action == "set" and msg:
            msg[draw(st.sampled_from(sorted(msg)))] = draw(json_values)
        elif action == "add":
            msg[draw(st.text(max_size=10))] = draw(json_values)
        else:
            msg["type"] = draw(st.sampled_from(sorted(protocol.client_types())) | st.text(max_size=12))
    return json.dumps(msg)


noise = st.one_of(
    mutated(),
    st.builds(json.dumps, json_values),
    st.text(max_size=200),
    st.sampled_from(["{", "[]", "null", '{"v":1}', '{"v":1,"type":"ping","id":NaN}', "1e999999", "[" * 2000 + "]" * 2000]),
)

CLOSES = {int(c) for c in CloseCode}


@pytest.fixture
async def fuzz_client(aiohttp_client, settings):  # type: ignore[no-untyped-def]
    settings.max_messages_per_second = 10_000
    return await aiohttp_client(build_app(settings, FakePlane()))


@hypothesis_settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    role=st.sampled_from(["client", "expert"]),
    user=st.sampled_from(["alice", "bob", "erin", "ezra"]),
    say_hello=st.booleans(),
    before=st.lists(noise, max_size=4),
    order=st.permutations(range(len(TEMPLATES))),
    after=st.lists(noise, max_size=4),
)
async def test_random_and_mutated_messages(fuzz_client, caplog, role, user, say_hello, before, order, after) -> None:  # type: ignore[no-untyped-def]
    # Every valid template, in a random order between random frames: the handlers run, not only
    # the validator, from whatever state earlier examples left behind.
    batch = before + [json.dumps(TEMPLATES[i]) for i in order] + after
    caplog.set_level(logging.WARNING)
    peer = Peer(await fuzz_client.ws_connect("/ws"))
    if say_hello:
        token = fuzz_client.app[TOKENS].mint(user, role)
        assert (await peer.request("hello", token=token))["type"] == "welcome"
        session = await fuzz_client.app[SIGNALLING].queues.current(user)
        sid = session.id if session else "0" * 32
    else:
        sid = "0" * 32
    for raw in batch:
        await peer.ws.send_str(raw.replace("SESSION", sid))
    await peer.ws.send_str(json.dumps({"v": 1, "type": "ping", "id": "final"}))
    while True:
        frame = await peer.ws.receive(timeout=10)
        if frame.type is not WSMsgType.TEXT:
            assert frame.type is WSMsgType.CLOSE and int(frame.data) in CLOSES, frame
            break
        reply = json.loads(frame.data)
        assert protocol.server_errors(reply) == [], reply
        if reply.get("ref") == "final":
            break
    await peer.ws.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
