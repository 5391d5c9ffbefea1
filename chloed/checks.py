"""Checks of option values that ``config.py`` and ``pusher/apps.py`` share:
each returns the value, or raises :class:`~chloed.errors.ConfigError`
naming the option."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from chloed.errors import ConfigError


def http_url(name: str, value: Any) -> str | None:
    """An ``http://`` or ``https://`` URL with a host (and a port, if any,
    that is a number); None for none (absent or ``""``)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError(name, f"must be an http:// or https:// URL string, not {value!r}")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(name, f"must be an http:// or https:// URL, not {value!r}")
    try:
        parts.port
    except ValueError:
        raise ConfigError(name, f"bad port in {value!r}") from None
    return value
