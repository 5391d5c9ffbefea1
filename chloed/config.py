"""Chloe's options: a TOML file and command-line flags become one frozen
:class:`Config`, or a :class:`~chloed.errors.ConfigError` naming the option.

Every option, with its default, is documented in ``conf/chloe.toml``.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import urlsplit

from chloed.checks import http_url
from chloed.errors import ConfigError
from chloed.pusher.apps import PusherConfig, parse as parse_pusher
from chloed.signing import SCHEMES, make_signer

TRANSPORTS = ("websocket", "sse", "longpoll", "jsonp")
EVENTS = ("message", "connect", "disconnect", "subscribe", "unsubscribe", "resume")
SPOOLS = ("memory", "disk", "redis")
#: Upper bounds of the batch options: past them one POST or one body is
#: more than a server should parse in one go.
RELAY_BATCH_MAX = 1000
SEND_BATCH_ITEMS_MAX = 100000
SEND_BATCH_BYTES_MAX = 64 * 1024 * 1024


@dataclass(frozen=True)
class Config:
    """Every option of SPEC section 1, validated."""

    listen: tuple[str, ...] = ("tcp:8901",)
    application_server_url: str | None = None
    secret: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ("*",)
    transports: tuple[str, ...] = TRANSPORTS
    backend: str = "memory"
    history_size: int = 100
    history_ttl: float = 300.0
    heartbeat: float = 25.0
    longpoll_timeout: float = 25.0
    session_grace: float = 30.0
    max_message_bytes: int = 65536
    max_connections: int = 100000
    max_subscriptions: int = 100
    rate_limit: float = 50.0
    outbound_buffer_bytes: int = 1048576
    upstream_timeout: float = 10.0
    #: None: retried until ``relay_ttl`` has passed.
    upstream_retries: int | None = None
    upstream_queue: int = 10000
    relay_batch: int = 1
    #: None: ``"redis"`` with a Redis backend, else ``"memory"`` (see
    #: :attr:`spool`).
    relay_spool: str | None = None
    relay_spool_path: str | None = None
    relay_ttl: float = 86400.0
    relay_signature: str = "chloe"
    events_queue: int = 10000
    send_batch_items: int = 1000
    send_batch_bytes: int = 1048576
    events: tuple[str, ...] = ("message",)
    client_publish: bool = False
    history_memory: int = 67108864
    public_status: bool = False
    #: ``[pusher]``: the Pusher apps served; None serves none.
    pusher: PusherConfig | None = None

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)

    @property
    def spool(self) -> str:
        """The relay's spool: ``relay_spool``, or what fits the backend."""
        if self.relay_spool is not None:
            return self.relay_spool
        return "memory" if self.backend == "memory" else "redis"

    def check(self) -> None:
        """What no single option says wrong, but several together do.

        :raises ConfigError: naming the option to change.
        """
        if self.relay_spool == "disk" and not self.relay_spool_path:
            raise ConfigError("relay_spool_path", 'relay_spool = "disk" needs a directory here')
        if self.relay_spool == "redis" and self.backend == "memory":
            raise ConfigError("relay_spool", '"redis" needs a Redis backend (backend = "redis://…")')
        if self.relay_signature != "chloe" and self.secret:
            make_signer(self.relay_signature, self.secret)


def _number(name: str, value: Any, minimum: float, integer: bool) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(name, f"must be a number, not {value!r}")
    if not math.isfinite(value):
        raise ConfigError(name, f"must be a finite number, not {value!r}")
    if integer and not isinstance(value, int):
        raise ConfigError(name, f"must be a whole number, not {value!r}")
    if value < minimum:
        raise ConfigError(name, f"must be at least {minimum}, not {value!r}")
    return value if integer else float(value)


def _bounded(name: str, value: Any, minimum: int, maximum: int) -> int:
    """A whole number from ``minimum`` to ``maximum``."""
    number = _number(name, value, minimum, True)
    if number > maximum:
        raise ConfigError(name, f"must be at most {maximum}, not {value!r}")
    return int(number)


def _strings(name: str, value: Any, allowed: tuple[str, ...] | None = None, nonempty: bool = True) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(name, "must be a string or a list of non-empty strings")
    if nonempty and not value:
        raise ConfigError(name, "must not be empty")
    if allowed is not None:
        for v in value:
            if v not in allowed:
                raise ConfigError(name, f"{v!r} is not one of {', '.join(allowed)}")
    return tuple(value)


