"""TURN REST API credentials: known vectors (computed with `openssl dgst -sha1 -hmac`), clamping."""

from __future__ import annotations

import base64
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from turn_config.credentials import (
    MIN_TTL,
    CredentialError,
    check_secret,
    clamp_ttl,
    make_credential,
    password_for,
)

pytestmark = pytest.mark.integration

SECRET = "north-sea-shared-secret"


@pytest.mark.parametrize(
    "username, password",
    [
        ("1700000000:alice", "NkD0chU+ej38TCmwbAEZasY6ago="),
        ("1893456000:expert-42", "gcGdm8sl2RkFCfX4WUkzeqOwAv4="),
    ],
)
def test_password_matches_openssl_hmac_sha1(username: str, password: str) -> None:
    assert password_for(SECRET, username) == password


def test_credential_username_is_expiry_then_user() -> None:
    cred = make_credential(SECRET, "alice", ttl=600, max_ttl=3600, now=1_699_999_400)
    assert cred.username == "1700000000:alice"
    assert cred.password == "NkD0chU+ej38TCmwbAEZasY6ago="
    assert cred.expires_at == 1_700_000_000
    assert cred.ttl == 600
    assert cred.user_id == "alice"


def test_user_id_with_a_colon_keeps_the_expiry_first() -> None:
    cred = make_credential(SECRET, "tenant:bob", ttl=600, max_ttl=3600, now=1_000_000)
    assert cred.username == "1000600:tenant:bob"
    assert cred.user_id == "tenant:bob"


def test_ttl_is_clamped_to_the_maximum_and_a_minimum() -> None:
    assert clamp_ttl(10**9, 3600) == 3600
    assert clamp_ttl(1, 3600) == MIN_TTL
    assert clamp_ttl(900, 3600) == 900
    cred = make_credential(SECRET, "alice", ttl=7 * 24 * 3600, max_ttl=86400, now=0)
    assert (cred.ttl, cred.expires_at) == (86400, 86400)


def test_a_maximum_below_the_minimum_is_refused() -> None:
    with pytest.raises(CredentialError) as info:
        clamp_ttl(30, 30)
    assert info.value.code == "turn_ttl_invalid"


@pytest.mark.parametrize(
    "secret, code",
    [("short", "turn_secret_too_short"), ("a" * 16 + " b", "turn_secret_invalid"), ("a" * 16 + "\nx", "turn_secret_invalid")],
)
def test_weak_or_unwritable_secrets_are_refused(secret: str, code: str) -> None:
    with pytest.raises(CredentialError) as info:
        check_secret(secret)
    assert info.value.code == code
    with pytest.raises(CredentialError):
        make_credential(secret, "alice", 600, 3600)


@pytest.mark.parametrize("user_id", ["", "x" * 129, "bad\nuser"])
def test_bad_user_ids_are_refused(user_id: str) -> None:
    with pytest.raises(CredentialError) as info:
        make_credential(SECRET, user_id, 600, 3600)
    assert info.value.code == "turn_user_invalid"


@given(
    user_id=st.text(min_size=1, max_size=128).filter(str.isprintable),
    ttl=st.integers(min_value=-(10**6), max_value=10**7),
    max_ttl=st.integers(min_value=MIN_TTL, max_value=10**6),
    now=st.integers(min_value=0, max_value=2**32),
)
def test_every_credential_is_what_coturn_recomputes(user_id: str, ttl: int, max_ttl: int, now: int) -> None:
    cred = make_credential(SECRET, user_id, ttl, max_ttl, now=now)
    expiry, _, user = cred.username.partition(":")
    assert (int(expiry), user) == (cred.expires_at, user_id)
    assert MIN_TTL <= cred.ttl <= max_ttl and cred.expires_at == now + cred.ttl
    assert cred.password == base64.b64encode(hmac.new(SECRET.encode(), cred.username.encode(), "sha1").digest()).decode()
