"""Unit tests of chloed.frames: parsing browser frames and encoding Chloe's."""

from __future__ import annotations

import json

import pytest

from chloed import frames
from chloed.errors import ProtocolError
from chloed.frames import Encoded, Frame, parse

LIMIT = 65536


def refused(raw: bytes | str, max_bytes: int = LIMIT) -> ProtocolError:
    """The ProtocolError parsing ``raw`` raises."""
    with pytest.raises(ProtocolError) as info:
        parse(raw, max_bytes)
    return info.value


def decoded(frame: Encoded) -> dict:
    return json.loads(frame.payload)


# -- every frame type ------------------------------------------------------


def test_ping():
    """A ping frame parses to a ping."""
    assert parse(b'{"type":"ping"}', LIMIT) == Frame("ping")


def test_ping_keeps_ref():
    """A ping's ref is kept so its answer can name it."""
    assert parse(b'{"type":"ping","ref":7}', LIMIT) == Frame("ping", ref=7)


def test_subscribe_minimal():
    """A subscribe needs only a channel."""
    assert parse(b'{"type":"subscribe","channel":"pumpkin"}', LIMIT) == Frame(
        "subscribe", channel="pumpkin"
    )


def test_subscribe_with_since_token_and_ref():
    """A subscribe carries its resume cursor, its token and its ref."""
    raw = json.dumps(
        {"type": "subscribe", "channel": "private-x", "since": "12-3", "token": "a.b.c", "ref": "r1"}
    )
    assert parse(raw, LIMIT) == Frame(
        "subscribe", channel="private-x", since="12-3", token="a.b.c", ref="r1"
    )


def test_subscribe_null_since_and_token_are_absent():
    """since and token given as null count as not given."""
    frame = parse(b'{"type":"subscribe","channel":"a","since":null,"token":null}', LIMIT)
    assert (frame.since, frame.token) == (None, None)


def test_unsubscribe():
    """An unsubscribe names its channel."""
    assert parse(b'{"type":"unsubscribe","channel":"a.b:c@d=e-f_g"}', LIMIT) == Frame(
        "unsubscribe", channel="a.b:c@d=e-f_g"
    )


def test_send_without_channel_keeps_data_as_compact_json():
    """A send's data is kept as compact JSON bytes, ready to relay."""
    frame = parse(b'{"type":"send", "data": {"a": [1, 2, "h\\u00e9"]}, "ref": 3}', LIMIT)
    assert frame == Frame("send", data='{"a":[1,2,"hé"]}'.encode(), ref=3)
    assert frame.channel is None


def test_send_with_channel():
    """A send may name a channel."""
    frame = parse(b'{"type":"send","channel":"room","data":"hi mom"}', LIMIT)
    assert (frame.type, frame.channel, frame.data) == ("send", "room", b'"hi mom"')


@pytest.mark.parametrize("data", [None, 0, False, "", [], {}, 1.5])
def test_send_data_may_be_any_json_value(data):
    """Any JSON value is acceptable data, null and empty values included."""
    frame = parse(json.dumps({"type": "send", "data": data}), LIMIT)
    assert json.loads(frame.data) == data


def test_parse_accepts_str():
    """A frame may arrive as text (a WebSocket text message) as well as bytes."""
    assert parse('{"type":"send","data":"π"}', LIMIT).data == '"π"'.encode()


def test_parse_object_validates_a_decoded_frame():
    """An already-decoded object goes through the same checks."""
    assert frames.parse_object({"type": "ping"}) == Frame("ping")
    with pytest.raises(ProtocolError) as info:
        frames.parse_object({"type": "subscribe", "channel": "bad channel"})
    assert info.value.code == frames.INVALID_CHANNEL


# -- bad frames ------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b"not json", b'{"type":"ping"', b'{"type":"ping"} x', b"\xff\xfe{}"],
)
def test_bad_json_is_bad_frame(raw):
    """Something that is not JSON gets bad_frame."""
    assert refused(raw).code == frames.BAD_FRAME


@pytest.mark.parametrize("raw", [b"[]", b'"ping"', b"42", b"null", b'[{"type":"ping"}]'])
def test_non_object_is_bad_frame(raw):
    """JSON that is not an object gets bad_frame."""
    assert refused(raw).code == frames.BAD_FRAME


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_bad_frame(constant):
    """NaN and Infinity, which no browser's JSON has, get bad_frame."""
    assert refused('{"type":"send","data":%s}' % constant).code == frames.BAD_FRAME


