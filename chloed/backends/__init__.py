"""Where channels live: the seam between the hub and a backend.

Two backends hold channels. :class:`chloed.broker.Broker` keeps everything in
this process (``backend = "memory"``); :class:`chloed.backends.redis.RedisBroker`
shares channels, history and ids between several nodes through Redis
(``backend = "redis://host:port/db"``). Both are the same object to the hub
and the HTTP API, with one difference, said by ``asynchronous``:

- the memory broker answers at once: ``subscribe`` returns
  ``(recovered, missed)`` and ``publish`` a
  :class:`~chloed.broker.PublishResult`;
- a shared backend has to ask Redis first: ``subscribe``, ``subscribe_many``,
  ``publish``, ``broadcast`` and ``to_session`` return Deferreds firing with
  the same values, or failing with :class:`BackendUnavailable` while the
  backend cannot take a publish.

What the hub does with the answer (``subscribed``, then the replay, then live
messages) is the same either way; it checks for a Deferred once per subscribe
or ``/send``, so the memory path pays nothing per delivery for the seam.
"""

from __future__ import annotations

from typing import Any

from chloed.broker import HISTORY_MEMORY, Broker


class BackendUnavailable(Exception):
    """The backend cannot take a publish now (Redis is down or answered an
    error); ``/send`` answers 503 ``backend_unavailable``."""


def make_broker(
    backend: str, clock: Any, history_size: int, history_ttl: float, history_memory: int = HISTORY_MEMORY
) -> Broker:
    """The broker ``backend`` (the ``backend`` option) names.

    A Redis broker has to be connected: it has a ``service()`` to add to the
    server's services. ``history_memory`` bounds the memory broker's history
    (with Redis the history lives in Redis).
    """
    if backend == "memory":
        return Broker(clock, history_size, history_ttl, history_memory)
    from chloed.backends.redis import RedisBroker

    return RedisBroker(clock, history_size, history_ttl, backend)
