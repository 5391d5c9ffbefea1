"""Unit tests of chloed.config: TOML and mappings become a Config or a ConfigError naming the option."""

from __future__ import annotations

import dataclasses

import pytest

from chloed import config
from chloed.config import Config, ConfigError


def write(tmp_path, text: str | bytes) -> str:
    path = tmp_path / "chloe.toml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return str(path)


def refused(values: dict) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        config.from_mapping(values)
    return info.value


def test_defaults_are_the_spec_table():
    """With no options, every option has the default SPEC section 1 documents
    (and rate_limit, which issue 7 added, history_memory and public_status,
    which issue 14 added, relay_batch and the send_batch limits, which issue
    16 added, pusher, which issue 17 added, and the users' and namespaces'
    options, which issue 19 added, and workers, which issue 20 added;
    conf/chloe.toml documents them)."""
    assert dataclasses.asdict(Config()) == {
        "listen": ("tcp:8901",),
        "application_server_url": None,
        "secret": (),
        "allowed_origins": ("*",),
        "transports": ("websocket", "sse", "longpoll", "jsonp"),
        "backend": "memory",
        "history_size": 100,
        "history_ttl": 300.0,
        "heartbeat": 25.0,
        "longpoll_timeout": 25.0,
        "session_grace": 30.0,
        "max_message_bytes": 65536,
        "max_connections": 100000,
        "max_subscriptions": 100,
        "rate_limit": 50.0,
        "outbound_buffer_bytes": 1048576,
        "upstream_timeout": 10.0,
        "upstream_retries": None,
        "upstream_queue": 10000,
        "relay_batch": 1,
        "relay_spool": None,
        "relay_spool_path": None,
        "relay_ttl": 86400.0,
        "relay_signature": "chloe",
        "events_queue": 10000,
        "send_batch_items": 1000,
        "send_batch_bytes": 1048576,
        "events": ("message",),
        "client_publish": False,
        "history_memory": 67108864,
        "public_status": False,
        "pusher": None,
        "require_connection_token": False,
        "token_public_key": None,
        "token_refresh_margin": 10.0,
        "max_connections_per_user": 0,
        "max_connections_per_ip": 0,
        "ip_limit_exempt": ("127.0.0.0/8", "::1/128"),
        "workers": 1,
        "namespaces": (),
    }


def test_options_lists_every_field():
    """OPTIONS names exactly the fields of Config."""
    assert set(config.OPTIONS) == {f.name for f in dataclasses.fields(Config)}


def test_empty_mapping_is_defaults():
    """No values at all give the defaults."""
    assert config.from_mapping({}) == Config()


def test_config_is_frozen():
    """A Config cannot be changed after validation."""
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().heartbeat = 1  # type: ignore[misc]


def test_from_mapping_over_a_base():
    """Values given override a base config and leave its other options alone."""
    base = Config(heartbeat=5.0, history_size=7)
    cfg = config.from_mapping({"history_size": 9}, base)
    assert (cfg.heartbeat, cfg.history_size) == (5.0, 9)


def test_load_full_file(tmp_path):
    """Every kind of option is read from a TOML file."""
    path = write(
        tmp_path,
        """
listen = ["tcp:8901:interface=127.0.0.1", "unix:/run/chloe.sock"]
application_server_url = "https://app.example.com/chloe"
secret = ["new-secret", "old-secret"]
allowed_origins = ["https://example.com/", "http://localhost:3000"]
transports = ["websocket", "sse"]
backend = "redis://localhost:6379/2"
history_size = 10
history_ttl = 60
heartbeat = 2.5
longpoll_timeout = 20
session_grace = 0
max_message_bytes = 4096
max_connections = 10
max_subscriptions = 3
outbound_buffer_bytes = 2048
upstream_timeout = 1.5
upstream_retries = 0
upstream_queue = 1
events = ["message", "connect", "disconnect", "subscribe", "unsubscribe"]
client_publish = true
""",
    )
    assert config.load(path) == Config(
        listen=("tcp:8901:interface=127.0.0.1", "unix:/run/chloe.sock"),
        application_server_url="https://app.example.com/chloe",
        secret=("new-secret", "old-secret"),
        allowed_origins=("https://example.com", "http://localhost:3000"),
        transports=("websocket", "sse"),
        backend="redis://localhost:6379/2",
        history_size=10,
        history_ttl=60.0,
        heartbeat=2.5,
        longpoll_timeout=20.0,
        session_grace=0.0,
        max_message_bytes=4096,
        max_connections=10,
        max_subscriptions=3,
        outbound_buffer_bytes=2048,
        upstream_timeout=1.5,
        upstream_retries=0,
        upstream_queue=1,
        events=("message", "connect", "disconnect", "subscribe", "unsubscribe"),
        client_publish=True,
    )


