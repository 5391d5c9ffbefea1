"""Unit tests of chloed.pusher.auth: Pusher's signatures, against vectors
computed here with hmac (and the ones Pusher's documentation publishes),
each field tampered with in turn."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest

from chloed.pusher import auth, names
from chloed.pusher.apps import PusherApp

# Pusher's documentation's app ("Authenticating users", "HTTP API
# reference: authentication"), whose signatures it publishes.
DOCS_APP = PusherApp(id="3", key="278d425bdf160c739803", secret="7ad3773142a6692b25b8")
APP = PusherApp(id="4242", key="app-key", secret="app-secret-0123")
OTHER = PusherApp(id="4242", key="app-key", secret="not-the-app-secret")

SOCKET = "1234.1234"
CHANNEL_DATA = json.dumps({"user_id": "ann", "user_info": {"name": "Ann"}})


def mac(secret: str, text: str | bytes) -> str:
    data = text.encode("utf-8") if isinstance(text, str) else text
    return hmac.new(secret.encode("utf-8"), data, hashlib.sha256).hexdigest()


def signed(app: PusherApp, text: str) -> str:
    """``key:HMAC(secret, text)``, as an app's auth endpoint answers."""
    return f"{app.key}:{mac(app.secret, text)}"


def flip(hex_digest: str, at: int = 0) -> str:
    """``hex_digest`` with one hex digit changed."""
    digit = hex_digest[at]
    return hex_digest[:at] + ("0" if digit != "0" else "1") + hex_digest[at + 1:]


# -- known answers ---------------------------------------------------------------


def test_hex_hmac_is_the_hex_hmac_sha256() -> None:
    assert auth.hex_hmac("k", b"message") == hmac.new(b"k", b"message", hashlib.sha256).hexdigest()
    # A secret beyond ASCII is its UTF-8.
    assert auth.hex_hmac("clé-secrète", b"m") == hmac.new("clé-secrète".encode(), b"m", hashlib.sha256).hexdigest()


def test_pushers_published_private_channel_signature() -> None:
    """Pusher's documentation: socket 1234.1234, private-foobar."""
    published = "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
    assert signed(DOCS_APP, "1234.1234:private-foobar") == published
    assert auth.channel_auth_ok(DOCS_APP, published, "1234.1234", "private-foobar", None)


def test_pushers_published_presence_channel_signature() -> None:
    """Pusher's documentation: presence-foobar with its channel_data."""
    channel_data = '{"user_id":10,"user_info":{"name":"Mr. Channels"}}'
    published = "278d425bdf160c739803:31935e7d86dba64c2a90aed31fdc61869f9b22ba9d8863bba239c03ca481bc80"
    assert signed(DOCS_APP, f"1234.1234:presence-foobar:{channel_data}") == published
    assert auth.channel_auth_ok(DOCS_APP, published, "1234.1234", "presence-foobar", channel_data)


def test_pushers_published_api_request_signature() -> None:
    """Pusher's documentation: POST /apps/3/events, its body's MD5 and the
    signature of the method, path and sorted query."""
    body = b'{"name":"foo","channels":["project-3"],"data":"{\\"some\\":\\"data\\"}"}'
    query = {
        "auth_key": "278d425bdf160c739803", "auth_timestamp": "1353088179", "auth_version": "1.0",
        "body_md5": hashlib.md5(body).hexdigest(),
    }
    assert query["body_md5"] == "ec365a775a4cd0599faeb73354201b6f"
    expected = "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
    assert auth.query_signature(DOCS_APP, "POST", "/apps/3/events", query) == expected
    assert auth.query_ok(DOCS_APP, "POST", "/apps/3/events", {**query, "auth_signature": expected})


# -- channel auth ----------------------------------------------------------------


def test_a_private_channel_auth_signs_socket_id_colon_channel() -> None:
    good = signed(APP, f"{SOCKET}:private-room")
    assert auth.channel_auth_ok(APP, good, SOCKET, "private-room", None)


def test_a_presence_auth_signs_the_channel_data_too() -> None:
    good = signed(APP, f"{SOCKET}:presence-room:{CHANNEL_DATA}")
    assert auth.channel_auth_ok(APP, good, SOCKET, "presence-room", CHANNEL_DATA)
    # Without its channel_data it is not the signature of the subscription.
    assert not auth.channel_auth_ok(APP, good, SOCKET, "presence-room", None)
    # Nor is the private form's signature one of a presence subscription.
    private_form = signed(APP, f"{SOCKET}:presence-room")
    assert not auth.channel_auth_ok(APP, private_form, SOCKET, "presence-room", CHANNEL_DATA)


def test_an_empty_channel_data_is_signed_as_such() -> None:
    """``channel_data = ""`` is a trailing colon, not no channel data."""
    good = signed(APP, f"{SOCKET}:presence-room:")
    assert auth.channel_auth_ok(APP, good, SOCKET, "presence-room", "")
    assert not auth.channel_auth_ok(APP, good, SOCKET, "presence-room", None)


