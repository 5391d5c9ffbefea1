"""Pusher channel names, and where they live in the backend.

An app's channel ``C`` is the backend channel ``pusher~<app id>~C``. ``~``
is in no Chloe-native channel name (nor in any Pusher one), so no native
browser or ``/send`` can reach an app's channels, and no app another's.
"""

from __future__ import annotations

import re

#: Pusher's channel names: letters, digits and ``_ - = @ , . ;``, and the
#: ``#server-to-user-<id>`` channel of a signed-in user.
CHANNEL_RE = re.compile(r"#?[A-Za-z0-9_\-=@,.;]{1,200}", re.ASCII)
MAX_CHANNEL_CHARS = 200
USER_PREFIX = "#server-to-user-"
PREFIX = "pusher~"


def valid(channel: object) -> bool:
    """Whether ``channel`` is a channel name Pusher allows."""
    if not isinstance(channel, str) or not CHANNEL_RE.fullmatch(channel):
        return False
    if channel.startswith("#"):
        return channel.startswith(USER_PREFIX) and len(channel) > len(USER_PREFIX)
    return True


def backend(app_id: str, channel: str) -> str:
    """The backend's name of an app's channel."""
    return f"{PREFIX}{app_id}~{channel}"


def app_prefix(app_id: str) -> str:
    """What every backend name of ``app_id``'s channels starts with."""
    return f"{PREFIX}{app_id}~"


def pusher_name(backend_name: str) -> str:
    """The app's name of a backend channel (:func:`backend` undone)."""
    return backend_name[backend_name.index("~", len(PREFIX)) + 1:]


def app_id(backend_name: str) -> str:
    """The app whose channel ``backend_name`` is."""
    return backend_name[len(PREFIX):backend_name.index("~", len(PREFIX))]


def is_pusher(backend_name: str) -> bool:
    """Whether a backend channel is some app's (native listings leave them out)."""
    return backend_name.startswith(PREFIX)


def private(channel: str) -> bool:
    """Needs the app's signature to subscribe (private-, presence-, and
    private-encrypted-)."""
    return channel.startswith("private-") or channel.startswith("presence-")


def presence(channel: str) -> bool:
    return channel.startswith("presence-")


def encrypted(channel: str) -> bool:
    return channel.startswith("private-encrypted-")


def cached(channel: str) -> bool:
    """A cache channel: a new subscriber gets the last event at once."""
    return (
        channel.startswith("cache-") or channel.startswith("private-cache-")
        or channel.startswith("presence-cache-") or channel.startswith("private-encrypted-cache-")
    )


def user_channel(user_id: str) -> str:
    return USER_PREFIX + user_id
