"""``workers = N``: one chloed on every core, all on the same port.

With ``workers = 1`` (the default) none of this runs: ``twistd chloe`` is
the one process it always was. With more, the twistd process becomes the
supervisor (:mod:`chloed.worker_supervisor`): it opens every listening
socket once, from the ``listen`` endpoint strings or from systemd's socket
activation, stops accepting on them itself, and starts N workers
(:mod:`chloed.worker_process`), each adopting the same sockets
(``reactor.adoptStreamPort``) and serving exactly what one chloed serves.
The kernel hands each new connection to whichever worker accepts first.

Why the parent holds the sockets rather than each worker binding its own
with ``SO_REUSEPORT``: systemd hands over one socket, which every worker
then has to share anyway; the connections queued on a socket whose worker
dies stay in the shared queue for the others (with ``SO_REUSEPORT`` the
kernel resets those queued on the dead worker's socket); and UNIX sockets
work the same way as TCP ones.

Workers share channels, history, sessions and presence through the
backend, ``backend = "redis://…"`` (``Config.check`` refuses ``workers > 1``
with the memory backend); each is a node of its own there.

The wire between the supervisor and a worker, two pipes:

- the worker's stdin (fd 0) carries the supervisor's messages, its fd 3
  the worker's; both are JSON objects, one a line;
- once a second the supervisor sends ``{"type": "report"}``; the worker
  answers ``{"type": "report", "status": …, "public": …, "metrics": …,
  "node": …}`` (its ``/status``, its public status, its metric families,
  its node id in the backend);
- once every worker answered (or half a second passed), the supervisor
  sends each ``{"type": "whole", "status": …, "public": …, "metrics": …}``:
  the whole server's numbers (:mod:`chloed.worker_status`), which the
  worker's ``/status``, ``/metrics`` and status page answer;
- end of file on its stdin tells a worker that the supervisor is gone: it
  drains and exits, as on SIGTERM.

The listening sockets are the worker's fds 4, 5, …, in ``listen``'s order;
what else a worker needs (its index, the configuration the supervisor
started with) is in the environment variable ``CHLOE_WORKER``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

#: The environment variable that makes ``twistd chloe`` a worker.
SPEC_ENV = "CHLOE_WORKER"
#: The worker's end of the pipes: it reads the supervisor on stdin, and
#: writes to it on this descriptor.
TO_WORKER_FD = 0
TO_SUPERVISOR_FD = 3
#: The worker's descriptor of the first listening socket.
FIRST_LISTEN_FD = 4
#: A line longer than this is a bug, not a report: dropped, not buffered.
MAX_LINE = 16 * 1024 * 1024


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker is told when it starts.

    :param index: which worker it is, from 0; a restarted worker keeps the
        index of the one it replaces.
    :param listen: its descriptors of the listening sockets, in the order
        of ``Config.listen``.
    :param config: the TOML text of ``--config`` as the supervisor read it
        at start-up (None: no file), so that a worker restarted after the
        file was edited still runs the configuration the server runs.
    :param flags: the options given as flags (``listen``, ``secret``,
        ``application_server_url``), over the file's.
    """

    index: int
    listen: tuple[int, ...]
    config: str | None
    flags: Mapping[str, Any]

    def encode(self) -> str:
        return json.dumps(
            {"index": self.index, "listen": list(self.listen), "config": self.config, "flags": dict(self.flags)}
        )

    @classmethod
    def decode(cls, text: str) -> "WorkerSpec":
        value = json.loads(text)
        return cls(int(value["index"]), tuple(int(fd) for fd in value["listen"]), value["config"], value["flags"])


def spec_from(environ: Mapping[str, str]) -> WorkerSpec | None:
    """The spec a supervisor gave this process, None when it is no worker."""
    text = environ.get(SPEC_ENV)
    return None if text is None else WorkerSpec.decode(text)


def encode(message: Mapping[str, Any]) -> bytes:
    """One message on the pipes: a JSON object and a newline."""
    return json.dumps(message, separators=(",", ":")).encode("utf-8") + b"\n"


class Lines:
    """Splits what a pipe delivers into whole lines, keeping the rest for
    the next read."""

    def __init__(self, limit: int = MAX_LINE) -> None:
        self._buffer = bytearray()
        self._limit = limit
        self._skipping = False
        #: Lines dropped for being longer than ``limit``.
        self.dropped = 0

    def feed(self, data: bytes) -> list[bytes]:
        """The lines that ``data`` completes, without their newlines."""
        self._buffer += data
        *lines, rest = self._buffer.split(b"\n")
        if self._skipping and lines:
            lines = lines[1:]  # the end of the line dropped
            self._skipping = False
        if self._skipping or len(rest) > self._limit:
            if not self._skipping:
                self.dropped += 1
            self._skipping = True
            rest = bytearray()
        self._buffer = bytearray(rest)
        return [bytes(line) for line in lines if line]