def _one_of(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ConfigError(name, f"must be one of {', '.join(map(repr, allowed))}, not {value!r}")
    return value


def _path(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value or "\0" in value:
        raise ConfigError(name, f"must be a directory path, not {value!r}")
    return value


def _backend(name: str, value: Any) -> str:
    if value == "memory":
        return value
    if isinstance(value, str):
        parts = urlsplit(value)
        if parts.scheme == "redis" and parts.hostname:
            try:
                parts.port
            except ValueError:
                raise ConfigError(name, f"bad port in {value!r}") from None
            db = parts.path.strip("/")
            if db == "" or (db.isascii() and db.isdecimal()):
                return value
    raise ConfigError(name, f'must be "memory" or "redis://host:port/db", not {value!r}')


def _origins(name: str, value: Any) -> tuple[str, ...]:
    origins = _strings(name, value)
    for origin in origins:
        if origin == "*":
            continue
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
            raise ConfigError(name, f'{origin!r} is not "*" or an origin like "https://example.com"')
    return tuple(o.rstrip("/") for o in origins)


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(name, f"must be true or false, not {value!r}")
    return value


_CHECKS: dict[str, Any] = {
    "listen": lambda n, v: _strings(n, v),
    "application_server_url": http_url,
    "secret": lambda n, v: () if v is None else _strings(n, v),
    "allowed_origins": _origins,
    "transports": lambda n, v: _strings(n, v, TRANSPORTS),
    "backend": _backend,
    "history_size": lambda n, v: _number(n, v, 0, True),
    "history_ttl": lambda n, v: _number(n, v, 0, False),
    "heartbeat": lambda n, v: _number(n, v, 0.01, False),
    "longpoll_timeout": lambda n, v: _number(n, v, 0.01, False),
    "session_grace": lambda n, v: _number(n, v, 0, False),
    "max_message_bytes": lambda n, v: _number(n, v, 64, True),
    "max_connections": lambda n, v: _number(n, v, 1, True),
    "max_subscriptions": lambda n, v: _number(n, v, 1, True),
    "rate_limit": lambda n, v: _number(n, v, 0, False),
    "outbound_buffer_bytes": lambda n, v: _number(n, v, 1024, True),
    "upstream_timeout": lambda n, v: _number(n, v, 0.01, False),
    "upstream_retries": lambda n, v: _number(n, v, 0, True),
    "relay_spool": lambda n, v: _one_of(n, v, SPOOLS),
    "relay_spool_path": lambda n, v: _path(n, v),
    "relay_ttl": lambda n, v: _number(n, v, 1, False),
    "relay_signature": lambda n, v: _one_of(n, v, SCHEMES),
    "events_queue": lambda n, v: _number(n, v, 1, True),
    "upstream_queue": lambda n, v: _number(n, v, 1, True),
    "relay_batch": lambda n, v: _bounded(n, v, 1, RELAY_BATCH_MAX),
    "send_batch_items": lambda n, v: _bounded(n, v, 1, SEND_BATCH_ITEMS_MAX),
    "send_batch_bytes": lambda n, v: _bounded(n, v, 1024, SEND_BATCH_BYTES_MAX),
    "events": lambda n, v: _strings(n, v, EVENTS, nonempty=False),
    "client_publish": _bool,
    "history_memory": lambda n, v: _number(n, v, 0, True),
    "public_status": _bool,
    "pusher": parse_pusher,
}

OPTIONS = tuple(_CHECKS)


def from_mapping(values: Mapping[str, Any], base: Config | None = None) -> Config:
    """Validate ``values`` (from TOML or flags) over ``base``.

    :raises ConfigError: naming the first bad or unknown option.
    """
    changes = {}
    for name, value in values.items():
        check = _CHECKS.get(name)
        if check is None:
            raise ConfigError(name, "unknown option (see conf/chloe.toml for the list)")
        changes[name] = check(name, value)
    return (base or Config()).replace(**changes)


def load(path: str) -> Config:
    """Read a TOML file into a :class:`Config`.

    :raises ConfigError: when the file cannot be read or parsed, or an
        option is bad.
    """
    try:
        with open(path, "rb") as f:
            values = tomllib.load(f)
    except OSError as exc:
        raise ConfigError("config", f"cannot read {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError("config", f"{path} is not valid TOML: {exc}") from None
    return from_mapping(values)
