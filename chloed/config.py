"""Chloe's options: a TOML file and command-line flags become one frozen
:class:`Config`, or a :class:`~chloed.errors.ConfigError` naming the option.

Every option, with its default, is documented in ``conf/chloe.toml``.
``[namespaces.NAME]`` tables give the channels ``NAME:…`` options of their
own; :meth:`Config.channel_options` resolves them for one channel.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import os
import re
import tomllib
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Mapping
from urllib.parse import urlsplit

from chloed.checks import http_url
from chloed.errors import ConfigError
from chloed.frames import RESERVED_PREFIX, USER_PREFIX
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
#: A namespace's name: the channel alphabet without ``:``, which ends it.
NAMESPACE_RE = re.compile(r"[A-Za-z0-9_.@=-]{1,64}", re.ASCII)
#: The algorithms of connection tokens signed with ``token_public_key``.
PUBLIC_KEY_ALGORITHMS = ("RS256", "ES256")


@dataclass(frozen=True, slots=True)
class Namespace:
    """One ``[namespaces.NAME]`` table, as written: None leaves an option
    to the global one (resolved by :meth:`Config.channel_options`, so a flag
    that changes a global changes the namespaces that did not set it)."""

    name: str
    history_size: int | None = None
    history_ttl: float | None = None
    presence: bool | None = None
    client_publish: bool | None = None
    require_token: bool | None = None
    max_message_bytes: int | None = None
    allowed_origins: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class ChannelOptions:
    """What applies to one channel: its namespace's options over the
    globals.

    :param namespace: None for the globals (a channel without ``:``).
    :param presence: the namespace's channels are presence channels
        (``presence-…`` channels are, whatever this says).
    :param require_token: subscribing needs a channel token, as for
        ``private-…`` channels.
    """

    namespace: str | None
    history_size: int
    history_ttl: float
    presence: bool
    client_publish: bool
    require_token: bool
    max_message_bytes: int
    allowed_origins: tuple[str, ...]


@dataclass(frozen=True)
class Config:
    """Every option of SPEC section 1, validated."""

    listen: tuple[str, ...] = ("tcp:8901",)
    application_server_url: str | None = None
    secret: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ("*",)
    transports: tuple[str, ...] = TRANSPORTS
    #: ``"memory"``, one ``redis://`` URL, or a tuple of 2+ of them (shards).
    backend: str | tuple[str, ...] = "memory"
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
    require_connection_token: bool = False
    #: A PEM or JWKS file of the RS256/ES256 keys of connection tokens
    #: (:meth:`public_keys` loads it).
    token_public_key: str | None = None
    token_refresh_margin: float = 10.0
    #: 0: no limit.
    max_connections_per_user: int = 0
    max_connections_per_ip: int = 0
    ip_limit_exempt: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    #: Processes serving the port (chloed.worker_supervisor); ``"auto"`` is
    #: resolved to the cores this process may run on when it is read.
    workers: int = 1
    #: ``[namespaces.NAME]`` tables, in the file's order.
    namespaces: tuple[Namespace, ...] = ()

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)

    def channel_options(self, name: str) -> ChannelOptions | None:
        """The options of channel ``name``: its namespace's (the part before
        the first ``:``), or the globals for a name without ``:`` or when no
        namespace is configured; None for a namespace that is not configured
        (the caller answers ``invalid_channel``).

        Called on every subscribe and every send: a partition and a lookup.
        """
        prefix, colon, _ = name.partition(":")
        if not colon or not self.namespaces:
            return self._global_options
        return self._namespace_options.get(prefix)

    def policy(self, name: str) -> tuple[int, float]:
        """``(history_size, history_ttl)`` of channel ``name``, the policy the
        backends take: a user channel's history lasts ``session_grace``, as
        long as a reconnecting tab may take to come back."""
        if name.startswith(USER_PREFIX):
            return (self.history_size, self.session_grace)
        options = self.channel_options(name) or self._global_options
        return (options.history_size, options.history_ttl)

    def ip_exempt(self, host: str) -> bool:
        """Whether a peer at ``host`` is outside ``max_connections_per_ip``:
        it is in ``ip_limit_exempt``, or it is no IP address at all (a UNIX
        socket's peer)."""
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return True
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            # A dual-stack socket's IPv4 peer: ::ffff:127.0.0.1 is 127.0.0.1.
            address = address.ipv4_mapped
        return any(address in network for network in self._exempt_networks)

    def public_keys(self) -> tuple[tuple[str, Any], ...]:
        """The ``(algorithm, key)`` pairs of ``token_public_key`` (none when it
        is unset), read once.

        :raises ConfigError: when the file no longer reads or parses.
        """
        return self._public_keys

    @cached_property
    def _public_keys(self) -> tuple[tuple[str, Any], ...]:
        if self.token_public_key is None:
            return ()
        return read_public_keys("token_public_key", self.token_public_key)

    @cached_property
    def _exempt_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(n) for n in self.ip_limit_exempt)

    @cached_property
    def _global_options(self) -> ChannelOptions:
        return ChannelOptions(
            namespace=None,
            history_size=self.history_size,
            history_ttl=self.history_ttl,
            presence=False,
            client_publish=self.client_publish,
            require_token=False,
            max_message_bytes=self.max_message_bytes,
            allowed_origins=self.allowed_origins,
        )

    @cached_property
    def _namespace_options(self) -> dict[str, ChannelOptions]:
        base = self._global_options
        resolved = {}
        for ns in self.namespaces:
            given = {
                field: getattr(ns, field)
                for field in _NAMESPACE_OPTIONS
                if getattr(ns, field) is not None
            }
            resolved[ns.name] = dataclasses.replace(base, namespace=ns.name, **given)
        return resolved

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
        if self.require_connection_token and not (self.secret or self.token_public_key):
            raise ConfigError(
                "require_connection_token", "needs secret or token_public_key, to check the tokens with"
            )
        if self.workers > 1 and self.backend == "memory":
            # Each worker is a process of its own: only a shared backend
            # lets a browser of one reach a channel of another.
            raise ConfigError("workers", 'more than one needs a shared backend: backend = "redis://…"')
        if self.workers > 1 and self.spool == "disk":
            raise ConfigError(
                "relay_spool", '"disk" is one process\'s spool: with workers > 1 use "redis" (or leave it unset)'
            )


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


