"""send_now: a frame goes straight to the socket only when the transport has
nothing unsent; what the kernel does not take is left for the transport."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import pytest

from chloed.transports._turn import send_now


def transport(**state):
    base = dict(_tempDataLen=0, offset=0, dataBuffer=b"", disconnecting=False, connected=True)
    base.update(state)
    return SimpleNamespace(**base)


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def test_idle_transport_sends_directly(pair):
    a, b = pair
    assert send_now(transport(), a, b"frame") == b""
    assert b.recv(100) == b"frame"


@pytest.mark.parametrize("state", [
    {"_tempDataLen": 3},
    {"dataBuffer": b"abc", "offset": 1},
    {"disconnecting": True},
    {"connected": False},
])
def test_anything_unsent_or_closing_goes_through_the_transport(pair, state):
    """Bytes must not overtake what the transport still holds."""
    a, b = pair
    assert send_now(transport(**state), a, b"frame") == b"frame"
    with pytest.raises(BlockingIOError):
        b.recv(100)


def test_what_the_kernel_does_not_take_is_returned(pair):
    a, b = pair
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    data = bytes(range(256)) * 4096  # 1 MiB, far beyond the buffers
    rest = send_now(transport(), a, data)
    assert 0 < len(rest) < len(data)
    assert data.endswith(rest)


def test_a_socket_error_leaves_it_to_the_transport(pair):
    a, b = pair
    b.close()
    a.close()
    assert send_now(transport(), a, b"frame") == b"frame"
