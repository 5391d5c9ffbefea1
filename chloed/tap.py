"""``twistd chloe``: command-line options over the TOML file, and
``makeService``.

Flags win over the file; ``CHLOE_SECRET`` stands in for ``--secret``. A bad
option stops start-up with one line naming it on stderr (a line for each
mistake, when it is several: ``[namespaces.…]``) and exit status 1
(a ``UsageError`` when the options are parsed outside twistd).

``makeService`` builds one of three servers: the one chloed (``workers =
1``), the supervisor of ``workers > 1`` (:mod:`chloed.worker_supervisor`),
or, in a process the supervisor started (``CHLOE_WORKER`` set), one of its
workers (:mod:`chloed.worker_process`), which takes its configuration from
the supervisor rather than from the file as it is now.
"""

from __future__ import annotations

import os
import sys
import tomllib
from typing import Any

from twisted.internet.endpoints import serverFromString
from twisted.internet.testing import MemoryReactor
from twisted.python import usage

from chloed import config as config_module
from chloed.errors import ConfigError
from chloed.workers import WorkerSpec, spec_from


class Options(usage.Options):
    """The flags of ``twistd chloe``."""

    optParameters = [
        ["config", "c", None, "TOML file of options (see conf/chloe.toml)."],
        ["app-url", "a", None, "application_server_url: where browser messages are POSTed."],
        ["secret", "s", None, "The shared secret of the app and Chloe (or CHLOE_SECRET)."],
        ["log-format", None, "text", "text (twistd's log) or json (one JSON object per line, on stdout)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        #: Set in a worker: what its supervisor told it.
        self["worker"] = spec_from(os.environ)

    def opt_listen(self, description: str) -> None:
        """A Twisted server endpoint string to serve on (repeatable;
        default tcp:8901)."""
        self["listen"].append(description)

    def postOptions(self) -> None:
        parent = getattr(self, "parent", None)
        try:
            self["chloe"] = self._load()
            if self["log-format"] not in ("text", "json"):
                raise ConfigError("log-format", f"must be text or json, not {self['log-format']!r}")
        except ConfigError as exc:
            if parent is not None:
                # Under twistd: a line a mistake, not twistd's usage text before them.
                sys.stderr.writelines(f"chloe: {line}\n" for line in str(exc).splitlines())
                raise SystemExit(1) from None
            raise usage.UsageError(str(exc)) from None
        if parent is not None:
            # As if given ``twistd --logger``, which twistd resolves after
            # this and sets up before anything logs; a worker's log lines
            # say which worker.
            if self["worker"] is not None:
                parent["logger"] = f"chloed.worker_process.{self['log-format']}_observer"
            elif self["log-format"] == "json":
                parent["logger"] = "chloed.logs.json_observer"

    def _load(self) -> config_module.Config:
        worker: WorkerSpec | None = self["worker"]
        if worker is not None:
            # The supervisor checked all of it, sockets included (which
            # only it could: systemd's are its own).
            base = config_module.from_mapping(tomllib.loads(worker.config)) if worker.config else None
            cfg = config_module.from_mapping(worker.flags, base)
            cfg.check()
            return cfg
        base = config_module.load(self["config"]) if self["config"] else config_module.Config()
        flags: dict[str, Any] = {}
        if self["listen"]:
            flags["listen"] = self["listen"]
        if self["app-url"] is not None:
            flags["application_server_url"] = self["app-url"]
        secret = self["secret"] if self["secret"] is not None else os.environ.get("CHLOE_SECRET")
        if secret:
            flags["secret"] = secret
        cfg = config_module.from_mapping(flags, base)
        cfg.check()
        if cfg.workers > 1:
            self["template"] = _template(self["config"], flags, cfg)
        if cfg.spool == "disk" and cfg.application_server_url is not None:
            from chloed.spool.base import SpoolError
            from chloed.spool.disk import probe

            assert cfg.relay_spool_path is not None
            try:
                probe(cfg.relay_spool_path)
            except SpoolError as exc:
                raise ConfigError("relay_spool_path", str(exc)) from None
        for description in cfg.listen:
            try:
                serverFromString(MemoryReactor(), description)
            except Exception as exc:  # each endpoint parser fails its own way
                if description.startswith("systemd:"):
                    raise ConfigError(
                        "listen",
                        f"{description!r}: no socket inherited from systemd "
                        "(is chloe.socket active? LISTEN_FDS and LISTEN_FDNAMES must be set)",
                    ) from None
                raise ConfigError("listen", f"{description!r} is not a usable endpoint: {exc}") from None
        return cfg


def _template(path: str | None, flags: dict[str, Any], cfg: config_module.Config) -> WorkerSpec:
    """What every worker is told: the file as read now (so that an edit
    takes effect at the next start of the server, not of one worker), and
    the flags, ``listen`` as the supervisor opened it."""
    text = None
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError("config", f"cannot read {path}: {exc}") from None
    return WorkerSpec(-1, (), text, {**flags, "listen": list(cfg.listen)})


def makeService(options: Options) -> Any:
    """Called by twistd with the parsed options."""
    from twisted.internet import reactor

    config = options["chloe"]
    if options["worker"] is not None:
        from chloed.worker_process import make_worker

        return make_worker(config, reactor, options["worker"])
    if config.workers > 1:
        from chloed.worker_supervisor import make_supervisor

        return make_supervisor(config, reactor, options["template"], options["log-format"])
    from chloed.service import make_service

    return make_service(config, reactor)