def _backend(name: str, value: Any) -> str | tuple[str, ...]:
    """``"memory"``, a ``redis://host:port/db`` URL, or a list of two or
    more such URLs, each a shard (:mod:`chloed.backends.redis.shards`)."""
    if value == "memory":
        return value
    if isinstance(value, list):
        if len(value) < 2:
            raise ConfigError(name, 'a list names two shards or more; one Redis is backend = "redis://host:port/db"')
        urls = tuple(_redis_url(name, url) for url in value)
        seen: dict[tuple[str, int, int], str] = {}
        for url in urls:
            parts = urlsplit(url)
            where = (parts.hostname or "", parts.port or 6379, int(parts.path.strip("/") or 0))
            if where in seen:
                raise ConfigError(name, f"{url!r} and {seen[where]!r} are the same shard")
            seen[where] = url
        return urls
    return _redis_url(name, value)


def _redis_url(name: str, value: Any) -> str:
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
    raise ConfigError(
        name, f'must be "memory", "redis://host:port/db" or a list of such URLs (shards), not {value!r}'
    )


#: The most ``workers`` chloed starts: more processes than this on one box
#: would be a typo, not a plan.
WORKERS_MAX = 1024


def _workers(name: str, value: Any) -> int:
    """``workers``: a whole number, or ``"auto"`` for one per core this
    process may run on (its CPU affinity, which ``taskset`` and systemd's
    ``CPUAffinity=`` narrow; ``os.cpu_count()`` counts every core)."""
    if value == "auto":
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not Linux
            return os.cpu_count() or 1
    if isinstance(value, str):
        raise ConfigError(name, f'must be a whole number or "auto", not {value!r}')
    return _bounded(name, value, 1, WORKERS_MAX)


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