def test_channel_data_beyond_ascii_is_signed_as_utf8() -> None:
    channel_data = json.dumps({"user_id": "zoë", "user_info": {"name": "Zoë 🎉"}}, ensure_ascii=False)
    good = f"{APP.key}:{mac(APP.secret, f'{SOCKET}:presence-room:{channel_data}'.encode('utf-8'))}"
    assert auth.channel_auth_ok(APP, good, SOCKET, "presence-room", channel_data)


@pytest.mark.parametrize("socket_id, channel, channel_data", [
    ("1234.1235", "presence-room", CHANNEL_DATA),  # another socket
    ("1234.123", "presence-room", CHANNEL_DATA),
    (SOCKET, "presence-rooms", CHANNEL_DATA),  # another channel
    (SOCKET, "private-room", CHANNEL_DATA),
    (SOCKET, "presence-room", CHANNEL_DATA.replace("ann", "bob")),  # another user
    (SOCKET, "presence-room", CHANNEL_DATA.replace("Ann", "Root")),  # other user info
    (SOCKET, "presence-room", CHANNEL_DATA + " "),
])
def test_a_channel_auth_for_anything_else_is_refused(socket_id: str, channel: str, channel_data: str) -> None:
    good = signed(APP, f"{SOCKET}:presence-room:{CHANNEL_DATA}")
    assert not auth.channel_auth_ok(APP, good, socket_id, channel, channel_data)


def test_the_key_part_must_be_the_apps_key() -> None:
    signature = mac(APP.secret, f"{SOCKET}:private-room")
    for key in ("other-key", "", "app-key2", "APP-KEY", " app-key"):
        assert not auth.channel_auth_ok(APP, f"{key}:{signature}", SOCKET, "private-room", None), key


def test_each_digit_of_the_signature_counts() -> None:
    signature = mac(APP.secret, f"{SOCKET}:private-room")
    for at in (0, 31, 63):
        assert not auth.channel_auth_ok(APP, f"{APP.key}:{flip(signature, at)}", SOCKET, "private-room", None)
    # A truncated, a lengthened, an upper-cased one.
    for wrong in (signature[:-1], signature + "0", signature.upper()):
        assert not auth.channel_auth_ok(APP, f"{APP.key}:{wrong}", SOCKET, "private-room", None)


def test_a_signature_made_with_another_secret_is_refused() -> None:
    assert not auth.channel_auth_ok(APP, signed(OTHER, f"{SOCKET}:private-room"), SOCKET, "private-room", None)


@pytest.mark.parametrize("value", [
    None, 12, ["app-key:x"], {"auth": "x"}, "", "app-key", "no-colon-at-all",
    ":" + "0" * 64, "app-key:", "app-key:" + "0" * 300,
])
def test_an_auth_that_is_no_auth_string_is_refused(value: Any) -> None:
    assert not auth.channel_auth_ok(APP, value, SOCKET, "private-room", None)


def test_the_signature_is_over_the_whole_rest_after_the_first_colon() -> None:
    """``key:sig:more`` is no signature (the rest is compared whole)."""
    signature = mac(APP.secret, f"{SOCKET}:private-room")
    assert not auth.channel_auth_ok(APP, f"{APP.key}:{signature}:extra", SOCKET, "private-room", None)


# -- sign-in ---------------------------------------------------------------------


USER_DATA = json.dumps({"id": "ann", "user_info": {"name": "Ann"}, "watchlist": ["bob"]})


def test_a_signin_signs_socket_id_user_user_data() -> None:
    """``socket_id::user::user_data`` (Pusher's user authentication)."""
    good = f"{APP.key}:{mac(APP.secret, f'{SOCKET}::user::{USER_DATA}')}"
    assert auth.signin_ok(APP, good, SOCKET, USER_DATA)


@pytest.mark.parametrize("socket_id, user_data", [
    ("1234.1235", USER_DATA),
    (SOCKET, USER_DATA.replace("ann", "bob")),
    (SOCKET, USER_DATA + "\n"),
])
def test_a_signin_for_another_socket_or_user_is_refused(socket_id: str, user_data: str) -> None:
    good = f"{APP.key}:{mac(APP.secret, f'{SOCKET}::user::{USER_DATA}')}"
    assert not auth.signin_ok(APP, good, socket_id, user_data)


def test_a_channel_auth_is_no_signin() -> None:
    """The two signed texts never meet: ``socket:channel`` is not
    ``socket::user::user_data``, and no channel is named ``:user::...``
    (``:`` is in no channel name)."""
    assert not auth.signin_ok(APP, signed(APP, f"{SOCKET}:{USER_DATA}"), SOCKET, USER_DATA)
    assert not names.valid(f":user::{USER_DATA}")


