"""Fixtures of the contract suite: every case runs once per backend
(``kind``), each node built by :func:`chloed.backends.make_backend` and
started through its ``service()``, as the server does."""

from __future__ import annotations

from typing import Any, Iterator

import pytest
import pytest_twisted
from twisted.application.service import IService
from twisted.internet import defer, reactor

from chloed.backends import Backend, make_backend
from tests.backends.support import GRACE, Node, until
from tests.redis_server import redis_server  # noqa: F401 (fixture)


@pytest.fixture(params=["memory", "redis"])
def kind(request: pytest.FixtureRequest) -> str:
    """Which backend a case runs against; a case parametrizes ``kind``
    itself to run against one only."""
    return request.param


@pytest.fixture
def make_node(kind: str, request: pytest.FixtureRequest) -> Iterator[Any]:
    """Make nodes of the backend ``kind``: ``make(history_size=…,
    history_ttl=…, grace=…)`` fires with a :class:`Node` once its backend is
    up. Redis nodes share the test's ``redis-server``; all are stopped after
    the test."""
    url = request.getfixturevalue("redis_server").url if kind == "redis" else "memory"
    started: list[IService] = []

    def make(history_size: int = 100, history_ttl: float = 300.0, grace: float = GRACE) -> defer.Deferred[Node]:
        backend = make_backend(url, reactor, history_size, history_ttl)
        # Before it starts, as the hub does: Redis presence starts with it.
        presence = backend.make_presence(reactor, grace)
        service = backend.service()
        if service is not None:
            service.startService()
            started.append(service)
        return until(lambda: backend.backend_state == "up").addCallback(lambda _: Node(kind, backend, presence))

    yield make
    for service in reversed(started):
        pytest_twisted.blockon(defer.maybeDeferred(service.stopService))


@pytest.fixture
def node(make_node: Any) -> Node:
    """One node, up."""
    return pytest_twisted.blockon(make_node())


@pytest.fixture
def backend(node: Node) -> Backend:
    """One node's backend, up."""
    return node.backend


@pytest.fixture
def two_nodes(make_node: Any) -> tuple[Backend, Backend]:
    """Two nodes on one Redis (a case using it parametrizes ``kind`` to
    ``["redis"]``: one process has no other node)."""
    a, b = pytest_twisted.blockon(defer.gatherResults([make_node(), make_node()]))
    return a.backend, b.backend
