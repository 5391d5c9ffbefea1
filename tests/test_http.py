"""Who may call the app-facing API: the bearer secret, or loopback only
when no secret is configured."""

from __future__ import annotations

import pytest
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.web.test.requesthelper import DummyRequest

from chloed.http import _authorized, is_loopback


def request(address, authorization: bytes | None = None) -> DummyRequest:
    req = DummyRequest([b"send"])
    req.client = address
    if authorization is not None:
        req.requestHeaders.setRawHeaders(b"authorization", [authorization])
    return req


@pytest.mark.parametrize(
    "address, allowed",
    [
        (IPv4Address("TCP", "127.0.0.1", 5000), True),
        (IPv4Address("TCP", "127.8.9.10", 5000), True),
        (IPv6Address("TCP", "::1", 5000), True),
        (IPv6Address("TCP", "::ffff:127.0.0.1", 5000), True),
        (IPv6Address("TCP", "::ffff:10.0.0.7", 5000), False),
        (UNIXAddress(b"/run/chloe.sock"), True),
        (IPv4Address("TCP", "10.0.0.7", 5000), False),
        (IPv4Address("TCP", "192.168.1.2", 5000), False),
        (IPv6Address("TCP", "2001:db8::1", 5000), False),
    ],
)
def test_without_a_secret_only_loopback_may_call(address, allowed):
    """With no secret configured, only clients on this machine are let in."""
    assert is_loopback(request(address)) is allowed
    assert _authorized(request(address), ()) is allowed


@pytest.mark.parametrize(
    "header, allowed",
    [
        (b"Bearer s3cret", True),
        (b"bearer s3cret", True),
        (b"Bearer old-one", True),
        (b"Bearer wrong", False),
        (b"Basic s3cret", False),
        (b"s3cret", False),
        (None, False),
    ],
)
def test_with_a_secret_only_the_bearer_counts(header, allowed):
    """With secrets configured, loopback is not enough: any configured secret as the bearer is."""
    address = IPv4Address("TCP", "127.0.0.1", 5000)
    assert _authorized(request(address, header), ("s3cret", "old-one")) is allowed
