"""The backend going away and coming back, through the contract."""

from __future__ import annotations

import pytest
import pytest_twisted

from chloed.backends import BackendUnavailable
from tests.backends.support import MEMORY_ONLY, REDIS_ONLY, Recorder, data_of, received, until


@REDIS_ONLY
@pytest_twisted.inlineCallbacks
def test_redis_going_away_and_coming_back(backend, redis_server):
    """While Redis is stopped the backend is not ``"up"`` and a publish
    fails with :class:`BackendUnavailable` (``/send`` 503); a join waits.
    Once Redis is back the backend is up again, its subscriber gets what is
    published after, and the waiting join is in and gets it too."""
    sub = Recorder("stays")
    yield backend.subscribe("r", sub, None)
    yield backend.publish(["r"], b"1")
    yield received(sub, 1)

    redis_server.stop()
    yield until(lambda: backend.backend_state != "up")
    with pytest.raises(BackendUnavailable):
        yield backend.publish(["r"], b"lost")
    late = Recorder("late")
    joining = backend.subscribe("r2", late, None)
    assert not joining.called

    redis_server.start()
    yield until(lambda: backend.backend_state == "up")
    assert (yield joining) == (True, [])
    yield backend.publish(["r", "r2"], b"2")
    yield received(sub, 2)
    yield received(late, 1)
    assert sub.data() == [1, 2]
    assert late.data() == [2]
    recovered, kept = yield backend.history("r", "not-an-id")
    assert data_of(kept) == [1, 2]  # appendfsync always: nothing lost


@MEMORY_ONLY
@pytest_twisted.inlineCallbacks
def test_memory_is_always_up(backend):
    """One process has nothing to connect: no service to run, always
    ``"up"``, every publish taken."""
    assert backend.service() is None
    assert backend.backend_state == "up"
    assert (yield backend.publish(["m"], b"1")).ids["m"]
    assert backend.backend_state == "up"