def _networks(name: str, value: Any) -> tuple[str, ...]:
    """IP networks (``"10.0.0.0/8"``, ``"::1"``), written the standard way."""
    networks = []
    for text in _strings(name, value, nonempty=False):
        try:
            networks.append(str(ipaddress.ip_network(text)))
        except ValueError as exc:
            raise ConfigError(name, f"{text!r} is not an IP network: {exc}") from None
    return tuple(networks)


def _key_file(name: str, value: Any) -> str | None:
    """A key file that reads and holds keys now, so a bad one stops
    start-up rather than every connection."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or "\0" in value:
        raise ConfigError(name, f"must be the path of a PEM or JWKS file, not {value!r}")
    read_public_keys(name, value)
    return value


_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----.+?-----END \1-----", re.S)


def read_public_keys(name: str, path: str) -> tuple[tuple[str, Any], ...]:
    """The ``(algorithm, key)`` pairs of a PEM file (one or more public keys
    or certificates, for a rotation) or of a JWKS JSON file (its keys for
    signatures; a single JWK too), RS256 or ES256.

    :raises ConfigError: naming ``name``, when the file does not read, holds
        a private key, or holds no usable key.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError(name, f"cannot read {path}: {exc.strerror}") from None
    if data.lstrip()[:1] in (b"{", b"["):
        keys = _jwks_keys(name, path, data)
    else:
        keys = _pem_keys(name, path, data)
    if not keys:
        raise ConfigError(name, f"{path} holds no {' or '.join(PUBLIC_KEY_ALGORITHMS)} signing key")
    return keys


def _pem_keys(name: str, path: str, data: bytes) -> tuple[tuple[str, Any], ...]:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    blocks = list(_PEM_BLOCK.finditer(data))
    if not blocks:
        raise ConfigError(name, f"{path} is neither PEM nor JWKS JSON")
    keys = []
    for block in blocks:
        kind = block.group(1).decode("ascii")
        key: Any
        if "PRIVATE" in kind:
            raise ConfigError(name, f"{path} holds a private key: give the public key only")
        try:
            if kind in ("CERTIFICATE", "X509 CERTIFICATE"):
                key = x509.load_pem_x509_certificate(block.group(0)).public_key()
            else:
                key = load_pem_public_key(block.group(0))
        except ValueError as exc:
            raise ConfigError(name, f"{path}: a {kind} block that does not parse: {exc}") from None
        keys.append((_algorithm(name, path, key), key))
    return tuple(keys)