def test_a_signin_with_another_key_or_secret_is_refused() -> None:
    text = f"{SOCKET}::user::{USER_DATA}"
    assert not auth.signin_ok(APP, f"other-key:{mac(APP.secret, text)}", SOCKET, USER_DATA)
    assert not auth.signin_ok(APP, signed(OTHER, text), SOCKET, USER_DATA)
    assert not auth.signin_ok(APP, f"{APP.key}:{flip(mac(APP.secret, text), 10)}", SOCKET, USER_DATA)
    assert not auth.signin_ok(APP, None, SOCKET, USER_DATA)


# -- the HTTP API's query --------------------------------------------------------


QUERY = {"auth_key": "app-key", "auth_timestamp": "1700000000", "auth_version": "1.0", "info": "user_count,subscription_count"}


def expected_query_signature(secret: str, method: str, path: str, query: dict[str, str]) -> str:
    params = "&".join(f"{k}={v}" for k, v in sorted(query.items()) if k != "auth_signature")
    return mac(secret, f"{method}\n{path}\n{params}")


def test_the_query_signature_is_of_method_path_and_sorted_unescaped_query() -> None:
    expected = mac(
        APP.secret,
        "GET\n/apps/4242/channels\n"
        "auth_key=app-key&auth_timestamp=1700000000&auth_version=1.0&info=user_count,subscription_count",
    )
    assert auth.query_signature(APP, "GET", "/apps/4242/channels", QUERY) == expected
    assert expected == expected_query_signature(APP.secret, "GET", "/apps/4242/channels", QUERY)


def test_the_order_given_does_not_matter_and_auth_signature_is_left_out() -> None:
    backwards = dict(reversed(list(QUERY.items())))
    signature = auth.query_signature(APP, "GET", "/apps/4242/channels", QUERY)
    assert auth.query_signature(APP, "GET", "/apps/4242/channels", backwards) == signature
    assert auth.query_signature(APP, "GET", "/apps/4242/channels", {**QUERY, "auth_signature": "x"}) == signature
    assert auth.query_ok(APP, "GET", "/apps/4242/channels", {**backwards, "auth_signature": signature})


def test_values_are_signed_unescaped() -> None:
    """``filter_by_prefix=presence-`` and a comma go in as they are, not
    percent-encoded (the libraries sign the raw values)."""
    query = {**QUERY, "filter_by_prefix": "presence-a,b@c"}
    expected = expected_query_signature(APP.secret, "GET", "/apps/4242/channels", query)
    assert "filter_by_prefix=presence-a,b@c" in (
        "&".join(f"{k}={v}" for k, v in sorted(query.items()))
    )
    assert auth.query_signature(APP, "GET", "/apps/4242/channels", query) == expected


def test_tampering_with_any_part_of_a_signed_request_is_refused() -> None:
    path = "/apps/4242/channels"
    good = {**QUERY, "auth_signature": expected_query_signature(APP.secret, "GET", path, QUERY)}
    assert auth.query_ok(APP, "GET", path, good)
    assert not auth.query_ok(APP, "POST", path, good)
    assert not auth.query_ok(APP, "GET", "/apps/4242/channels/x", good)
    assert not auth.query_ok(APP, "GET", "/apps/4243/channels", good)
    for name in QUERY:
        assert not auth.query_ok(APP, "GET", path, {**good, name: good[name] + "0"}), name
        without = {k: v for k, v in good.items() if k != name}
        assert not auth.query_ok(APP, "GET", path, without), name
    assert not auth.query_ok(APP, "GET", path, {**good, "extra": "1"})
    assert not auth.query_ok(APP, "GET", path, {**good, "auth_signature": flip(good["auth_signature"], 5)})
    assert not auth.query_ok(APP, "GET", path, {**good, "auth_signature": good["auth_signature"].upper()})
    assert not auth.query_ok(APP, "GET", path, {k: v for k, v in good.items() if k != "auth_signature"})
    assert not auth.query_ok(OTHER, "GET", path, good)


def test_a_query_signature_beyond_ascii_is_refused_not_raised() -> None:
    """A signature of any text (the query is the client's) is compared,
    never raised on."""
    path = "/apps/4242/channels"
    assert not auth.query_ok(APP, "GET", path, {**QUERY, "auth_signature": "é" * 64})


# -- webhooks ------------------------------------------------------------------------


def test_a_webhook_signature_is_the_hex_hmac_of_the_body() -> None:
    body = b'{"time_ms":1700000000000,"events":[{"name":"channel_occupied","channel":"news"}]}'
    assert auth.webhook_signature(APP, body) == mac(APP.secret, body).encode("ascii")
    assert auth.webhook_signature(APP, body) != auth.webhook_signature(OTHER, body)
    assert auth.webhook_signature(APP, body) != auth.webhook_signature(APP, body + b" ")
