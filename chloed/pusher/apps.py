"""The Pusher apps one chloed serves: ``[pusher]`` and ``[[pusher.apps]]`` of
the TOML file, validated into :class:`PusherConfig` (``Config.pusher``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from chloed.checks import http_url
from chloed.errors import ConfigError

#: What Pusher can send to an app's webhook URL.
WEBHOOK_EVENTS = (
    "channel_occupied", "channel_vacated", "member_added", "member_removed", "client_event", "cache_miss",
)
#: Pusher's own window for ``auth_timestamp``; a stricter one may be set.
TIMESTAMP_WINDOW = 600
#: Pusher's limits, the defaults here: 10 KB of event data, 10 client
#: events a second per socket.
MAX_MESSAGE_BYTES = 10240
CLIENT_EVENTS_PER_SECOND = 10.0

_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}", re.ASCII)


@dataclass(frozen=True)
class PusherApp:
    """One ``[[pusher.apps]]`` entry.

    :param max_connections: sockets of this app at once; 0: only the
        server's ``max_connections`` bounds them.
    """

    id: str
    key: str
    secret: str
    webhook_url: str | None = None
    webhook_events: tuple[str, ...] = ()
    enable_client_messages: bool = False
    max_connections: int = 0
    max_message_bytes: int = MAX_MESSAGE_BYTES
    client_events_per_second: float = CLIENT_EVENTS_PER_SECOND


@dataclass(frozen=True)
class PusherConfig:
    """``[pusher]``: the apps, and how old a signed API request may be."""

    apps: tuple[PusherApp, ...] = ()
    timestamp_window: int = TIMESTAMP_WINDOW

    def by_key(self, key: str) -> PusherApp | None:
        for app in self.apps:
            if app.key == key:
                return app
        return None

    def by_id(self, id: str) -> PusherApp | None:
        for app in self.apps:
            if app.id == id:
                return app
        return None


def _name(option: str, value: Any) -> str:
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise ConfigError(option, f"must be 1 to 64 of A-Z a-z 0-9 _ -, not {value!r}")
    return value


def _whole(option: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(option, f"must be a whole number of at least {minimum}, not {value!r}")
    if maximum is not None and value > maximum:
        raise ConfigError(option, f"must be at most {maximum}, not {value!r}")
    return value


def _app(index: int, entry: Any) -> PusherApp:
    where = f"pusher.apps[{index}]"
    if not isinstance(entry, dict):
        raise ConfigError(where, "must be a table ([[pusher.apps]])")
    known = {
        "id", "key", "secret", "webhook_url", "webhook_events", "enable_client_messages",
        "max_connections", "max_message_bytes", "client_events_per_second",
    }
    for name in entry:
        if name not in known:
            raise ConfigError(f"{where}.{name}", "unknown option (see conf/chloe.toml for the list)")
    for name in ("id", "key", "secret"):
        if name not in entry:
            raise ConfigError(f"{where}.{name}", "is required")
    secret = entry["secret"]
    if not isinstance(secret, str) or len(secret) < 8:
        raise ConfigError(f"{where}.secret", "must be a string of at least 8 characters")
    url = http_url(f"{where}.webhook_url", entry.get("webhook_url"))
    events = entry.get("webhook_events", list(WEBHOOK_EVENTS) if url else [])
    if not isinstance(events, list) or not all(e in WEBHOOK_EVENTS for e in events):
        raise ConfigError(f"{where}.webhook_events", f"must be a list of {', '.join(WEBHOOK_EVENTS)}")
    if events and url is None:
        raise ConfigError(f"{where}.webhook_events", "needs webhook_url")
    client = entry.get("enable_client_messages", False)
    if not isinstance(client, bool):
        raise ConfigError(f"{where}.enable_client_messages", f"must be true or false, not {client!r}")
    rate = entry.get("client_events_per_second", CLIENT_EVENTS_PER_SECOND)
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate <= 1000:
        raise ConfigError(f"{where}.client_events_per_second", f"must be a number from 0 (excluded) to 1000, not {rate!r}")
    return PusherApp(
        id=_name(f"{where}.id", entry["id"]),
        key=_name(f"{where}.key", entry["key"]),
        secret=secret,
        webhook_url=url,
        webhook_events=tuple(dict.fromkeys(events)),
        enable_client_messages=client,
        max_connections=_whole(f"{where}.max_connections", entry.get("max_connections", 0), 0),
        max_message_bytes=_whole(
            f"{where}.max_message_bytes", entry.get("max_message_bytes", MAX_MESSAGE_BYTES), 64, 1024 * 1024
        ),
        client_events_per_second=float(rate),
    )


def parse(option: str, value: Any) -> PusherConfig | None:
    """The ``[pusher]`` table; None when it lists no app (nothing of
    Pusher is served then)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError(option, "must be a table ([pusher] with [[pusher.apps]])")
    for name in value:
        if name not in ("apps", "timestamp_window"):
            raise ConfigError(f"{option}.{name}", "unknown option (see conf/chloe.toml for the list)")
    entries = value.get("apps", [])
    if not isinstance(entries, list):
        raise ConfigError(f"{option}.apps", "must be an array of tables ([[pusher.apps]])")
    apps = tuple(_app(i, entry) for i, entry in enumerate(entries))
    for field in ("id", "key"):
        seen = [getattr(app, field) for app in apps]
        if len(set(seen)) != len(seen):
            raise ConfigError(f"{option}.apps", f"two apps have the same {field}")
    window = _whole(f"{option}.timestamp_window", value.get("timestamp_window", TIMESTAMP_WINDOW), 1, TIMESTAMP_WINDOW)
    if not apps:
        return None
    return PusherConfig(apps, window)
