"""Unit tests of chloed.signing: Chloe's own scheme and Standard Webhooks',
the latter checked against the reference ``standardwebhooks`` library."""

from __future__ import annotations

import base64
import time

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from chloed import relay
from chloed.errors import ConfigError
from chloed.signing import (
    ChloeSigner,
    StandardSigner,
    check_standard_secret,
    generate_standard_secret,
    make_signer,
)

KEY = bytes(range(32))
SECRET = "whsec_" + base64.b64encode(KEY).decode()
OTHER = "whsec_" + base64.b64encode(bytes(range(1, 33))).decode()
MSG_ID = b"0123456789abcdef0123456789abcdef"
BODY = relay.event_body("message", "s1", channel="room", data=b'{"text":"h\xc3\xa9llo"}', ref="r" * 22)


def now_stamp(offset: int = 0) -> bytes:
    """The library checks the timestamp against the real clock, so the good
    cases must sign with it (its tolerance is 5 minutes)."""
    return b"%d" % (int(time.time()) + offset)


def as_str(headers: dict[bytes, list[bytes]]) -> dict[str, str]:
    """The headers as the receiving app sees them: one string value each."""
    return {name.decode(): value.decode() for name, [value] in headers.items()}


def verify(secret: str, body: bytes, headers: dict[bytes, list[bytes]]) -> None:
    """Webhook.verify, without parsing the body."""
    Webhook(secret).verify(body, as_str(headers), json_parse=False)


def test_chloe_signer_matches_relay_sign() -> None:
    """ChloeSigner's X-Chloe-Signature is the value relay.sign gives, with its timestamp."""
    headers = ChloeSigner("app-and-chloe-share-this-secret").headers(MSG_ID, b"1732320000", BODY)
    assert headers == {
        b"X-Chloe-Timestamp": [b"1732320000"],
        b"X-Chloe-Signature": [relay.sign("app-and-chloe-share-this-secret", 1732320000, BODY).encode()],
    }


def test_chloe_signer_reused_keeps_signing_right() -> None:
    """The keyed HMAC is copied, not consumed: a second call signs afresh."""
    signer = ChloeSigner("k")
    signer.headers(MSG_ID, b"1", b"first")
    assert signer.headers(MSG_ID, b"2", b"second")[b"X-Chloe-Signature"] == [relay.sign("k", 2, b"second").encode()]


def test_standard_headers_are_the_three_of_the_spec() -> None:
    """StandardSigner emits webhook-id, webhook-timestamp and one v1 signature, nothing else."""
    headers = StandardSigner(SECRET).headers(MSG_ID, b"1674087231", BODY)
    assert set(headers) == {b"webhook-id", b"webhook-timestamp", b"webhook-signature"}
    assert headers[b"webhook-id"] == [MSG_ID]
    assert headers[b"webhook-timestamp"] == [b"1674087231"]
    [signature] = headers[b"webhook-signature"]
    assert signature.startswith(b"v1,") and len(base64.b64decode(signature[3:])) == 32


def test_standard_single_message_verifies_with_library() -> None:
    """A single message's headers verify with standardwebhooks' Webhook, UTF-8 body and all."""
    signer = StandardSigner(SECRET)
    verify(SECRET, BODY, signer.headers(MSG_ID, now_stamp(), BODY))


def test_standard_batch_verifies_with_library() -> None:
    """A batch-like body (a JSON array of items) under a fresh id verifies too, and the library parses it."""
    items = [relay.batch_item(BODY, b"d%d" % i) for i in range(3)]
    body = b"[" + b",".join(items) + b"]"
    headers = StandardSigner(SECRET).headers(b"fedcba9876543210fedcba9876543210", now_stamp(), body)
    parsed = Webhook(SECRET).verify(body, as_str(headers))
    assert [item["delivery"] for item in parsed] == ["d0", "d1", "d2"]


def test_standard_signer_reused_keeps_signing_right() -> None:
    """Many signatures from one signer all verify: the keyed HMAC is copied per call."""
    signer = StandardSigner(SECRET)
    for i in range(3):
        body = b'{"n":%d}' % i
        verify(SECRET, body, signer.headers(b"id%d" % i, now_stamp(), body))


def test_standard_tampered_body_fails() -> None:
    """One byte changed in the body and verification fails."""
    headers = StandardSigner(SECRET).headers(MSG_ID, now_stamp(), BODY)
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        verify(SECRET, BODY.replace(b"room", b"ROOM"), headers)


def test_standard_tampered_id_fails() -> None:
    """The id is signed: another webhook-id with the same signature fails."""
    headers = StandardSigner(SECRET).headers(MSG_ID, now_stamp(), BODY)
    headers[b"webhook-id"] = [b"another-id"]
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        verify(SECRET, BODY, headers)


