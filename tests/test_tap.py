"""Unit tests of chloed.tap (``twistd chloe`` options) and the twistd plugin."""

from __future__ import annotations

import pytest
from twisted.application.service import IServiceMaker
from twisted.internet import endpoints
from twisted.python import usage
from twisted.python.systemd import ListenFDs

from chloed import tap
from chloed.config import Config


@pytest.fixture(autouse=True)
def no_env_secret(monkeypatch):
    """The tests' own environment never supplies a secret."""
    monkeypatch.delenv("CHLOE_SECRET", raising=False)


def parse(*args: str) -> Config:
    options = tap.Options()
    options.parseOptions(list(args))
    return options["chloe"]


def refused(*args: str) -> usage.UsageError:
    with pytest.raises(usage.UsageError) as info:
        tap.Options().parseOptions(list(args))
    return info.value


def conf(tmp_path, text: str) -> str:
    path = tmp_path / "chloe.toml"
    path.write_text(text)
    return str(path)


def test_no_options_is_defaults():
    """twistd chloe with no flags runs on the defaults."""
    assert parse() == Config()


def test_config_file(tmp_path):
    """--config reads the TOML file."""
    path = conf(tmp_path, 'heartbeat = 5\nlisten = "tcp:9000"\n')
    assert parse("--config", path) == Config(heartbeat=5.0, listen=("tcp:9000",))


def test_short_flags(tmp_path):
    """-c, -a and -s are the short forms of --config, --app-url and --secret."""
    path = conf(tmp_path, "max_subscriptions = 3\n")
    assert parse("-c", path, "-a", "http://app/x", "-s", "k") == Config(
        max_subscriptions=3, application_server_url="http://app/x", secret=("k",)
    )


def test_flags_win_over_file(tmp_path):
    """--listen, --app-url and --secret override the file; the file's other options stay."""
    path = conf(
        tmp_path,
        'listen = ["tcp:1"]\napplication_server_url = "http://file/x"\n'
        'secret = ["file-secret"]\nhistory_size = 7\n',
    )
    assert parse(
        "--config", path, "--listen", "tcp:2", "--app-url", "http://flag/y", "--secret", "flag-secret"
    ) == Config(
        listen=("tcp:2",),
        application_server_url="http://flag/y",
        secret=("flag-secret",),
        history_size=7,
    )


def test_file_values_kept_without_flags(tmp_path):
    """Without the flags, the file's listen, app URL and secret are used."""
    path = conf(tmp_path, 'listen = ["tcp:1"]\napplication_server_url = "http://file/x"\nsecret = "s"\n')
    assert parse("--config", path) == Config(
        listen=("tcp:1",), application_server_url="http://file/x", secret=("s",)
    )


def test_empty_app_url_flag_turns_off_the_file_url(tmp_path):
    """--app-url "" means no application, whatever the file says."""
    path = conf(tmp_path, 'application_server_url = "http://file/x"\n')
    assert parse("--config", path, "--app-url", "").application_server_url is None


def test_chloe_secret_environment(monkeypatch):
    """CHLOE_SECRET gives the secret when no flag does."""
    monkeypatch.setenv("CHLOE_SECRET", "from-env")
    assert parse().secret == ("from-env",)


def test_secret_flag_wins_over_environment(monkeypatch):
    """--secret wins over CHLOE_SECRET."""
    monkeypatch.setenv("CHLOE_SECRET", "from-env")
    assert parse("--secret", "from-flag").secret == ("from-flag",)


def test_environment_secret_stands_in_for_the_flag_over_the_file(monkeypatch, tmp_path):
    """CHLOE_SECRET stands in for --secret, so it wins over the file's secret."""
    monkeypatch.setenv("CHLOE_SECRET", "from-env")
    path = conf(tmp_path, 'secret = ["from-file"]\n')
    assert parse("--config", path).secret == ("from-env",)


def test_empty_environment_secret_is_no_secret(monkeypatch, tmp_path):
    """An empty CHLOE_SECRET changes nothing."""
    monkeypatch.setenv("CHLOE_SECRET", "")
    assert parse().secret == ()
    assert parse("--config", conf(tmp_path, 'secret = "f"\n')).secret == ("f",)


def test_listen_is_repeatable():
    """--listen may be given several times; every endpoint is served, in order."""
    assert parse("--listen", "tcp:8901", "--listen", "unix:/tmp/chloe.sock", "--listen", "tcp:0:interface=127.0.0.1").listen == (
        "tcp:8901", "unix:/tmp/chloe.sock", "tcp:0:interface=127.0.0.1",
    )


def test_listen_options_are_not_shared_between_instances():
    """Each Options starts with its own empty --listen list."""
    parse("--listen", "tcp:1")
    assert tap.Options()["listen"] == []
    assert parse().listen == ("tcp:8901",)


