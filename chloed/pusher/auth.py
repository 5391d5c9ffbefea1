"""Pusher's signatures, each checked in constant time: a channel's auth
(``key:HMAC(secret, "socket_id:channel[:channel_data]")``), a user's sign-in
(``key:HMAC(secret, "socket_id::user::user_data")``), the HTTP API's signed
query, and the signature of the webhooks Chloe sends."""

from __future__ import annotations

import hashlib
import hmac
from typing import Mapping

from chloed.pusher.apps import PusherApp


def hex_hmac(secret: str, text: bytes) -> str:
    return hmac.new(secret.encode("utf-8"), text, hashlib.sha256).hexdigest()


def _signed_by(app: PusherApp, auth: object, text: str) -> bool:
    """Whether ``auth`` is ``"<app key>:<hex HMAC of text>"``."""
    if not isinstance(auth, str) or len(auth) > 256:
        return False
    key, colon, signature = auth.partition(":")
    if not colon:
        return False
    expected = hex_hmac(app.secret, text.encode("utf-8"))
    # Both compared whole, whatever differs first.
    key_ok = hmac.compare_digest(key.encode("utf-8"), app.key.encode("utf-8"))
    return hmac.compare_digest(signature.encode("utf-8"), expected.encode("ascii")) and key_ok


def channel_auth_ok(app: PusherApp, auth: object, socket_id: str, channel: str, channel_data: str | None) -> bool:
    """Whether ``auth`` lets ``socket_id`` into ``channel`` (with
    ``channel_data`` signed in, for a presence channel)."""
    text = f"{socket_id}:{channel}" if channel_data is None else f"{socket_id}:{channel}:{channel_data}"
    return _signed_by(app, auth, text)


def signin_ok(app: PusherApp, auth: object, socket_id: str, user_data: str) -> bool:
    """Whether ``auth`` signs ``user_data`` in on ``socket_id``."""
    return _signed_by(app, auth, f"{socket_id}::user::{user_data}")


def query_signature(app: PusherApp, method: str, path: str, query: Mapping[str, str]) -> str:
    """The ``auth_signature`` of an HTTP API request: the HMAC of the
    method, the path and the query's other parameters sorted by name,
    as ``k=v`` joined by ``&``, unescaped."""
    params = "&".join(f"{k}={query[k]}" for k in sorted(query) if k != "auth_signature")
    return hex_hmac(app.secret, f"{method}\n{path}\n{params}".encode("utf-8"))


def query_ok(app: PusherApp, method: str, path: str, query: Mapping[str, str]) -> bool:
    signature = query.get("auth_signature", "")
    expected = query_signature(app, method, path, query)
    return hmac.compare_digest(signature.encode("utf-8"), expected.encode("ascii"))


def webhook_signature(app: PusherApp, body: bytes) -> bytes:
    """``X-Pusher-Signature``: the hex HMAC-SHA256 of the body."""
    return hex_hmac(app.secret, body).encode("ascii")
