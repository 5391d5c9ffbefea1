"""Tokens: JWTs the app mints for a browser.

A *channel token* lets a browser into ``private-`` and ``presence-``
channels. It is HS256-signed with one of the configured secrets (the first
signs, any verifies, so keys rotate) and carries ``channels`` (the channels
it opens), ``exp``, and optionally ``user`` (``{"id": …, "info": {…}}``,
required on presence channels) and ``jti``.

A *connection token* names the user of a connection: ``sub`` (the user id),
``exp``, and optionally ``iat``, ``info``, ``channels`` (which it opens, as a
channel token's do) and ``jti``. HS256 with a secret, or RS256/ES256 with
``token_public_key``.
"""

from __future__ import annotations

import math
import time
from secrets import token_urlsafe
from dataclasses import dataclass
from typing import Any

import jwt

from chloed.errors import ProtocolError
from chloed.frames import FORBIDDEN, TOKEN_EXPIRED, TOKEN_INVALID, valid_user

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
    exp: float = 0.0
    jti: str | None = None


def verify(token: str | None, channel: str, secrets: tuple[str, ...], presence: bool | None = None) -> Grant:
    """Check ``token`` opens ``channel``. A connection token (with ``sub``)
    may be one too: its ``channels`` open channels, its ``sub`` and ``info``
    are the user.

    :param presence: whether ``channel`` is a presence channel (by default,
        whether it is named ``presence-…``): the token must name a user.

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
    if user is None and isinstance(claims.get("sub"), str):
        user = {"id": claims["sub"], "info": claims.get("info")}
    if channel.startswith("presence-") if presence is None else presence:
        if not isinstance(user, dict) or not isinstance(user.get("id"), (str, int)):
            raise refuse('presence channels need a token with user {"id", "info"}')
    jti = claims.get("jti")
    return Grant(
        frozenset(c for c in allowed if isinstance(c, str)), user, float(claims["exp"]),
        jti if isinstance(jti, str) and jti else None,
    )


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a verified connection token says the connection is."""

    user: str
    info: Any
    channels: frozenset[str]
    exp: float
    iat: float
    jti: str | None

    @property
    def member(self) -> dict[str, Any]:
        """As a presence member and in lifecycle events: ``{"id", "info"}``."""
        return {"id": self.user, "info": self.info}


#: Seconds a token's ``iat`` may be ahead of this server's clock (clocks
#: drift); more, and it could never be revoked by ``before``.
IAT_LEEWAY = 60
_YEAR_9999 = 253402300800


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# The signature and the claims' presence are PyJWT's to check; the times,
# against the hub's clock, are identify's.
_ON_OUR_CLOCK: Any = {"require": ["exp", "sub"], "verify_exp": False, "verify_iat": False, "verify_nbf": False}

#: The asymmetric algorithms a ``token_public_key`` verifies.
PUBLIC_ALGORITHMS = ("RS256", "ES256")


def is_connection_token(token: str) -> bool:
    """Whether ``token`` names a user (has ``sub``): a connection token,
    not only a channel token. Unverified: only to tell which to verify."""
    try:
        return "sub" in jwt.decode(token, options={"verify_signature": False})
    except (jwt.InvalidTokenError, UnicodeError):
        return False


def identify(
    token: str, secrets: tuple[str, ...], public_keys: tuple[tuple[str, Any], ...] = (), now: float | None = None
) -> Identity:
    """Verify a connection token.

    :param public_keys: ``(algorithm, key)`` pairs of ``token_public_key``.
    :param now: the time its ``exp`` and ``nbf`` are held to: the hub's
        clock (the wall clock's by default), which also times its expiry.
    :raises ProtocolError: ``token_expired``, or ``token_invalid`` saying why.
    """

    def invalid(why: str) -> ProtocolError:
        return ProtocolError(TOKEN_INVALID, why)

    try:
        algorithm = jwt.get_unverified_header(token).get("alg")
    except (jwt.InvalidTokenError, UnicodeError):
        raise invalid("the token is not a JWT") from None
    if algorithm == "HS256":
        keys: list[tuple[str, Any]] = [("HS256", secret) for secret in secrets]
    elif algorithm in PUBLIC_ALGORITHMS:
        keys = [pair for pair in public_keys if pair[0] == algorithm]
    else:
        raise invalid(f"tokens are signed HS256, RS256 or ES256, not {str(algorithm)[:16]!r}")
    if not keys:
        raise invalid(f"this server has no key to verify {algorithm} tokens")
    claims = None
    for name, key in keys:
        try:
            claims = jwt.decode(token, key, algorithms=[name], options=_ON_OUR_CLOCK)
            break
        except jwt.InvalidSignatureError:
            continue
        except (jwt.InvalidTokenError, UnicodeError, ValueError, TypeError) as exc:
            raise invalid(f"the token is not a valid connection token ({type(exc).__name__})") from None
    if claims is None:
        raise invalid("the token's signature does not match")
    when = time.time() if now is None else now
    exp, iat, nbf = claims["exp"], claims.get("iat", 0), claims.get("nbf", 0)
    if not all(_number(value) and math.isfinite(value) and abs(value) < _YEAR_9999 for value in (exp, iat, nbf)):
        raise invalid("exp, iat and nbf must be numbers of seconds since 1970")
    if iat > when + IAT_LEEWAY:
        # (A token issued in the future would outlive every revocation.)
        raise invalid("the token is issued in the future (iat)")
    if exp <= when:
        raise ProtocolError(TOKEN_EXPIRED, "the connection token has expired")
    if nbf > when:
        raise invalid("the token is not valid yet (nbf)")
    user = claims["sub"]
    if not valid_user(user):
        raise invalid("sub must be a string of 1 to 128 characters, without control characters")
    jti = claims.get("jti")
    if jti is not None and not valid_user(jti):
        raise invalid("jti must be a string of 1 to 128 characters, without control characters")
    allowed = claims.get("channels", [])
    if not isinstance(allowed, list):
        raise invalid("channels must be a list of channel names")
    return Identity(
        user, claims.get("info"), frozenset(c for c in allowed if isinstance(c, str)),
        float(claims["exp"]), float(iat), jti,
    )


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
