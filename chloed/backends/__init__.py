"""Where channels live: the seam between the hub and a backend.

The contract is :mod:`chloed.backends.base` (:class:`~chloed.backends.base.Backend`):
asynchronous everywhere a shared backend has to ask, one
:class:`~chloed.backends.base.BackendUnavailable` error. Two backends
implement it: :class:`chloed.backends.memory.MemoryBackend` keeps everything
in this process (``backend = "memory"``) and answers with Deferreds that
have fired already; :class:`chloed.backends.redis.RedisBroker` shares
channels, history, ids, sessions and presence between several nodes through
Redis (``backend = "redis://host:port/db"``), and
:class:`chloed.backends.redis.shards.ShardedBackend` spreads the channels
over several Redis (``backend = ["redis://a…", "redis://b…", …]``). The hub
and the HTTP API treat them alike; fan-out to this process's subscribers is
a plain call on each.
"""

from __future__ import annotations

from typing import Any, Sequence

from chloed.backends.base import Backend, BackendUnavailable, Policy
from chloed.backends.memory import HISTORY_MEMORY, MemoryBackend

__all__ = ["Backend", "BackendUnavailable", "make_backend"]


def make_backend(
    backend: str | Sequence[str], clock: Any, history_size: int, history_ttl: float,
    history_memory: int = HISTORY_MEMORY, policy: Policy | None = None,
) -> Backend:
    """The backend ``backend`` (the ``backend`` option) names: ``"memory"``,
    one Redis URL, or several (shards, the first the home one).

    A Redis backend has to be connected: its ``service()`` is added to the
    server's services. ``history_memory`` bounds the memory backend's
    history (with Redis the history lives in Redis); ``policy`` gives
    each channel its own history size and time to live.
    """
    if backend == "memory":
        return MemoryBackend(clock, history_size, history_ttl, history_memory, policy)
    if not isinstance(backend, str):
        from chloed.backends.redis.shards import ShardedBackend

        return ShardedBackend(clock, history_size, history_ttl, list(backend), policy=policy)
    from chloed.backends.redis import RedisBroker

    return RedisBroker(clock, history_size, history_ttl, backend, policy=policy)