def test_load_empty_file_is_defaults(tmp_path):
    """An empty file gives the defaults."""
    assert config.load(write(tmp_path, "")) == Config()


def test_single_string_where_a_list_is_allowed(tmp_path):
    """listen, secret, origins, transports and events accept one string for a list of one."""
    cfg = config.load(
        write(
            tmp_path,
            'listen = "tcp:1"\nsecret = "s"\nallowed_origins = "https://a.example"\n'
            'transports = "sse"\nevents = "connect"\n',
        )
    )
    assert (cfg.listen, cfg.secret, cfg.allowed_origins, cfg.transports, cfg.events) == (
        ("tcp:1",), ("s",), ("https://a.example",), ("sse",), ("connect",),
    )


def test_float_options_become_floats():
    """Whole numbers given to second-valued options are read as floats."""
    cfg = config.from_mapping({"heartbeat": 5, "history_ttl": 0})
    assert (cfg.heartbeat, type(cfg.heartbeat), cfg.history_ttl) == (5.0, float, 0.0)


def test_empty_url_means_no_application():
    """An empty application_server_url means there is no application."""
    assert config.from_mapping({"application_server_url": ""}).application_server_url is None


def test_no_events_at_all():
    """events may be empty: nothing is POSTed to the app."""
    assert config.from_mapping({"events": []}).events == ()


@pytest.mark.parametrize("backend", ["memory", "redis://localhost:6379/0", "redis://redis", "redis://h:1/"])
def test_good_backends(backend):
    """memory and redis://host[:port][/db] are accepted."""
    assert config.from_mapping({"backend": backend}).backend == backend


def test_unknown_key(tmp_path):
    """An unknown option in the file is refused, naming it."""
    with pytest.raises(ConfigError) as info:
        config.load(write(tmp_path, "heartbeat = 5\nhaertbeat = 5\n"))
    assert info.value.option == "haertbeat"
    assert str(info.value).startswith("haertbeat: ")


def test_table_is_an_unknown_key(tmp_path):
    """A TOML table, which no option is, is refused as unknown, naming it."""
    with pytest.raises(ConfigError) as info:
        config.load(write(tmp_path, "[server]\nheartbeat = 5\n"))
    assert info.value.option == "server"


