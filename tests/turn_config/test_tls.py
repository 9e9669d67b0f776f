"""turns: against a real coturn started with the generated TLS settings.

(Refusal of TLS 1.0/1.1 is not tested live: OpenSSL 3 refuses them at its default security level
whether or not the configuration says so, so such a test could not fail.)"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aioice import stun
from aioice.turn import create_turn_endpoint
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from turn_config.credentials import password_for

from ..coturn_server import SECRET, Coturn, running_coturn

pytestmark = pytest.mark.integration


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1, standing in for the operator's Let's Encrypt one."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "turn.pem", directory / "turn.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return cert_path, key_path


@pytest.fixture
def tls_coturn(tmp_path: Path) -> Iterator[tuple[Coturn, Path]]:
    cert, key = self_signed(tmp_path / "tls")
    with running_coturn(tmp_path / "coturn", tls=(cert, key)) as server:
        yield server, cert


def client_context(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


def credential() -> tuple[str, str]:
    username = f"{int(time.time()) + 600}:alice"
    return username, password_for(SECRET, username)


async def test_turns_allocation_over_tls(tls_coturn: tuple[Coturn, Path]) -> None:
    coturn, cert = tls_coturn
    assert "no-tlsv1\nno-tlsv1_1\n" in coturn.config.render()
    closed = asyncio.get_running_loop().create_future()

    class Protocol(asyncio.DatagramProtocol):
        def connection_lost(self, exc: Exception | None) -> None:
            closed.set_result(None)

    transport, _ = await create_turn_endpoint(
        Protocol, coturn.tls_address, *credential(), ssl=client_context(cert), transport="tcp"
    )
    try:
        host, port = transport.get_extra_info("sockname")
        assert host == "127.0.0.1" and coturn.config.min_port <= port <= coturn.config.max_port
    finally:
        transport.close()
        await closed


async def test_turns_refuses_bad_credentials_over_tls(tls_coturn: tuple[Coturn, Path]) -> None:
    coturn, cert = tls_coturn
    username, _ = credential()
    with pytest.raises(stun.TransactionFailed) as info:
        await create_turn_endpoint(
            asyncio.DatagramProtocol, coturn.tls_address, username, "forged", ssl=client_context(cert), transport="tcp"
        )
    assert info.value.response.attributes["ERROR-CODE"][0] == 401

