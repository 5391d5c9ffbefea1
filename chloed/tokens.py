"""Channel tokens: JWTs the app mints to let a browser into ``private-`` and
``presence-`` channels.

A token is HS256-signed with one of the configured secrets (the first signs,
any verifies, so keys rotate) and carries ``channels`` (the channels it opens),
``exp``, and optionally ``user`` (``{"id": …, "info": {…}}``, required on
presence channels).
"""

from __future__ import annotations

import time
from secrets import token_urlsafe
from dataclasses import dataclass
from typing import Any

import jwt

from chloed.errors import ProtocolError
from chloed.frames import FORBIDDEN

PRIVATE_PREFIXES = ("private-", "presence-")
# Signs the status feed's tokens when no secret is configured: made at
# start-up, never written anywhere, so only this process's pages have them.
_PROCESS_KEY = token_urlsafe(32)
FEED_TOKEN_SECONDS = 12 * 3600


def needs_token(channel: str) -> bool:
    return channel.startswith(PRIVATE_PREFIXES)


@dataclass(frozen=True, slots=True)
class Grant:
    """What a verified token allows: its channels and its user."""

    channels: frozenset[str]
    user: Any


def verify(token: str | None, channel: str, secrets: tuple[str, ...]) -> Grant:
    """Check ``token`` opens ``channel``.

    :raises ProtocolError: ``forbidden``, saying why, for a missing, expired,
        tampered or wrong-channel token.
    """

    def refuse(why: str) -> ProtocolError:
        return ProtocolError(FORBIDDEN, why, channel=channel)

    if not secrets:
        raise refuse("this server has no secret, so it cannot open private channels")
    if token is None:
        raise refuse(f"{channel} needs a token")
    claims = None
    for secret in secrets:
        try:
            claims = jwt.decode(
                token, secret, algorithms=["HS256"], options={"require": ["exp"]}
            )
            break
        except jwt.ExpiredSignatureError:
            raise refuse("the token has expired") from None
        except jwt.InvalidSignatureError:
            continue
        except (jwt.InvalidTokenError, UnicodeError):
            # UnicodeError: PyJWT encodes a str token as UTF-8, which a
            # lone surrogate (from a caller that did not refuse it) fails.
            raise refuse("the token is not a valid channel token") from None
    if claims is None:
        raise refuse("the token's signature does not match")
    allowed = claims.get("channels")
    if not isinstance(allowed, list) or channel not in allowed:
        raise refuse(f"the token does not open {channel}")
    user = claims.get("user")
    if channel.startswith("presence-"):
        if not isinstance(user, dict) or not isinstance(user.get("id"), (str, int)):
            raise refuse('presence channels need a token with user {"id", "info"}')
    return Grant(frozenset(c for c in allowed if isinstance(c, str)), user)


def feed_keys(secrets: tuple[str, ...]) -> tuple[str, ...]:
    """The keys a token to one of Chloe's own channels may be signed with:
    the configured secrets (the app may mint them too), then this
    process's own key."""
    return secrets + (_PROCESS_KEY,)


def feed_token(channel: str, secrets: tuple[str, ...], now: float | None = None) -> str:
    """A token opening ``channel`` (``chloe.status``) for a page chloed
    served to someone ``/status`` would answer; signed with the first
    secret, so any node of a cluster takes it, or with this process's key
    when there is none."""
    key = feed_keys(secrets)[0]
    issued = time.time() if now is None else now
    return jwt.encode({"channels": [channel], "exp": int(issued + FEED_TOKEN_SECONDS)}, key, algorithm="HS256")
