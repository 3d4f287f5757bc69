"""A self-signed certificate for 127.0.0.1 and an HTTPS endpoint that presents it, for tests of
how clients treat a certificate no CA vouches for (a wrong CA bundle, a TLS-intercepting proxy).

    from tls_server import self_signed_certificate, untrusted_tls_server

    with untrusted_tls_server() as (url, accepted):
        ...                                  # a client refuses the handshake
        assert accepted["connections"] == 1

Needs only ``cryptography`` (no moto, boto3 or hvac).
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import socket
import ssl
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path


def self_signed_certificate(directory: str | os.PathLike[str]) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that no CA vouches for, written to ``directory``; returns
    (cert file, key file). The cert file doubles as a CA bundle that trusts it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

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
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = Path(directory, "cert.pem"), Path(directory, "key.pem")
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


@contextlib.contextmanager
def untrusted_tls_server() -> Iterator[tuple[str, Counter[str]]]:
    """An HTTPS endpoint on 127.0.0.1 with a self-signed certificate, as a wrong CA bundle or a
    TLS-intercepting proxy looks to a client; yields its URL and a counter whose "connections"
    is the number of TCP connections (one per attempt) the endpoint accepted."""
    accepted: Counter[str] = Counter()
    with tempfile.TemporaryDirectory() as directory:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*self_signed_certificate(directory))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.05)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            accepted["connections"] += 1
            conn.settimeout(2)
            # The client refuses the certificate during the handshake; nothing else happens.
            with contextlib.suppress(OSError), context.wrap_socket(conn, server_side=True):
                pass
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{listener.getsockname()[1]}", accepted
    finally:
        stop.set()
        thread.join()
        listener.close()