def test_deep_nesting_is_bad_frame():
    """A frame nested deeper than the parser goes gets bad_frame, not a crash."""
    raw = b'{"type":"send","data":' + b"[" * 50000 + b"]" * 50000 + b"}"
    assert refused(raw, max_bytes=len(raw)).code == frames.BAD_FRAME


@pytest.mark.parametrize("raw", [b"{}", b'{"channel":"a"}', b'{"type":null}', b'{"type":5}', b'{"type":["ping"]}'])
def test_missing_or_non_string_type_is_bad_frame(raw):
    """A frame without a string type gets bad_frame."""
    assert refused(raw).code == frames.BAD_FRAME


def test_missing_type_keeps_ref():
    """The error for a frame without a type still names the frame's ref."""
    assert refused(b'{"ref":"r9"}').ref == "r9"


@pytest.mark.parametrize("kind", ["publish", "PING", "subscribed", ""])
def test_unknown_type(kind):
    """A type Chloe does not know gets unknown_type, with the frame's ref."""
    error = refused(json.dumps({"type": kind, "ref": 4}))
    assert (error.code, error.ref) == (frames.UNKNOWN_TYPE, 4)


@pytest.mark.parametrize(
    "channel",
    ["", "has space", "slash/y", "ünïcode", "a" * 129, "new\nline", 5, ["a"], {"a": 1}, True],
)
@pytest.mark.parametrize("kind", ["subscribe", "unsubscribe", "send"])
def test_bad_channel_is_invalid_channel(kind, channel):
    """A channel name outside ^[A-Za-z0-9_.:@=-]{1,128}$ gets invalid_channel."""
    error = refused(json.dumps({"type": kind, "channel": channel, "data": 1, "ref": "r"}))
    assert (error.code, error.ref) == (frames.INVALID_CHANNEL, "r")


def test_longest_channel_is_accepted():
    """A channel name of exactly 128 characters is fine."""
    name = "x" * 128
    assert parse(json.dumps({"type": "subscribe", "channel": name}), LIMIT).channel == name


def test_invalid_channel_error_names_a_short_channel_only():
    """The error names a bad channel when it is a short string, never a huge or non-string one."""
    assert refused(b'{"type":"subscribe","channel":"a b"}').channel == "a b"
    assert refused(json.dumps({"type": "subscribe", "channel": "a" * 129})).channel is None
    assert refused(b'{"type":"subscribe","channel":7}').channel is None


@pytest.mark.parametrize("kind", ["subscribe", "unsubscribe"])
def test_channel_is_required_to_subscribe_and_unsubscribe(kind):
    """subscribe and unsubscribe without a channel get bad_frame."""
    error = refused(json.dumps({"type": kind, "ref": 1}))
    assert (error.code, error.ref) == (frames.BAD_FRAME, 1)


def test_too_large():
    """A frame longer than max_message_bytes gets too_large before being decoded."""
    raw = json.dumps({"type": "send", "data": "x" * 100}).encode()
    assert refused(raw, max_bytes=len(raw) - 1).code == frames.TOO_LARGE
    assert parse(raw, len(raw)).type == "send"


def test_too_large_counts_bytes_not_characters():
    """The limit is in UTF-8 bytes: multi-byte text counts for its bytes."""
    text = '{"type":"send","data":"' + "é" * 40 + '"}'
    assert len(text) < 100 < len(text.encode())
    assert refused(text, max_bytes=100).code == frames.TOO_LARGE


def test_send_without_data():
    """A send without data gets bad_frame naming its ref and channel."""
    error = refused(b'{"type":"send","channel":"room","ref":"r2"}')
    assert (error.code, error.ref, error.channel) == (frames.BAD_FRAME, "r2", "room")


@pytest.mark.parametrize("since", ["", 12, 1.5, True, ["1-1"], "9" * 65])
def test_bad_since(since):
    """since must be a non-empty string of at most 64 characters."""
    error = refused(json.dumps({"type": "subscribe", "channel": "a", "since": since, "ref": 1}))
    assert (error.code, error.channel, error.ref) == (frames.BAD_FRAME, "a", 1)


