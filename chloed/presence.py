"""Who is in a ``presence-`` channel.

A member is a user (the ``user`` of the session's token), not a session: a
user with three tabs open joins once, when the first tab subscribes, and
leaves once, ``session_grace`` seconds after the last tab went away (a page
reload does not make everyone see a leave and a join). A long-poll tab is
away from its last poll on: its session ends ``session_grace`` later, and
its member leaves then, not a second grace after. ``join`` and
``leave`` frames go to the channel's other subscribers.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from chloed import frames
from chloed.frames import Encoded


def presence_frame(channel: str, event: str, member: dict[str, Any]) -> Encoded:
    return frames.encode({"type": "presence", "channel": channel, "event": event, "member": member})


class _Member:
    __slots__ = ("info", "sessions", "leaving")

    def __init__(self, info: Any) -> None:
        self.info = info
        self.sessions: set[str] = set()
        self.leaving: IDelayedCall | None = None


class Presence:
    """Members of every presence channel of this process.

    :param announce: ``announce(channel, frame, exclude_session)`` sends a
        frame to the channel's subscribers.
    :param grace: ``session_grace``: how long a member stays after its last
        session left.
    """

    def __init__(self, clock: IReactorTime, grace: float, announce: Callable[[str, Encoded, str | None], None]) -> None:
        self._clock = clock
        self._grace = grace
        self._announce = announce
        self._channels: dict[str, dict[str, _Member]] = {}

    def members(self, channel: str) -> list[dict[str, Any]]:
        """The members of ``channel``, as ``{"id", "info"}``."""
        return [{"id": uid, "info": m.info} for uid, m in self._channels.get(channel, {}).items()]

    def join(self, channel: str, session: str, user: dict[str, Any]) -> None:
        """``session`` of ``user`` subscribed to ``channel``."""
        uid = str(user["id"])
        members = self._channels.setdefault(channel, {})
        member = members.get(uid)
        if member is None:
            member = members[uid] = _Member(user.get("info"))
            member.sessions.add(session)
            self._announce(channel, presence_frame(channel, "join", {"id": uid, "info": member.info}), session)
            return
        member.sessions.add(session)
        if member.leaving is not None:
            member.leaving.cancel()
            member.leaving = None

    def part(self, channel: str, session: str, user: dict[str, Any], away: bool = False) -> None:
        """``session`` left ``channel``; the member leaves after the grace
        if it was its last session there, or at once when ``away`` (the
        session had already been gone for the grace: a long-poll session
        that expired)."""
        uid = str(user["id"])
        member = self._channels.get(channel, {}).get(uid)
        if member is None or session not in member.sessions:
            return
        member.sessions.discard(session)
        if member.sessions:
            return
        if away:
            if member.leaving is not None:
                member.leaving.cancel()
                member.leaving = None
            self._leave(channel, uid)
        elif member.leaving is None:
            member.leaving = self._clock.callLater(self._grace, self._leave, channel, uid)

    def _leave(self, channel: str, uid: str) -> None:
        members = self._channels.get(channel, {})
        member = members.pop(uid, None)
        if not members:
            self._channels.pop(channel, None)
        if member is not None:
            self._announce(channel, presence_frame(channel, "leave", {"id": uid, "info": member.info}), None)