def _algorithm(name: str, path: str, key: Any) -> str:
    """RS256 for an RSA key, ES256 for a P-256 one."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if isinstance(key, rsa.RSAPublicKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return "ES256"
    raise ConfigError(name, f"{path}: only RSA (RS256) and P-256 (ES256) keys are supported")


def _jwks_keys(name: str, path: str, data: bytes) -> tuple[tuple[str, Any], ...]:
    import jwt

    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(name, f"{path} is not valid JSON: {exc}") from None
    entries = None
    if isinstance(document, dict):
        entries = document.get("keys", [document] if "kty" in document else None)
    if not isinstance(entries, list):
        raise ConfigError(name, f'{path} is not a JWKS ({{"keys": [...]}}) nor a JWK')
    keys = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ConfigError(name, f"{path}: key {index} is not a JSON object")
        if entry.get("use", "sig") != "sig":
            continue  # an encryption key of the same set
        if "d" in entry or "k" in entry:
            raise ConfigError(name, f"{path}: key {index} is a private or secret key: publish the public part only")
        try:
            jwk = jwt.PyJWK(entry)
        except (jwt.PyJWKError, jwt.InvalidKeyError) as exc:
            if entry.get("alg") not in (None, *PUBLIC_KEY_ALGORITHMS):
                continue  # an algorithm of the set Chloe does not take
            raise ConfigError(name, f"{path}: key {index}: {exc}") from None
        if jwk.algorithm_name not in PUBLIC_KEY_ALGORITHMS:
            continue
        keys.append((_algorithm(name, path, jwk.key), jwk.key))
    return tuple(keys)


#: What a ``[namespaces.NAME]`` table may set, each checked as its global is
#: (``max_message_bytes`` against the global too, by :func:`_oversized`).
_NAMESPACE_OPTIONS: dict[str, Any] = {
    "history_size": lambda n, v: _number(n, v, 0, True),
    "history_ttl": lambda n, v: _number(n, v, 0, False),
    "presence": _bool,
    "client_publish": _bool,
    "require_token": _bool,
    "max_message_bytes": lambda n, v: _number(n, v, 64, True),
    "allowed_origins": _origins,
}


def _namespaces(value: Any, mistakes: list[ConfigError]) -> tuple[Namespace, ...]:
    """``[namespaces.NAME]`` tables; every mistake is added to ``mistakes``,
    so that one start-up lists them all."""
    if not isinstance(value, dict):
        mistakes.append(ConfigError("namespaces", "must be tables ([namespaces.NAME])"))
        return ()
    namespaces = []
    for ns, table in value.items():
        where = f"namespaces.{ns}"
        if not NAMESPACE_RE.fullmatch(ns):
            mistakes.append(ConfigError(where, "a namespace is 1 to 64 of A-Z a-z 0-9 _ . @ = - (no :)"))
        elif ns.startswith(RESERVED_PREFIX):
            mistakes.append(ConfigError(where, f"names starting {RESERVED_PREFIX!r} are Chloe's own"))
        if not isinstance(table, dict):
            mistakes.append(ConfigError(where, f"must be a table ([{where}])"))
            continue
        given = {}
        for option, setting in table.items():
            check = _NAMESPACE_OPTIONS.get(option)
            if check is None:
                mistakes.append(
                    ConfigError(f"{where}.{option}", "unknown option (see conf/chloe.toml for the list)")
                )
                continue
            try:
                given[option] = check(f"{where}.{option}", setting)
            except ConfigError as exc:
                mistakes.append(exc)
        namespaces.append(Namespace(ns, **given))
    return tuple(namespaces)


def _oversized(cfg: Config) -> list[ConfigError]:
    """Namespaces whose ``max_message_bytes`` is past the global one: the
    transports refuse a larger frame before they know its channel."""
    return [
        ConfigError(
            f"namespaces.{ns.name}.max_message_bytes",
            f"must be at most max_message_bytes ({cfg.max_message_bytes}), not {ns.max_message_bytes}",
        )
        for ns in cfg.namespaces
        if ns.max_message_bytes is not None and ns.max_message_bytes > cfg.max_message_bytes
    ]


def _joined(mistakes: list[ConfigError]) -> ConfigError:
    """One error of several mistakes, a line each (``tap`` prints them so),
    named after the first."""
    first, rest = mistakes[0], mistakes[1:]
    message = str(first)[len(first.option) + 2 :]
    return ConfigError(first.option, "\n".join([message, *map(str, rest)]))


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
    "require_connection_token": _bool,
    "token_public_key": _key_file,
    "token_refresh_margin": lambda n, v: _number(n, v, 0, False),
    "max_connections_per_user": lambda n, v: _number(n, v, 0, True),
    "max_connections_per_ip": lambda n, v: _number(n, v, 0, True),
    "ip_limit_exempt": _networks,
    "workers": _workers,
}

#: Every option; ``namespaces`` is read last, against the final
#: ``max_message_bytes``.
OPTIONS = (*_CHECKS, "namespaces")


def from_mapping(values: Mapping[str, Any], base: Config | None = None) -> Config:
    """Validate ``values`` (from TOML or flags) over ``base``.

    :raises ConfigError: naming the first bad or unknown option; for
        namespaces, every mistake in them, a line each.
    """
    base = base or Config()
    changes = {}
    for name, value in values.items():
        if name == "namespaces":
            continue
        check = _CHECKS.get(name)
        if check is None:
            raise ConfigError(name, "unknown option (see conf/chloe.toml for the list)")
        changes[name] = check(name, value)
    mistakes: list[ConfigError] = []
    if "namespaces" in values:
        changes["namespaces"] = _namespaces(values["namespaces"], mistakes)
    cfg = base.replace(**changes)
    mistakes.extend(_oversized(cfg))
    if mistakes:
        raise _joined(mistakes)
    return cfg


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
