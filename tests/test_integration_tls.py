"""TLS through endpoint strings: ``--listen ssl:PORT:privateKey=…:certKey=…``
serves the API and WebSocket over TLS, with a certificate the test makes."""

from __future__ import annotations

import datetime
import json
import ssl
import urllib.request

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.sync.client import connect

from tests.servers import Chloed, free_port


def self_signed(tmp_path) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = tmp_path / "key.pem", tmp_path / "cert.pem"
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(key_path), str(cert_path)


def test_tls_endpoint_serves_https_and_wss(tmp_path):
    """With an ssl: endpoint, /health answers over HTTPS and a browser connects over wss://."""
    key, cert = self_signed(tmp_path)
    port = free_port()
    context = ssl.create_default_context(cafile=cert)
    # --listen repeats: the fixture's plain TCP port (for its readiness check) and TLS.
    server = Chloed("--listen", f"ssl:{port}:interface=127.0.0.1:privateKey={key}:certKey={cert}")
    try:
        with urllib.request.urlopen(f"https://localhost:{port}/health", context=context, timeout=10) as response:
            assert json.loads(response.read())["status"] == "ok"
        with connect(f"wss://localhost:{port}/ws", ssl=context, open_timeout=10) as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "connected"
    finally:
        server.stop()