@pytest.mark.parametrize(
    "option,value",
    [
        ("history_size", "100"),
        ("history_size", 1.5),
        ("history_size", True),
        ("history_size", -1),
        ("history_ttl", "300"),
        ("history_ttl", -0.5),
        ("heartbeat", 0),
        ("heartbeat", False),
        ("heartbeat", [25]),
        ("longpoll_timeout", 0),
        ("session_grace", -1),
        ("max_message_bytes", 63),
        ("max_message_bytes", 65536.0),
        ("max_connections", 0),
        ("max_subscriptions", 0),
        ("outbound_buffer_bytes", 1023),
        ("upstream_timeout", 0),
        ("upstream_retries", -1),
        ("upstream_retries", 2.0),
        ("upstream_queue", 0),
        ("client_publish", "yes"),
        ("client_publish", 1),
        ("history_memory", -1),
        ("history_memory", 1.5),
        ("history_memory", "64MB"),
        ("public_status", "yes"),
        ("public_status", 1),
        ("listen", []),
        ("listen", 8901),
        ("listen", [""]),
        ("listen", ["tcp:1", 2]),
        ("secret", 42),
        ("secret", []),
        ("secret", [""]),
        ("allowed_origins", []),
        ("allowed_origins", ["example.com"]),
        ("allowed_origins", ["ftp://example.com"]),
        ("allowed_origins", ["https://example.com/path"]),
        ("transports", ["websocket", "carrier-pigeon"]),
        ("transports", []),
        ("events", ["message", "publish"]),
        ("events", [1]),
        ("application_server_url", 5),
        ("require_connection_token", "true"),
        ("require_connection_token", 1),
        ("token_public_key", 5),
        ("token_public_key", ["a.pem"]),
        ("token_public_key", "/nonexistent/keys.pem"),
        ("token_refresh_margin", -1),
        ("token_refresh_margin", "10"),
        ("token_refresh_margin", float("inf")),
        ("max_connections_per_user", -1),
        ("max_connections_per_user", 1.5),
        ("max_connections_per_user", True),
        ("max_connections_per_ip", -1),
        ("max_connections_per_ip", "10"),
        ("ip_limit_exempt", ["localhost"]),
        ("ip_limit_exempt", ["10.0.0.1/8"]),
        ("ip_limit_exempt", ["10.0.0.0/33"]),
        ("ip_limit_exempt", [""]),
        ("ip_limit_exempt", 127),
        ("namespaces", 5),
    ],
)
def test_wrong_values_name_the_option(option, value):
    """A value of the wrong type or out of range is refused, naming the option."""
    error = refused({option: value})
    assert error.option == option
    assert str(error).startswith(option + ": ")


@pytest.mark.parametrize(
    "url", ["not a url", "ftp://app.example.com/", "app.example.com/chloe", "http://", "https:///path", "file:///etc/passwd"]
)
def test_bad_url(url):
    """application_server_url must be an http or https URL with a host."""
    assert refused({"application_server_url": url}).option == "application_server_url"


@pytest.mark.parametrize("url", ["http://localhost:5000/chloe", "https://app.example.com"])
def test_good_url(url):
    """http and https URLs with a host are accepted as given."""
    assert config.from_mapping({"application_server_url": url}).application_server_url == url


@pytest.mark.parametrize("url", ["http://app:port/chloe", "http://app:99999/"])
def test_url_with_bad_port(url):
    """An application_server_url whose port is not a valid port is refused at start-up."""
    assert refused({"application_server_url": url}).option == "application_server_url"


@pytest.mark.parametrize(
    "backend", ["redis", "mysql://db/0", "redis:///0", "redis://h:port/0", "redis://h:6379/x", "", 5, ["memory"]]
)
def test_bad_backend(backend):
    """backend must be memory or redis://host:port/db."""
    assert refused({"backend": backend}).option == "backend"


def test_wrong_type_in_file(tmp_path):
    """A wrong type in the file is refused naming the option, not the file."""
    with pytest.raises(ConfigError) as info:
        config.load(write(tmp_path, 'max_subscriptions = "many"\n'))
    assert info.value.option == "max_subscriptions"


@pytest.mark.parametrize("option", ["heartbeat", "history_ttl", "session_grace", "upstream_timeout"])
def test_nan_is_refused(tmp_path, option):
    """nan, which TOML allows, is not a number of seconds and is refused."""
    with pytest.raises(ConfigError) as info:
        config.load(write(tmp_path, f"{option} = nan\n"))
    assert info.value.option == option


def test_missing_file(tmp_path):
    """A config file that cannot be read is refused, naming the config option and the path."""
    path = str(tmp_path / "missing.toml")
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert info.value.option == "config"
    assert path in str(info.value)


def test_directory_as_file(tmp_path):
    """A directory given as the config file is refused, naming the config option."""
    with pytest.raises(ConfigError) as info:
        config.load(str(tmp_path))
    assert info.value.option == "config"


