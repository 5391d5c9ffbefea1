"""Unit tests of chloed.tokens: channel tokens minted by the app with PyJWT."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest

from chloed import tokens
from chloed.errors import ProtocolError
from chloed.frames import FORBIDDEN

SECRET = "the-current-secret-of-at-least-32-bytes"
OLD_SECRET = "the-previous-secret-of-at-least-32-bytes"
OTHER = "somebody-elses-secret-of-at-least-32-bytes"
HOUR = 3600


def mint(claims: dict, secret: str = SECRET, algorithm: str = "HS256") -> str:
    """A token as the app would mint it with PyJWT."""
    return jwt.encode(claims, secret, algorithm=algorithm)


def claims(**extra) -> dict:
    return {"channels": ["private-room"], "exp": int(time.time()) + HOUR, **extra}


def refused(token, channel="private-room", secrets=(SECRET,)) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        tokens.verify(token, channel, secrets)
    assert info.value.code == FORBIDDEN
    assert info.value.channel == channel
    return info.value


@pytest.mark.parametrize(
    "channel,needed",
    [("private-room", True), ("presence-lobby", True), ("public", False), ("privateroom", False),
     ("room-private-", False), ("presence", False)],
)
def test_needs_token(channel, needed):
    """private- and presence- channels need a token; others do not."""
    assert tokens.needs_token(channel) is needed


def test_valid_token():
    """A token signed with the secret, unexpired, listing the channel, opens it."""
    grant = tokens.verify(mint(claims(channels=["private-room", "private-other"])), "private-room", (SECRET,))
    assert grant.channels == {"private-room", "private-other"}
    assert grant.user is None


def test_valid_token_with_user():
    """A token's user is handed on with the grant."""
    user = {"id": "u1", "info": {"name": "Ann"}}
    assert tokens.verify(mint(claims(user=user)), "private-room", (SECRET,)).user == user


def test_expired_token():
    """An expired token is refused, saying it expired."""
    error = refused(mint(claims(exp=int(time.time()) - 60)))
    assert "expired" in error.message


def test_tampered_payload():
    """A token whose payload was changed (another channel slipped in) is refused."""
    token = mint(claims(channels=["private-a"]))
    head, payload, sig = token.split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body["channels"] = ["private-room"]
    forged = base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()
    error = refused(f"{head}.{forged}.{sig}")
    assert "signature" in error.message


def test_tampered_signature():
    """A token whose signature was changed is refused."""
    token = mint(claims())
    flipped = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    refused(flipped)


def test_signed_with_unknown_secret():
    """A token signed with a secret Chloe does not have is refused."""
    refused(mint(claims(), secret=OTHER))


def test_wrong_channel():
    """A valid token for other channels does not open this one."""
    error = refused(mint(claims(channels=["private-else"])))
    assert "private-room" in error.message


@pytest.mark.parametrize("channels", [None, "private-room", {"private-room": True}, []])
def test_channels_claim_must_be_a_list_naming_the_channel(channels):
    """A token whose channels claim is missing, not a list, or empty opens nothing."""
    body = claims()
    if channels is None:
        del body["channels"]
    else:
        body["channels"] = channels
    refused(mint(body))


def test_no_exp():
    """A token without exp (one that never expires) is refused."""
    body = claims()
    del body["exp"]
    refused(mint(body))


def test_rotation_second_secret_verifies():
    """During a key rotation, a token signed with the older secret still verifies."""
    grant = tokens.verify(mint(claims(), secret=OLD_SECRET), "private-room", (SECRET, OLD_SECRET))
    assert "private-room" in grant.channels


def test_rotation_first_secret_verifies():
    """During a key rotation, a token signed with the new secret verifies."""
    assert tokens.verify(mint(claims()), "private-room", (SECRET, OLD_SECRET)).channels == {"private-room"}


def test_rotation_expired_under_second_secret():
    """An expired token signed with the older secret is refused as expired."""
    error = refused(mint(claims(exp=int(time.time()) - 60), secret=OLD_SECRET), secrets=(SECRET, OLD_SECRET))
    assert "expired" in error.message