def test_standard_wrong_secret_fails() -> None:
    """Headers signed with one secret do not verify under another."""
    headers = StandardSigner(SECRET).headers(MSG_ID, now_stamp(), BODY)
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        verify(OTHER, BODY, headers)


def test_standard_timestamp_is_signed() -> None:
    """A webhook-timestamp moved by a second, still within tolerance, fails: the timestamp is signed."""
    stamp = now_stamp()
    headers = StandardSigner(SECRET).headers(MSG_ID, stamp, BODY)
    headers[b"webhook-timestamp"] = [b"%d" % (int(stamp) - 1)]
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        verify(SECRET, BODY, headers)


@pytest.mark.parametrize(("offset", "message"), [(-600, "too old"), (600, "too new")])
def test_standard_timestamp_outside_tolerance_fails(offset: int, message: str) -> None:
    """Correctly signed but 10 minutes off the clock, a POST is refused as a replay."""
    headers = StandardSigner(SECRET).headers(MSG_ID, now_stamp(offset), BODY)
    with pytest.raises(WebhookVerificationError, match=message):
        verify(SECRET, BODY, headers)


def test_check_standard_secret_decodes_key() -> None:
    """A good secret gives its decoded key."""
    assert check_standard_secret("secret", SECRET) == KEY


def test_unpadded_secret_accepted_and_read_as_the_library_reads_it() -> None:
    """A secret without its = padding is accepted, and signs what the library verifies with it."""
    key = bytes(range(25))  # 25 bytes: base64 ends in "=="
    unpadded = "whsec_" + base64.b64encode(key).decode().rstrip("=")
    assert check_standard_secret("secret", unpadded) == key
    verify(unpadded, BODY, StandardSigner(unpadded).headers(MSG_ID, now_stamp(), BODY))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (base64.b64encode(KEY).decode(), "whsec_"),
        ("whsec_" + base64.urlsafe_b64encode(b"\xff" * 30).decode(), "not valid base64"),
        ("whsec_" + base64.b64encode(KEY).decode() + "!", "not valid base64"),
        ("whsec_" + base64.b64encode(KEY).decode() + "é", "not valid base64"),
        ("whsec_abcde", "not valid base64"),
        ("whsec_", "0 bytes"),
        ("whsec_" + base64.b64encode(bytes(23)).decode(), "23 bytes"),
        ("whsec_" + base64.b64encode(bytes(65)).decode(), "65 bytes"),
    ],
)
def test_bad_standard_secret_refused(value: str, message: str) -> None:
    """A secret without the prefix, not in base64, or of the wrong length is a ConfigError naming the option."""
    with pytest.raises(ConfigError, match=message) as caught:
        check_standard_secret("secret", value)
    assert caught.value.option == "secret"
    assert str(caught.value).startswith("secret: ")


def test_key_length_bounds_accepted() -> None:
    """24 and 64 decoded bytes are both within the spec's bounds."""
    for size in (24, 64):
        assert len(check_standard_secret("secret", "whsec_" + base64.b64encode(bytes(size)).decode())) == size


def test_generated_secret_is_valid_and_fresh() -> None:
    """generate_standard_secret gives distinct secrets that pass the check and the library."""
    first, second = generate_standard_secret(), generate_standard_secret()
    assert first != second
    assert len(check_standard_secret("secret", first)) == 32
    verify(first, BODY, StandardSigner(first).headers(MSG_ID, now_stamp(), BODY))


def test_make_signer_by_scheme() -> None:
    """make_signer gives the scheme's signer keyed with the first secret."""
    chloe = make_signer("chloe", ("new", "old"))
    assert isinstance(chloe, ChloeSigner)
    assert chloe.headers(MSG_ID, b"5", BODY)[b"X-Chloe-Signature"] == [relay.sign("new", 5, BODY).encode()]
    standard = make_signer("standard", (SECRET, "old-plain-secret"))
    assert isinstance(standard, StandardSigner)
    verify(SECRET, BODY, standard.headers(MSG_ID, now_stamp(), BODY))


def test_make_signer_without_secret_is_unsigned() -> None:
    """No secret: None, whichever scheme, as the relay sends unsigned today."""
    assert make_signer("chloe", ()) is None
    assert make_signer("standard", ()) is None


def test_make_signer_refuses_bad_scheme_and_secret() -> None:
    """An unknown scheme names relay_signature; a plain secret under "standard" names secret."""
    with pytest.raises(ConfigError) as caught:
        make_signer("svix", (SECRET,))
    assert caught.value.option == "relay_signature"
    with pytest.raises(ConfigError) as caught:
        make_signer("standard", ("app-and-chloe-share-this-secret",))
    assert caught.value.option == "secret"