@pytest.mark.parametrize("text", ["heartbeat = ", "heartbeat = 5\nheartbeat = 6\n", "[x", 'listen = ["a",'])
def test_bad_toml(tmp_path, text):
    """A file that is not TOML is refused, naming the config option."""
    with pytest.raises(ConfigError) as info:
        config.load(write(tmp_path, text))
    assert info.value.option == "config"
    assert "not valid TOML" in str(info.value)


def test_file_not_utf8(tmp_path):
    """A file that is not UTF-8 (a Latin-1 comment) is refused, naming the config option."""
    path = write(tmp_path, "# caf\xe9\nheartbeat = 5\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert info.value.option == "config"


@pytest.mark.parametrize("name, value, why", [
    ("relay_batch", 0, "at least 1"),
    ("relay_batch", 1001, "at most 1000"),
    ("relay_batch", 2.5, "whole number"),
    ("send_batch_items", 0, "at least 1"),
    ("send_batch_items", 100001, "at most 100000"),
    ("send_batch_bytes", 1023, "at least 1024"),
    ("send_batch_bytes", 64 * 1024 * 1024 + 1, "at most 67108864"),
])
def test_batch_options_are_bounded(name, value, why):
    """The batch sizes refuse what is not a whole number in their range, by name."""
    error = refused({name: value})
    assert error.option == name and why in str(error)


def test_users_options_read_from_a_file(tmp_path):
    """The connection-token and per-user/per-IP options are read as written;
    networks are kept the standard way."""
    cfg = config.load(
        write(
            tmp_path,
            'require_connection_token = true\ntoken_refresh_margin = 0\n'
            'max_connections_per_user = 3\nmax_connections_per_ip = 50\n'
            'ip_limit_exempt = ["10.0.0.0/8", "2001:DB8::/32", "192.0.2.7"]\nsecret = "s"\n',
        )
    )
    assert (
        cfg.require_connection_token,
        cfg.token_refresh_margin,
        cfg.max_connections_per_user,
        cfg.max_connections_per_ip,
        cfg.ip_limit_exempt,
    ) == (True, 0.0, 3, 50, ("10.0.0.0/8", "2001:db8::/32", "192.0.2.7/32"))
    cfg.check()


def test_no_network_is_exempt():
    """ip_limit_exempt may be empty (every address counts) or one string."""
    assert config.from_mapping({"ip_limit_exempt": []}).ip_limit_exempt == ()
    assert config.from_mapping({"ip_limit_exempt": "10.1.0.0/16"}).ip_limit_exempt == ("10.1.0.0/16",)


def test_host_bits_are_refused_naming_the_network():
    """A network written with host bits (a likely typo) is refused, quoting it."""
    error = refused({"ip_limit_exempt": ["127.0.0.0/8", "192.168.1.1/24"]})
    assert error.option == "ip_limit_exempt" and "'192.168.1.1/24'" in str(error)


@pytest.mark.parametrize(
    "host, exempt",
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),  # an IPv4 peer of a dual-stack socket
        ("10.0.0.1", False),
        ("::2", False),
        ("::ffff:10.0.0.1", False),
        ("", True),  # a UNIX socket's peer has no address
        ("/run/chloe.sock", True),
    ],
)
def test_ip_exempt_by_default(host, exempt):
    """By default only this machine's addresses, and peers without an IP
    address, are outside the per-IP limit."""
    assert Config().ip_exempt(host) is exempt


def test_ip_exempt_configured():
    """ip_exempt follows ip_limit_exempt, IPv4 and IPv6 alike."""
    cfg = config.from_mapping({"ip_limit_exempt": ["10.0.0.0/8", "2001:db8::/32"]})
    assert [cfg.ip_exempt(h) for h in ("10.2.3.4", "11.0.0.1", "127.0.0.1", "2001:db8::5", "2001:db9::5")] == [
        True, False, False, True, False,
    ]


def test_require_connection_token_needs_a_key():
    """require_connection_token without a secret or a public key could
    accept no browser at all: check() refuses it, naming the option."""
    with pytest.raises(ConfigError) as info:
        Config(require_connection_token=True).check()
    assert info.value.option == "require_connection_token"
    Config(require_connection_token=True, secret=("s",)).check()