def test_longest_since_is_accepted():
    """A since of exactly 64 characters is passed on."""
    since = "9" * 64
    assert parse(json.dumps({"type": "subscribe", "channel": "a", "since": since}), LIMIT).since == since


@pytest.mark.parametrize("token", ["", 12, {"jwt": "x"}, "t" * 8193])
def test_bad_token(token):
    """token must be a non-empty string of at most 8192 characters."""
    error = refused(json.dumps({"type": "subscribe", "channel": "a", "token": token}))
    assert (error.code, error.channel) == (frames.BAD_FRAME, "a")


def test_longest_token_is_accepted():
    """A token of exactly 8192 characters is passed on."""
    token = "t" * 8192
    assert parse(json.dumps({"type": "subscribe", "channel": "a", "token": token}), LIMIT).token == token


def test_send_data_with_lone_surrogate_is_bad_frame():
    """A send whose data holds a lone UTF-16 surrogate ("\\ud800") gets bad_frame, not a crash."""
    assert refused(b'{"type":"send","data":"\\ud800","ref":1}').code == frames.BAD_FRAME


@pytest.mark.parametrize(
    "raw",
    [
        b'{"type":"nope","ref":"\\ud800"}',
        b'{"type":"ping","ref":"\\udfff"}',
        b'{"type":"subscribe","channel":"\\ud800"}',
        b'{"type":"subscribe","channel":"a","token":"\\ud800.x.y"}',
        b'{"type":"subscribe","channel":"a","since":"\\udc00"}',
        b'{"type":"\\ud800"}',
        b'{"type":"ping","\\ud800":1}',
        b'{"type":"send","data":{"k":["\\uDBFF"]}}',
        b'{"type":"send","data":"\xed\xa0\x80"}',
    ],
)
def test_lone_surrogate_anywhere_is_bad_frame(raw):
    """A lone surrogate in any field (ref, channel, token, since, a key), as
    an escape or as CESU-8 bytes, gets bad_frame: it could not be echoed in
    an error frame or relayed, as it has no UTF-8 form."""
    assert refused(raw).code == frames.BAD_FRAME


def test_surrogate_pair_escape_is_one_character():
    """A surrogate pair escape is an ordinary character (an emoji), kept."""
    assert parse(b'{"type":"send","data":"\\ud83d\\ude00"}', LIMIT).data == '"\U0001f600"'.encode()


@pytest.mark.parametrize("number", ["1e400", "-1e400", "1.5e309", "123456789e999"])
def test_number_beyond_float_range_is_bad_frame(number):
    """A number too big for a float would decode as inf, which is not JSON
    to write back: bad_frame, not a crash when relaying it."""
    assert refused('{"type":"send","data":%s}' % number).code == frames.BAD_FRAME
    with pytest.raises(ValueError):
        frames.loads('{"data":[%s]}' % number)


def test_small_numbers_and_big_integers_are_kept():
    """1e-400 is 0.0, an integer of a thousand digits is an integer."""
    assert frames.loads(b"[1e-400, -0.0]") == [0.0, -0.0]
    assert frames.loads(b"1" * 1000) == int("1" * 1000)


@pytest.mark.parametrize(
    "raw",
    [
        '{"type":"ping"}'.encode("utf-16"),
        '{"type":"ping"}'.encode("utf-16-le"),
        '{"type":"ping"}'.encode("utf-32"),
        b'{"type":"ping","x":"\xff"}',
    ],
)
def test_loads_takes_utf8_only(raw):
    """JSON on the wire is UTF-8 (RFC 8259): other encodings are refused."""
    with pytest.raises(ValueError):
        frames.loads(raw)


def test_loads_skips_a_utf8_bom():
    """A UTF-8 byte order mark in front of a body is tolerated."""
    assert frames.loads(b'\xef\xbb\xbf{"a":1}') == {"a": 1}


def test_parse_object_refuses_data_that_cannot_be_written():
    """parse_object, given an already decoded object, refuses data dumps
    cannot write (inf, a lone surrogate) with bad_frame."""
    for data in (float("inf"), "\ud800"):
        with pytest.raises(ProtocolError) as info:
            frames.parse_object({"type": "send", "data": data})
        assert info.value.code == frames.BAD_FRAME


# -- ref -------------------------------------------------------------------


