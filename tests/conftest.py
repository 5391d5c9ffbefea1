"""Fixtures shared by the integration and browser tests."""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.servers import AppServer, Chloed


@pytest.fixture
def app_server() -> Iterator[AppServer]:
    """A real app server that checks signatures and records relayed POSTs."""
    server = AppServer().start()
    yield server
    server.stop()


@pytest.fixture
def chloed_factory() -> Iterator:
    """Start real chloed processes; all are stopped after the test."""
    started: list[Chloed] = []

    def start(*args: str, **kwargs) -> Chloed:
        server = Chloed(*args, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def chloed(chloed_factory, app_server: AppServer) -> Chloed:
    """A chloed relaying to ``app_server``, secret ``test-secret``."""
    return chloed_factory("--app-url", app_server.url)
