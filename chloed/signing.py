"""How the relay signs its POSTs to the app, chosen by ``relay_signature``.

``"chloe"`` is Chloe's own scheme, kept byte for byte so that apps written
against it go on verifying: ``X-Chloe-Timestamp`` and ``X-Chloe-Signature:
sha256=<hex HMAC-SHA256 of "<timestamp>." + body>``.

``"standard"`` follows Standard Webhooks 1.0 (symmetric, ``v1``), so that an
app can verify with any of that project's libraries instead of code of its
own: ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature: v1,<base64
of HMAC-SHA256 of "<id>.<timestamp>." + body>``, keyed with the decoded part of
a ``whsec_<base64>`` secret.

Both sign with the first configured ``secret``; no secret means unsigned.
Each signer keys its HMAC once and copies it per POST, which saves the two
key-block hashes HMAC would otherwise redo for every message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from typing import Protocol

from chloed.errors import ConfigError

#: The values ``relay_signature`` accepts.
SCHEMES = ("chloe", "standard")

#: The options a bad scheme or a bad secret is blamed on.
SCHEME_OPTION = "relay_signature"
SECRET_OPTION = "secret"

#: Standard Webhooks' marker of a symmetric secret.
STANDARD_PREFIX = "whsec_"
#: The spec: "at least 24 bytes (192 bits, 512 maximum)", read as 512 bits.
STANDARD_KEY_MIN = 24
STANDARD_KEY_MAX = 64
#: What :func:`generate_standard_secret` draws: SHA-256's block holds 64,
#: and 32 is as strong as the hash.
_GENERATED_KEY_BYTES = 32

_CHLOE_TIMESTAMP = b"X-Chloe-Timestamp"
_CHLOE_SIGNATURE = b"X-Chloe-Signature"
# Lower case as the spec writes them; Twisted sends them as Webhook-Id etc.,
# which is the same header to any HTTP server.
_WEBHOOK_ID = b"webhook-id"
_WEBHOOK_TIMESTAMP = b"webhook-timestamp"
_WEBHOOK_SIGNATURE = b"webhook-signature"


class Signer(Protocol):
    """What the relay asks of a scheme: the headers that sign one POST."""

    def headers(self, msg_id: bytes, stamp: bytes, body: bytes) -> dict[bytes, list[bytes]]:
        """The signing headers (only those) of a POST of ``body``.

        :param msg_id: ASCII, with no ``.``: the delivery id of a single
            message, a fresh random id for a batch.
        :param stamp: the unix time in whole seconds, as ASCII digits.
        """
        ...


class ChloeSigner:
    """Chloe's own scheme; ``msg_id`` is not signed (it goes, unsigned, in
    ``X-Chloe-Delivery``, as it always has)."""

    __slots__ = ("_mac",)

    def __init__(self, secret: str) -> None:
        self._mac = hmac.new(secret.encode("utf-8"), digestmod=hashlib.sha256)

    def headers(self, msg_id: bytes, stamp: bytes, body: bytes) -> dict[bytes, list[bytes]]:
        """``X-Chloe-Timestamp`` and ``X-Chloe-Signature``, the value
        :func:`chloed.relay.sign` gives."""
        mac = self._mac.copy()
        mac.update(stamp + b".")
        mac.update(body)
        return {
            _CHLOE_TIMESTAMP: [stamp],
            _CHLOE_SIGNATURE: [b"sha256=" + mac.hexdigest().encode("ascii")],
        }


class StandardSigner:
    """Standard Webhooks' symmetric scheme (``v1``).

    :raises ConfigError: naming ``secret`` when it is no ``whsec_`` secret.
    """

    __slots__ = ("_mac",)

    def __init__(self, secret: str) -> None:
        key = check_standard_secret(SECRET_OPTION, secret)
        self._mac = hmac.new(key, digestmod=hashlib.sha256)

    def headers(self, msg_id: bytes, stamp: bytes, body: bytes) -> dict[bytes, list[bytes]]:
        """``webhook-id``, ``webhook-timestamp`` and ``webhook-signature``.

        The id and the timestamp are signed with the body, so that neither
        can be replayed with another: the id is the app's idempotency key,
        the timestamp its guard against replays.
        """
        mac = self._mac.copy()
        mac.update(msg_id + b"." + stamp + b".")
        mac.update(body)
        return {
            _WEBHOOK_ID: [msg_id],
            _WEBHOOK_TIMESTAMP: [stamp],
            _WEBHOOK_SIGNATURE: [b"v1," + base64.b64encode(mac.digest())],
        }


def make_signer(scheme: str, secrets: tuple[str, ...]) -> Signer | None:
    """The signer of ``relay_signature = scheme``, keyed with the first of
    ``secrets``; None, for unsigned POSTs, when there is no secret.

    :raises ConfigError: naming ``relay_signature`` for an unknown scheme,
        or ``secret`` for a secret the scheme cannot use.
    """
    if scheme not in SCHEMES:
        raise ConfigError(SCHEME_OPTION, f"{scheme!r} is not one of {', '.join(SCHEMES)}")
    if not secrets:
        return None
    if scheme == "standard":
        return StandardSigner(secrets[0])
    return ChloeSigner(secrets[0])


def check_standard_secret(name: str, value: str) -> bytes:
    """The HMAC key of the ``whsec_`` secret ``value``.

    Stricter than the verifying libraries, which skip characters outside
    base64's alphabet: a secret they would read differently from Chloe
    would fail every POST with no clue why, so it is refused here, at
    start, instead. Missing ``=`` padding is accepted, as they accept it.

    :raises ConfigError: naming ``name``, saying what is wrong.
    """
    if not value.startswith(STANDARD_PREFIX):
        raise ConfigError(
            name,
            f'relay_signature = "standard" needs a secret like "{STANDARD_PREFIX}<base64>" '
            f"(generate one with chloed.signing.generate_standard_secret())",
        )
    encoded = value[len(STANDARD_PREFIX):]
    encoded += "=" * (-len(encoded) % 4)
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(
            name, f"the part after {STANDARD_PREFIX} is not valid base64 (standard alphabet: A-Z a-z 0-9 + /)"
        ) from None
    if not STANDARD_KEY_MIN <= len(key) <= STANDARD_KEY_MAX:
        raise ConfigError(
            name,
            f"the {STANDARD_PREFIX} secret decodes to {len(key)} bytes; "
            f"Standard Webhooks needs {STANDARD_KEY_MIN} to {STANDARD_KEY_MAX}",
        )
    return key


def generate_standard_secret() -> str:
    """A fresh random ``whsec_`` secret, for the config and its app."""
    return STANDARD_PREFIX + base64.b64encode(os.urandom(_GENERATED_KEY_BYTES)).decode("ascii")
