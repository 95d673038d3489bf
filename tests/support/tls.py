"""A self-signed certificate for 127.0.0.1, made with openssl, for the TLS tests."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path


def self_signed_server_context(directory: Path) -> ssl.SSLContext:
    """A server-side SSL context with a fresh self-signed certificate for 127.0.0.1."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True,
                   timeout=60)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context