@pytest.mark.parametrize("ref", [0, 42, -1, "", "abc", "r" * 128])
def test_ref_kept(ref):
    """Integer refs and string refs of up to 128 characters are echoed."""
    assert parse(json.dumps({"type": "ping", "ref": ref}), LIMIT).ref == ref


def test_null_ref_is_none():
    """A null ref is no ref."""
    assert parse(b'{"type":"ping","ref":null}', LIMIT).ref is None


@pytest.mark.parametrize("ref", [True, False, 1.5, "r" * 129, [1], {"a": 1}])
def test_unusable_ref_is_bad_frame(ref):
    """Other refs (bool, float, long strings, containers) are refused with
    bad_frame, so no frame is acked without the ref its sender waits on."""
    error = refused(json.dumps({"type": "send", "data": 1, "ref": ref}))
    assert error.code == frames.BAD_FRAME
    assert "ref must be" in str(error)
    assert error.ref is None


def test_unusable_ref_is_not_echoed_in_errors():
    """An error answering a frame with an unusable ref carries no ref."""
    assert refused(json.dumps({"type": "nope", "ref": [1, 2]})).ref is None


# -- helpers ---------------------------------------------------------------


@pytest.mark.parametrize(
    "name,ok",
    [("a", True), ("A-Z_a.z:0@9=x", True), ("x" * 128, True), ("x" * 129, False), ("", False),
     ("a b", False), ("a#b", False), (None, False), (3, False), ("a\n", False)],
)
def test_valid_channel(name, ok):
    """valid_channel follows ^[A-Za-z0-9_.:@=-]{1,128}$ exactly."""
    assert frames.valid_channel(name) is ok


def test_loads_refuses_nan():
    """loads is strict JSON: NaN is refused."""
    with pytest.raises(ValueError):
        frames.loads("NaN")


def test_dumps_is_compact_utf8_and_refuses_nan():
    """dumps writes compact UTF-8 JSON and never NaN."""
    assert frames.dumps({"a": ["é", 1]}) == '{"a":["é",1]}'.encode()
    with pytest.raises(ValueError):
        frames.dumps(float("nan"))


def test_error_codes_are_the_spec_list():
    """The error codes are exactly those of SPEC section 2, and the
    connection tokens' and limits' (issue 19)."""
    assert frames.ERROR_CODES - {
        "token_required", "token_invalid", "token_expired", "token_revoked", "too_many_connections",
    } == {
        "bad_frame", "unknown_type", "too_large", "invalid_channel", "forbidden",
        "too_many_subscriptions", "rate_limited", "no_application", "upstream_rejected",
        "upstream_failed", "slow_consumer", "shutting_down",
    }


# -- encoding --------------------------------------------------------------


def test_encode():
    """encode writes the frame as compact JSON and records its type."""
    frame = frames.encode({"type": "custom", "x": 1})
    assert (frame.payload, frame.kind, frame.channel, frame.id) == (b'{"type":"custom","x":1}', "custom", None, None)


def test_message_splices_data():
    """A message frame holds the published JSON data unparsed, with channel and id."""
    frame = frames.message("room", "5-1", b'{"b":[1,2]}')
    assert decoded(frame) == {"type": "message", "channel": "room", "id": "5-1", "data": {"b": [1, 2]}}
    assert frame.payload.endswith(b',"data":{"b":[1,2]}}')
    assert (frame.kind, frame.channel, frame.id) == ("message", "room", "5-1")


def test_message_without_channel_has_null_channel():
    """A broadcast or one-session message has channel null."""
    assert decoded(frames.message(None, "1-2", b"3")) == {"type": "message", "channel": None, "id": "1-2", "data": 3}


def test_connected():
    """connected names the session and the heartbeat, whole seconds as an integer."""
    assert frames.connected("S", 25.0).payload == b'{"type":"connected","session":"S","heartbeat":25}'
    assert decoded(frames.connected("S", 2.5)) == {"type": "connected", "session": "S", "heartbeat": 2.5}
    assert decoded(frames.connected("S", 25, 50.0, 110.0)) == {
        "type": "connected", "session": "S", "heartbeat": 25, "rate_limit": 50, "burst": 110
    }


