"""Unit tests of chloed.transports.longpoll that need no server."""

from __future__ import annotations

import pytest

from chloed.transports.longpoll import parse_cursor


@pytest.mark.parametrize("text,cursor", [("0", 0), ("7", 7), ("0012", 12), ("9" * 20, int("9" * 20))])
def test_cursor_is_ascii_digits(text, cursor):
    assert parse_cursor(text) == cursor


@pytest.mark.parametrize(
    "text",
    [None, "", " 1", "1 ", "+1", "-1", "1.5", "0x1", "1e3", "abc", "²", "٣", "１", "1" * 21, "9" * 5000],
)
def test_bad_cursor_is_none(text):
    """Anything but up to 20 ASCII digits is refused (``"²".isdigit()`` is
    true, yet ``int("²")`` raises; so does ``int`` of 5000 digits)."""
    assert parse_cursor(text) is None
