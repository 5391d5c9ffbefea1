"""chloed.client: what an app developer calls from Flask, Django or a script."""

from __future__ import annotations

import pytest

from chloed.client import SendError, SignatureError, send, verify
from chloed.relay import sign

BODY = b'{"type":"message","data":"hi"}'


def headers(secret: str, ts: int, body: bytes = BODY) -> dict[str, str]:
    return {"X-Chloe-Timestamp": str(ts), "X-Chloe-Signature": sign(secret, ts, body)}


def test_verify_accepts_what_chloe_signs():
    """A request signed by Chloe's relay verifies, whatever the header case."""
    verify("s", headers("s", 1000), BODY, now=1000)
    lowered = {k.lower(): v for k, v in headers("s", 1000).items()}
    verify("s", lowered, BODY, now=1000)


def test_verify_accepts_wsgi_environ_keys():
    """WSGI environ keys (HTTP_X_CHLOE_...) work too."""
    h = headers("s", 1000)
    environ = {"HTTP_X_CHLOE_TIMESTAMP": h["X-Chloe-Timestamp"], "HTTP_X_CHLOE_SIGNATURE": h["X-Chloe-Signature"]}
    verify("s", environ, BODY, now=1000)


def test_verify_with_rotated_secrets():
    """During a key rotation either secret verifies."""
    verify(["new", "old"], headers("old", 1000), BODY, now=1000)


@pytest.mark.parametrize(
    "hdrs, body, now",
    [
        (headers("other", 1000), BODY, 1000),            # wrong secret
        (headers("s", 1000), BODY + b" ", 1000),          # tampered body
        (headers("s", 1000), BODY, 1000 + 301),           # replayed later
        (headers("s", 2000), BODY, 1000),                 # from the future
        ({"X-Chloe-Timestamp": "1000"}, BODY, 1000),      # no signature
        ({"X-Chloe-Timestamp": "x", "X-Chloe-Signature": "sha256=00"}, BODY, 1000),
    ],
)
def test_verify_rejects(hdrs, body, now):
    """Bad, missing, tampered or stale signatures raise SignatureError."""
    with pytest.raises(SignatureError):
        verify("s", hdrs, body, now=now)


def test_send_reaches_a_real_chloed(chloed_factory):
    """send() pushes through /send and returns Chloe's answer; a wrong secret raises SendError."""
    server = chloed_factory()
    answer = send(server.url, server.secret, {"x": 1}, channel="pumpkin")
    assert set(answer["ids"]) == {"pumpkin"}
    with pytest.raises(SendError) as info:
        send(server.url, "wrong", "x")
    assert info.value.status == 401
