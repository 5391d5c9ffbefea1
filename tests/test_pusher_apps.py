"""Unit tests of chloed.pusher.apps: ``[pusher]`` and ``[[pusher.apps]]``
become a PusherConfig, or a ConfigError naming the option (as the rest of
the config does, tests/test_config.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from chloed import config
from chloed.errors import ConfigError
from chloed.pusher import apps
from chloed.pusher.apps import PusherApp, PusherConfig

WHERE = "pusher.apps[0]"


def entry(**options: Any) -> dict[str, Any]:
    """One ``[[pusher.apps]]`` table: the three required options, and ``options``."""
    table: dict[str, Any] = {"id": "4242", "key": "app-key", "secret": "app-secret"}
    table.update(options)
    return table


def parsed(*entries: dict[str, Any], **pusher: Any) -> PusherConfig | None:
    """``pusher`` through the whole config, as a TOML file's table would go."""
    return config.from_mapping({"pusher": {"apps": list(entries), **pusher}}).pusher


def one(**options: Any) -> PusherApp:
    found = parsed(entry(**options))
    assert found is not None
    [app] = found.apps
    return app


def refused(value: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        config.from_mapping({"pusher": value})
    return info.value


def refused_app(**options: Any) -> ConfigError:
    return refused({"apps": [entry(**options)]})


# -- what is served ----------------------------------------------------------------


def test_no_pusher_table_serves_no_pusher() -> None:
    """Without ``[pusher]``, or with one that lists no app, nothing of
    Pusher is served (Config.pusher is None)."""
    assert config.from_mapping({}).pusher is None
    assert config.from_mapping({"pusher": None}).pusher is None
    assert config.from_mapping({"pusher": {}}).pusher is None
    assert config.from_mapping({"pusher": {"apps": []}}).pusher is None
    assert config.from_mapping({"pusher": {"apps": [], "timestamp_window": 30}}).pusher is None


def test_an_app_with_only_what_is_required_has_pushers_defaults() -> None:
    """id, key and secret are all an app needs; the rest are Pusher's
    limits (10 KB of data, 10 client events a second per socket), client
    events off, no quota of sockets, no webhooks."""
    found = parsed(entry())
    assert found == PusherConfig(
        apps=(PusherApp(id="4242", key="app-key", secret="app-secret"),), timestamp_window=600,
    )
    app = found.apps[0]
    assert app.webhook_url is None and app.webhook_events == ()
    assert app.enable_client_messages is False
    assert app.max_connections == 0
    assert app.max_message_bytes == 10240 == apps.MAX_MESSAGE_BYTES
    assert app.client_events_per_second == 10.0 == apps.CLIENT_EVENTS_PER_SECOND
    assert found.timestamp_window == apps.TIMESTAMP_WINDOW == 600


def test_every_option_of_an_app_is_taken() -> None:
    """Each option of ``[[pusher.apps]]`` lands in its field, as given."""
    app = one(
        webhook_url="https://app.example.com/pusher/webhooks",
        webhook_events=["member_added", "client_event"],
        enable_client_messages=True,
        max_connections=7,
        max_message_bytes=2048,
        client_events_per_second=2.5,
    )
    assert app == PusherApp(
        id="4242", key="app-key", secret="app-secret",
        webhook_url="https://app.example.com/pusher/webhooks",
        webhook_events=("member_added", "client_event"),
        enable_client_messages=True, max_connections=7, max_message_bytes=2048,
        client_events_per_second=2.5,
    )


def test_a_webhook_url_without_events_sends_every_event() -> None:
    """webhook_events defaults to all six Pusher sends once there is a URL."""
    app = one(webhook_url="http://127.0.0.1:8080/hooks")
    assert app.webhook_events == apps.WEBHOOK_EVENTS == (
        "channel_occupied", "channel_vacated", "member_added", "member_removed", "client_event", "cache_miss",
    )


def test_an_empty_webhook_url_is_none() -> None:
    """``webhook_url = ""`` (TOML has no null) is no webhook, and so no events."""
    app = one(webhook_url="")
    assert app.webhook_url is None and app.webhook_events == ()


def test_an_explicitly_empty_list_of_events_is_kept() -> None:
    """A URL with ``webhook_events = []``: nothing is sent (no relay is made for it)."""
    app = one(webhook_url="https://app.example.com/h", webhook_events=[])
    assert app.webhook_events == ()


def test_repeated_webhook_events_count_once() -> None:
    app = one(webhook_url="https://app.example.com/h", webhook_events=["cache_miss", "cache_miss", "client_event"])
    assert app.webhook_events == ("cache_miss", "client_event")


def test_an_integer_rate_becomes_a_float() -> None:
    app = one(client_events_per_second=3)
    assert app.client_events_per_second == 3.0 and isinstance(app.client_events_per_second, float)


@pytest.mark.parametrize("rate", [0.001, 1, 1000])
def test_the_rate_bounds_are_taken(rate: float) -> None:
    assert one(client_events_per_second=rate).client_events_per_second == rate


@pytest.mark.parametrize("size", [64, 1024 * 1024])
def test_the_message_size_bounds_are_taken(size: int) -> None:
    assert one(max_message_bytes=size).max_message_bytes == size


@pytest.mark.parametrize("window", [1, 600])
def test_the_timestamp_window_bounds_are_taken(window: int) -> None:
    found = parsed(entry(), timestamp_window=window)
    assert found is not None and found.timestamp_window == window


@pytest.mark.parametrize("name", ["a", "A-z_0-9", "x" * 64, "12345"])
def test_ids_and_keys_of_the_allowed_characters(name: str) -> None:
    app = one(id=name, key=name)
    assert app.id == app.key == name


def test_several_apps_are_found_by_key_and_by_id() -> None:
    found = parsed(entry(), entry(id="7", key="other-key", secret="other-secret"))
    assert found is not None
    assert [a.id for a in found.apps] == ["4242", "7"]
    assert found.by_key("other-key") is found.apps[1]
    assert found.by_id("4242") is found.apps[0]
    # An id is no key, and the other way round.
    assert found.by_key("7") is None and found.by_id("app-key") is None
    assert found.by_key("") is None and found.by_id("") is None


def test_a_toml_file_with_pusher_apps(tmp_path: Path) -> None:
    """``[pusher]`` and ``[[pusher.apps]]`` as written in chloe.toml."""
    path = tmp_path / "chloe.toml"
    path.write_text(
        'secret = "s"\n'
        "[pusher]\ntimestamp_window = 120\n"
        '[[pusher.apps]]\nid = "1"\nkey = "k1"\nsecret = "secret-one"\nenable_client_messages = true\n'
        '[[pusher.apps]]\nid = "2"\nkey = "k2"\nsecret = "secret-two"\n'
        'webhook_url = "https://app.example.com/h"\nwebhook_events = ["channel_occupied"]\n',
        encoding="utf-8",
    )
    loaded = config.load(str(path)).pusher
    assert loaded is not None and loaded.timestamp_window == 120
    assert [(a.id, a.key, a.enable_client_messages, a.webhook_events) for a in loaded.apps] == [
        ("1", "k1", True, ()), ("2", "k2", False, ("channel_occupied",)),
    ]


# -- refusals: each names the option ----------------------------------------------


@pytest.mark.parametrize("value", ["apps", 1, ["x"], True])
def test_pusher_must_be_a_table(value: Any) -> None:
    error = refused(value)
    assert error.option == "pusher"
    assert "must be a table" in str(error)


def test_an_unknown_pusher_option_is_named() -> None:
    error = refused({"apps": [entry()], "timestamp_windows": 5})
    assert error.option == "pusher.timestamp_windows"
    assert "unknown option" in str(error)


@pytest.mark.parametrize("value", [{"id": "1"}, "app", 3])
def test_apps_must_be_an_array_of_tables(value: Any) -> None:
    error = refused({"apps": value})
    assert error.option == "pusher.apps"


@pytest.mark.parametrize("value", ["app", 1, ["id"], None])
def test_each_app_must_be_a_table(value: Any) -> None:
    error = refused({"apps": [value]})
    assert error.option == WHERE
    assert "must be a table" in str(error)


def test_the_index_of_the_bad_app_is_named() -> None:
    error = refused({"apps": [entry(), entry(id="2", key="k2", secret="short")]})
    assert error.option == "pusher.apps[1].secret"


def test_an_unknown_app_option_is_named() -> None:
    error = refused_app(webhook="https://x.example/")
    assert error.option == f"{WHERE}.webhook"
    assert "unknown option" in str(error)


@pytest.mark.parametrize("missing", ["id", "key", "secret"])
def test_id_key_and_secret_are_required(missing: str) -> None:
    table = entry()
    del table[missing]
    error = refused({"apps": [table]})
    assert error.option == f"{WHERE}.{missing}"
    assert "is required" in str(error)


@pytest.mark.parametrize("option", ["id", "key"])
@pytest.mark.parametrize("value", ["", "x" * 65, "has space", "a/b", "a:b", "a~b", "é", 12345, None, True, ["k"]])
def test_ids_and_keys_outside_the_allowed_characters(option: str, value: Any) -> None:
    """1 to 64 of A-Z a-z 0-9 _ - (``~`` would break the backend's
    namespace, ``:`` an auth string's key part)."""
    error = refused_app(**{option: value})
    assert error.option == f"{WHERE}.{option}"
    assert "1 to 64" in str(error)


@pytest.mark.parametrize("value", ["", "seven77", 12345678, None, ["app-secret"]])
def test_a_secret_is_a_string_of_eight_characters_or_more(value: Any) -> None:
    error = refused_app(secret=value)
    assert error.option == f"{WHERE}.secret"
    assert "at least 8 characters" in str(error)


@pytest.mark.parametrize("url", [
    "ftp://app.example.com/h", "app.example.com/h", "https://", "http:///path", "javascript:alert(1)", 42, ["http://a"],
])
def test_a_webhook_url_must_be_http_or_https_with_a_host(url: Any) -> None:
    error = refused_app(webhook_url=url)
    assert error.option == f"{WHERE}.webhook_url"
    assert "http:// or https://" in str(error)


@pytest.mark.parametrize("url", ["http://app.example.com:99999/h", "http://app.example.com:port/h"])
def test_a_webhook_url_with_a_bad_port_is_refused(url: str) -> None:
    """As application_server_url is ("bad port in ..."): otherwise the
    first webhook's POST fails on it, and every one after, only at run
    time."""
    error = refused_app(webhook_url=url)
    assert error.option == f"{WHERE}.webhook_url"


@pytest.mark.parametrize("url", [False, 0, []])
def test_a_webhook_url_that_is_not_a_string_is_refused(url: Any) -> None:
    """Only a string (or "" for none) is a URL: ``webhook_url = false`` is
    a mistake to name, as application_server_url's "must be a URL string"
    does, not a silent "no webhooks"."""
    error = refused_app(webhook_url=url)
    assert error.option == f"{WHERE}.webhook_url"


@pytest.mark.parametrize("events", [
    ["channel_occupied", "subscription_count"], "channel_occupied", [1], {"channel_occupied": True}, None,
])
def test_webhook_events_must_be_a_list_of_pushers_events(events: Any) -> None:
    error = refused_app(webhook_url="https://app.example.com/h", webhook_events=events)
    assert error.option == f"{WHERE}.webhook_events"
    assert "must be a list of channel_occupied" in str(error)


def test_webhook_events_need_a_webhook_url() -> None:
    error = refused_app(webhook_events=["channel_occupied"])
    assert error.option == f"{WHERE}.webhook_events"
    assert "needs webhook_url" in str(error)


@pytest.mark.parametrize("value", [1, 0, "true", None])
def test_enable_client_messages_is_true_or_false(value: Any) -> None:
    error = refused_app(enable_client_messages=value)
    assert error.option == f"{WHERE}.enable_client_messages"
    assert "true or false" in str(error)


@pytest.mark.parametrize("rate", [0, -1, 1000.5, 10**6, True, "10", None, float("nan"), float("inf")])
def test_the_client_event_rate_is_a_number_from_0_to_1000(rate: Any) -> None:
    error = refused_app(client_events_per_second=rate)
    assert error.option == f"{WHERE}.client_events_per_second"
    assert "from 0 (excluded) to 1000" in str(error)


@pytest.mark.parametrize("value", [-1, 1.5, True, "10", None])
def test_max_connections_is_a_whole_number_of_at_least_0(value: Any) -> None:
    error = refused_app(max_connections=value)
    assert error.option == f"{WHERE}.max_connections"
    assert "whole number of at least 0" in str(error)


@pytest.mark.parametrize("value", [63, 0, -5, 100.0, False, "10240"])
def test_max_message_bytes_is_a_whole_number_of_at_least_64(value: Any) -> None:
    error = refused_app(max_message_bytes=value)
    assert error.option == f"{WHERE}.max_message_bytes"
    assert "at least 64" in str(error)


def test_max_message_bytes_is_at_most_a_mebibyte() -> None:
    error = refused_app(max_message_bytes=1024 * 1024 + 1)
    assert error.option == f"{WHERE}.max_message_bytes"
    assert "at most 1048576" in str(error)


@pytest.mark.parametrize("window", [0, -1, 601, 3600, 1.5, True, "600"])
def test_the_timestamp_window_is_1_to_600_seconds(window: Any) -> None:
    """Pusher's own window is the widest a server may allow."""
    error = refused({"apps": [entry()], "timestamp_window": window})
    assert error.option == "pusher.timestamp_window"


def test_the_timestamp_window_is_checked_with_no_app_too() -> None:
    error = refused({"apps": [], "timestamp_window": 0})
    assert error.option == "pusher.timestamp_window"


@pytest.mark.parametrize("field", ["id", "key"])
def test_two_apps_may_not_share_an_id_or_a_key(field: str) -> None:
    other = entry(id="2", key="k2", secret="secret-two")
    other[field] = entry()[field]
    error = refused({"apps": [entry(), other]})
    assert error.option == "pusher.apps"
    assert f"two apps have the same {field}" in str(error)


def test_one_apps_key_may_be_anothers_id() -> None:
    """Keys and ids are looked up apart (the socket by key, the API by id)."""
    found = parsed(entry(id="a", key="b"), entry(id="b", key="a", secret="secret-two"))
    assert found is not None and found.by_key("a") is found.apps[1] and found.by_id("a") is found.apps[0]


def test_a_config_error_reads_option_then_why() -> None:
    error = refused_app(secret="short")
    assert str(error) == f"{WHERE}.secret: must be a string of at least 8 characters"