def test_retired_secret_no_longer_verifies():
    """Once the older secret is dropped, its tokens no longer verify."""
    refused(mint(claims(), secret=OLD_SECRET), secrets=(SECRET,))


def test_presence_requires_user():
    """A presence channel needs a token carrying the member."""
    refused(mint(claims(channels=["presence-lobby"])), channel="presence-lobby")


@pytest.mark.parametrize("user", ["ann", {"info": {}}, {"id": None}, {"id": 1.5}, {"id": ["a"]}, []])
def test_presence_requires_user_with_id(user):
    """The member of a presence channel is an object with a string or integer id."""
    refused(mint(claims(channels=["presence-lobby"], user=user)), channel="presence-lobby")


@pytest.mark.parametrize("member_id", ["u1", 42])
def test_presence_with_user(member_id):
    """A presence token with a user id opens the channel and carries the user."""
    user = {"id": member_id, "info": {"name": "Ann"}}
    grant = tokens.verify(mint(claims(channels=["presence-lobby"], user=user)), "presence-lobby", (SECRET,))
    assert grant.user == user


def test_private_channel_does_not_need_user():
    """A private (not presence) channel opens without a user."""
    assert tokens.verify(mint(claims()), "private-room", (SECRET,)).user is None


def test_missing_token():
    """Subscribing to a private channel without a token is refused."""
    assert "needs a token" in refused(None).message


def test_no_secret_configured():
    """A server without a secret cannot open private channels at all."""
    assert "no secret" in refused(mint(claims()), secrets=()).message


@pytest.mark.parametrize("token", ["garbage", "a.b.c", "", "e30.e30."])
def test_malformed_token(token):
    """Something that is not a JWT is refused."""
    refused(token)


def test_unsigned_token_refused():
    """A token with alg none is refused."""
    refused(jwt.encode(claims(), None, algorithm="none"))


def test_other_algorithm_refused():
    """Only HS256 is accepted, even with the right secret."""
    long_secret = SECRET * 2  # HS512 wants 64 bytes
    refused(mint(claims(), secret=long_secret, algorithm="HS512"), secrets=(long_secret,))


def test_not_yet_valid_token_refused():
    """A token whose nbf is in the future is refused."""
    refused(mint(claims(nbf=int(time.time()) + HOUR)))


def test_token_with_lone_surrogate_refused():
    """A token str that has no UTF-8 form is refused, not a crash in PyJWT."""
    refused("\ud800.e30.sig")


def _rsa_pair():
    """An RSA key and a P-256 key, new."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    return rsa_key, ec_key


def test_a_connection_token_may_be_signed_rs256_or_es256_with_a_public_key():
    """token_public_key's keys verify RS256 and ES256 tokens; HS256 ones
    still take the secret, and a token of another key is refused."""
    from chloed.tokens import PUBLIC_ALGORITHMS, identify

    rsa_key, ec_key = _rsa_pair()
    keys = (("RS256", rsa_key.public_key()), ("ES256", ec_key.public_key()))
    now = time.time()
    claims = {"sub": "alice", "exp": int(now) + 60, "iat": int(now)}
    assert PUBLIC_ALGORITHMS == ("RS256", "ES256")
    assert identify(jwt.encode(claims, rsa_key, algorithm="RS256"), (), keys, now).user == "alice"
    assert identify(jwt.encode(claims, ec_key, algorithm="ES256"), (), keys, now).user == "alice"
    assert identify(jwt.encode(claims, "s" * 32, algorithm="HS256"), ("s" * 32,), keys, now).user == "alice"
    other, _ = _rsa_pair()
    for token, keyring in ((jwt.encode(claims, other, algorithm="RS256"), keys),
                           (jwt.encode(claims, rsa_key, algorithm="RS256"), ())):
        with pytest.raises(ProtocolError) as refused:
            identify(token, ("s" * 32,), keyring, now)
        assert refused.value.code == "token_invalid"