@pytest.mark.parametrize("description", ["bogus:1", "tcp:abc", "tcp:", "tcp:80:backlog=x", "tcp:80:interface=::1"])
def test_bad_endpoint_string(description):
    """A --listen that is not a usable endpoint string stops start-up with a line naming listen."""
    error = refused("--listen", description)
    assert str(error).startswith("listen: ")
    assert description in str(error)


def test_bad_endpoint_in_file(tmp_path):
    """An unusable endpoint string in the file is refused too."""
    assert str(refused("--config", conf(tmp_path, 'listen = "nope:1"\n'))).startswith("listen: ")


def test_ssl_endpoint_with_missing_key_file(tmp_path):
    """An ssl: endpoint whose certificate file is missing stops start-up with a line naming listen."""
    missing = tmp_path / "missing.pem"
    assert str(refused("--listen", f"ssl:8443:privateKey={missing}")).startswith("listen: ")


def test_systemd_endpoint_without_sockets(monkeypatch):
    """A systemd: endpoint outside socket activation stops start-up with a line naming listen."""
    monkeypatch.setattr(endpoints._SystemdParser, "_sddaemon", ListenFDs([]))
    message = str(refused("--listen", "systemd:domain=INET:index=0"))
    assert message.startswith("listen: ") and "no socket inherited from systemd" in message


def test_systemd_endpoint_with_a_socket(monkeypatch):
    """A systemd: endpoint is accepted when systemd passed a socket."""
    monkeypatch.setattr(endpoints._SystemdParser, "_sddaemon", ListenFDs([3]))
    assert parse("--listen", "systemd:domain=INET:index=0").listen == ("systemd:domain=INET:index=0",)


def test_bad_option_in_file_is_a_usage_error(tmp_path):
    """A bad option in the file becomes a usage error naming it."""
    assert str(refused("--config", conf(tmp_path, "heartbeat = -1\n"))).startswith("heartbeat: ")


def test_missing_file_is_a_usage_error(tmp_path):
    """A config file that cannot be read becomes a usage error naming config."""
    assert str(refused("--config", str(tmp_path / "nope.toml"))).startswith("config: ")


def test_bad_app_url_flag():
    """A bad --app-url is refused naming application_server_url."""
    assert str(refused("--app-url", "ftp://x")).startswith("application_server_url: ")


def test_unknown_flag():
    """A flag chloe does not have is a usage error."""
    refused("--hearbeat", "5")


def test_plugin_is_a_service_maker_for_chloed_tap():
    """The twistd plugin is an IServiceMaker named chloe whose options and service come from chloed.tap."""
    from twisted.plugins import chloe_plugin

    maker = chloe_plugin.chloe
    assert IServiceMaker.providedBy(maker)
    assert maker.tapname == "chloe"
    assert maker.module == "chloed.tap"
    assert maker.options is tap.Options
    assert maker.makeService is tap.makeService
    assert maker.description


def test_plugin_is_found_by_twisted():
    """twistd finds the chloe plugin among its service makers."""
    from twisted.plugin import getPlugins

    assert "chloe" in {m.tapname for m in getPlugins(IServiceMaker)}


def test_log_format_json_hands_twistd_the_json_observer():
    """--log-format json is as if twistd was given --logger chloed.logs.json_observer."""
    from twisted.scripts.twistd import ServerOptions

    options = ServerOptions()
    options.parseOptions(["-n", "chloe", "--log-format", "json"])
    from chloed.logs import json_observer

    assert options["logger"] is json_observer


def test_log_format_text_leaves_twistd_logging_alone():
    from twisted.scripts.twistd import ServerOptions

    options = ServerOptions()
    options.parseOptions(["-n", "chloe"])
    assert options["logger"] is None


def test_bad_log_format():
    assert "log-format" in str(refused("--log-format", "xml"))


def test_json_log_lines():
    """One JSON object per event and per line, with the event's plain fields,
    and a traceback kept inside its line."""
    import io
    import json

    from twisted.logger import Logger

    from chloed.logs import json_observer

    out = io.StringIO()
    log = Logger(namespace="chloed.test", observer=json_observer(out))
    log.info("session {session}: {code}", session="abc", code="bad_frame", data=object())
    try:
        1 / 0
    except ZeroDivisionError:
        log.failure("it broke")
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["text"] == "session abc: bad_frame"
    assert (first["level"], first["namespace"], first["session"], first["code"]) == (
        "info", "chloed.test", "abc", "bad_frame"
    )
    assert "data" not in first
    assert second["level"] == "critical" and "ZeroDivisionError" in second["traceback"]