def test_subscribed_and_unsubscribed():
    """subscribed says whether the replay is complete; unsubscribed names the channel."""
    assert decoded(frames.subscribed("a", True)) == {"type": "subscribed", "channel": "a", "recovered": True}
    assert decoded(frames.subscribed("a", False))["recovered"] is False
    assert decoded(frames.unsubscribed("a")) == {"type": "unsubscribed", "channel": "a"}


def test_ack_and_pong():
    """ack echoes the ref; pong is a bare pong."""
    assert decoded(frames.ack("r1")) == {"type": "ack", "ref": "r1"}
    assert decoded(frames.ack(None)) == {"type": "ack", "ref": None}
    assert decoded(frames.PONG) == {"type": "pong"}
    assert frames.PONG.kind == "pong"


def test_error_includes_ref_and_channel_only_when_known():
    """An error frame carries ref and channel only when they are known."""
    assert decoded(frames.error("bad_frame", "no")) == {"type": "error", "code": "bad_frame", "message": "no"}
    assert decoded(frames.error("forbidden", "no", ref=0, channel="c")) == {
        "type": "error", "code": "forbidden", "message": "no", "ref": 0, "channel": "c",
    }


def test_from_protocol_error():
    """A ProtocolError becomes the error frame the browser sees."""
    exc = ProtocolError("invalid_channel", "bad name", ref="r", channel="c")
    assert decoded(frames.from_protocol_error(exc)) == {
        "type": "error", "code": "invalid_channel", "message": "bad name", "ref": "r", "channel": "c",
    }


def test_encoded_size_is_payload_length():
    """A frame's size, which buffers are charged, is its payload's byte length."""
    assert frames.encode({"type": "x", "d": "é"}).size == len('{"type":"x","d":"é"}'.encode())


def test_framed_calls_framing_once():
    """Framing a frame for a transport happens once, however many recipients ask."""
    calls = []

    def framing(frame: Encoded) -> bytes:
        calls.append(frame)
        return b"<" + frame.payload + b">"

    frame = frames.message("a", "1-1", b"1")
    results = [frame.framed(framing) for _ in range(5)]
    assert calls == [frame]
    assert results[0] == b"<" + frame.payload + b">"
    assert all(r is results[0] for r in results)


def test_framed_caches_each_framing_separately():
    """Two transports' framings of one frame are each made once and kept apart."""
    counts = {"ws": 0, "sse": 0}

    def ws(frame: Encoded) -> bytes:
        counts["ws"] += 1
        return b"ws:" + frame.payload

    def sse(frame: Encoded) -> bytes:
        counts["sse"] += 1
        return b"data: " + frame.payload + b"\n\n"

    frame = frames.encode({"type": "pong"})
    for _ in range(3):
        assert frame.framed(ws) == b'ws:{"type":"pong"}'
        assert frame.framed(sse) == b'data: {"type":"pong"}\n\n'
    assert counts == {"ws": 1, "sse": 1}


def test_user_messages_name_the_user_not_a_channel():
    """A message on a user's channel is ``channel: null`` with ``user``."""
    frame = frames.message(frames.user_channel("alice"), "1-2", b'{"a":1}')
    assert frames.loads(frame.payload) == {"type": "message", "channel": None, "user": "alice", "id": "1-2", "data": {"a": 1}}


@pytest.mark.parametrize(
    "user,ok",
    [("alice", True), ("x" * 128, True), ("x" * 129, False), ("", False), ("a\nb", False), ("a\x7f", False),
     (None, False), (7, False), ("é~#:", True), ("\ud800", False)],
)
def test_valid_user(user, ok):
    """A user id is 1 to 128 characters without control characters."""
    assert frames.valid_user(user) is ok


def test_auth_and_refresh_frames():
    """auth carries a token and a user cursor; refresh a token and maybe a channel."""
    assert frames.parse(b'{"type":"auth","token":"t","since":"1-2"}', 1000) == frames.Frame("auth", since="1-2", token="t")
    assert frames.parse(b'{"type":"refresh","token":"t","channel":"private-a"}', 1000) == frames.Frame(
        "refresh", channel="private-a", token="t"
    )
    for raw in (b'{"type":"auth"}', b'{"type":"refresh","token":""}', b'{"type":"auth","token":5}'):
        with pytest.raises(ProtocolError) as caught:
            frames.parse(raw, 1000)
        assert caught.value.code == "bad_frame"
