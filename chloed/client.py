"""For app developers: push to Chloe and check what Chloe relays to you.

Standard library only, blocking, so it drops into Flask, Django or any WSGI
handler without pulling in Twisted::

    from chloed.client import send, verify, SignatureError

    send("http://localhost:8901", SECRET, {"text": "hi"}, channel="pumpkin")

    def updates(request):                       # your application_server_url
        try:
            verify(SECRET, request.headers, request.body)
        except SignatureError:
            return HttpResponse(status=403)
        event = json.loads(request.body)        # {"type", "session", "data", ...}
        ...

Delivery to your app is at-least-once: a message may come again (after a
timeout, or a browser resending after a reconnect) with the same
``X-Chloe-Delivery`` header; keep the ids you have seen for a while and drop
repeats.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request
from typing import Any, Iterable, Mapping

__all__ = ["send", "verify", "SignatureError", "SendError"]


class SignatureError(Exception):
    """The request was not signed by Chloe with this secret, or is too old."""


class SendError(Exception):
    """Chloe refused a push; ``status`` and ``body`` say why."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"chloe answered {status}: {body[:200]!r}")
        self.status = status
        self.body = body


def send(
    url: str,
    secret: str | None,
    data: Any,
    channel: str | Iterable[str] | None = None,
    session: str | None = None,
    exclude: str | None = None,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """POST ``data`` to Chloe's ``/send``; returns Chloe's JSON answer.

    :param url: Chloe's base URL, e.g. ``http://localhost:8901``.
    :param channel: one channel or several; none (and no session): everyone.
        An empty list is refused (400), never taken for everyone.
    :param session: one browser session instead of channels.
    :raises SendError: when Chloe answers anything but 2xx.
    """
    body: dict[str, Any] = {"data": data}
    if channel is not None:
        body["channel"] = [channel] if isinstance(channel, str) else list(channel)
    if session is not None:
        body["session"] = session
    if exclude is not None:
        body["exclude"] = exclude
    request = urllib.request.Request(
        url.rstrip("/") + "/send",
        data=json.dumps(body).encode("utf-8"),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    if secret:
        request.add_header("Authorization", "Bearer " + secret)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        raise SendError(exc.code, exc.read()) from None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        for key, candidate in headers.items():
            if key.lower() == lowered:
                return candidate
    return value


def verify(
    secret: str | Iterable[str],
    headers: Mapping[str, str],
    body: bytes,
    max_age: float = 300,
    now: float | None = None,
) -> None:
    """Check that Chloe signed ``body`` with ``secret`` within ``max_age``.

    :param secret: the shared secret, or several while keys rotate.
    :param headers: the request headers (any mapping; WSGI ``environ``
        style ``HTTP_X_CHLOE_SIGNATURE`` keys work too).
    :param body: the raw request body, exactly as received.
    :raises SignatureError: bad or missing signature, or a timestamp older
        (or newer) than ``max_age`` seconds, which stops replays.
    """
    signature = _header(headers, "X-Chloe-Signature") or _header(headers, "HTTP_X_CHLOE_SIGNATURE")
    timestamp = _header(headers, "X-Chloe-Timestamp") or _header(headers, "HTTP_X_CHLOE_TIMESTAMP")
    if not signature or not timestamp:
        raise SignatureError("missing X-Chloe-Signature or X-Chloe-Timestamp")
    try:
        sent = int(timestamp)
    except ValueError:
        raise SignatureError("X-Chloe-Timestamp is not a number") from None
    if abs((time.time() if now is None else now) - sent) > max_age:
        raise SignatureError("the request is too old (or from the future)")
    secrets = [secret] if isinstance(secret, str) else list(secret)
    ok = False
    for key in secrets:
        mac = hmac.new(key.encode("utf-8"), timestamp.encode("ascii") + b"." + body, hashlib.sha256)
        ok |= hmac.compare_digest("sha256=" + mac.hexdigest(), signature)
    if not ok:
        raise SignatureError("the signature does not match")
