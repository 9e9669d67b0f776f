"""What one DTLS connection of the SFU costs after its handshake, and of what (issue 15).

Makes N pairs of pyOpenSSL connections on the SFU's shared SSL context (sfu.aiortc_hooks
SharedCertificate: the server and the client side each as the SFU builds them), hands the
handshake records across memory BIOs as aiortc does, then frees parts and prints glibc's
``mallinfo2().uordblks`` deltas (native heap in use) per connection, and tracemalloc's for the
Python side. Run: .venv/bin/python scripts/dtls_memory.py [N]
"""

from __future__ import annotations

import ctypes
import gc
import sys
import tracemalloc

from OpenSSL import SSL
from OpenSSL import crypto
from cryptography.hazmat.primitives.serialization import Encoding
from aiortc.rtcdtlstransport import SRTP_PROFILES, RTCDtlsTransport

from sfu.aiortc_hooks import SharedCertificate


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


_libc = ctypes.CDLL("libc.so.6")
_libc.mallinfo2.restype = _Mallinfo2


def heap() -> int:
    gc.collect()
    return int(_libc.mallinfo2().uordblks)


def handshake(server: SSL.Connection, client: SSL.Connection) -> None:
    """Both sides' handshakes, datagram by datagram across the memory BIOs."""
    done = [False, False]
    for _ in range(20):
        for i, (me, peer) in enumerate(((client, server), (server, client))):
            if not done[i]:
                try:
                    me.do_handshake()
                    done[i] = True
                except SSL.WantReadError:
                    pass
            while True:
                try:
                    peer.bio_write(me.bio_read(1500))
                except SSL.WantReadError:
                    break
        if all(done):
            return
    raise RuntimeError("handshake did not complete")


def connection(context: SSL.Context, server: bool) -> SSL.Connection:
    ssl = SSL.Connection(context)
    if server:
        ssl.set_accept_state()
    else:
        ssl.set_connect_state()
    return ssl


def main(n: int) -> None:
    # two certificates, so each side's peer certificate is a distinct X509 (as with a browser)
    server_ctx = SharedCertificate.generateCertificate()._create_ssl_context(SRTP_PROFILES)
    client_ctx = SharedCertificate.generateCertificate()._create_ssl_context(SRTP_PROFILES)
    lines = []

    def report(what: str, delta: int, per: int) -> None:
        lines.append(f"{what:<64} {delta / per / 1024:8.2f} KiB")

    # a bare connection: SSL object, its two memory BIOs, pyOpenSSL's wrapper
    base = heap()
    tracemalloc.start()
    bare = [connection(server_ctx, True) for _ in range(n)]
    python_bare = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    report("new SSL.Connection, before the handshake (native)", heap() - base, n)
    report("  of which pyOpenSSL's Python wrapper (tracemalloc)", python_bare, n)
    del bare

    base = heap()
    pairs = [(connection(server_ctx, True), connection(client_ctx, False)) for _ in range(n)]
    for server, client in pairs:
        handshake(server, client)
    after = heap()
    report("connection after the handshake, mean of both roles (native)", after - base, 2 * n)
    version = pairs[0][0].get_protocol_version_name()
    cipher = pairs[0][0].get_cipher_name()

    # the peer certificate each side keeps: what the same certificate costs parsed on its own
    peer = pairs[0][1].get_peer_certificate(as_cryptography=True)
    assert peer is not None
    der = peer.public_bytes(Encoding.DER)
    base = heap()
    x509 = [crypto.load_certificate(crypto.FILETYPE_ASN1, der) for _ in range(n)]
    report(f"  a parsed X509 peer certificate ({len(der)} bytes DER), with its wrapper", heap() - base, n)
    del x509

    # shutting down: each side's close_notify, as aiortc's stop() sends
    for server, client in pairs:
        server.shutdown()
        client.bio_write(server.bio_read(1500))
    report("  after SSL_shutdown (close_notify made)", heap() - after, 2 * n)

    base = heap()
    servers = [server for server, _ in pairs]
    del pairs, server, client
    report("freed: the DTLS client side (SSL_free + wrapper)", base - heap(), n)
    base = heap()
    del servers
    report("freed: the DTLS server side (SSL_free + wrapper)", base - heap(), n)
    # what stays after release_dtls: aiortc's transport object (its RtpRouter, header extension
    # map, pyee emitter), Python only
    certificate = SharedCertificate.generateCertificate()
    tracemalloc.start()
    transports = [RTCDtlsTransport(None, [certificate]) for _ in range(n)]  # type: ignore[arg-type]
    report("aiortc RTCDtlsTransport object, no connection (tracemalloc)",
           tracemalloc.get_traced_memory()[0], n)
    tracemalloc.stop()
    del transports
    print(f"{n} pairs, {version} {cipher}")
    print("\n".join(lines))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
