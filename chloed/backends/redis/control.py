"""What the app tells the whole cluster (:class:`Control`): commands every
node runs (``POST /disconnect``, ``/subscribe``, ``/unsubscribe``,
``/revoke``), and the tokens it revoked.

A command goes out on everyone's pub/sub channel ``chloe:<db>:all`` as
``"k <command JSON>"`` (a message to every session there starts with its
id, a digit), so each node, this one too, hands it to its handler (the hub)
once it arrives. :data:`CONTROL_SCRIPT` counts the sessions it targets on
the nodes alive and publishes it in one step: the count is what the
command found.

``chloe:rv:j:<jti>``
    a token refused until when (ms), the key expiring then.
``chloe:rv:u:<user>``
    the user's tokens issued before when (epoch seconds) are refused; kept
    :data:`~chloed.backends.users.USER_REVOCATION_SECONDS`.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from chloed import frames
from chloed.backends.redis.keys import (
    NODES_KEY, REVOKED_JTI_PREFIX, REVOKED_USER_PREFIX, SESSION_PREFIX, USERS_PREFIX,
)
from chloed.backends.redis.link import Call
from chloed.backends.redis.scripts import CONTROL_SCRIPT, REVOKE_SCRIPT
from chloed.backends.users import USER_REVOCATION_SECONDS

log = Logger(namespace="chloed.backends.redis")

#: The first two bytes of a command on everyone's channel.
KIND = b"k "


class Control:
    """This node's side of the app's commands and revocations.

    :param clock: what ``now`` is for a user revocation without ``before``.
    :param call: sends a command to Redis.
    :param pubsub: the prefix of the pub/sub channels (``chloe:<db>:``).
    :param node: this node's name.
    """

    def __init__(self, clock: IReactorTime, *, call: Call, pubsub: str, node: str) -> None:
        self._clock = clock
        self._call = call
        self._channel = pubsub + "all"
        self._node = node
        self.handler: Callable[[dict[str, Any]], None] | None = None

    # -- commands -----------------------------------------------------------

    def send(self, command: dict[str, Any]) -> Deferred[int]:
        """Have every node run ``command``; fires with how many sessions
        it targets (a ``session``: 1 if a node alive holds it; a ``user``:
        its sessions on the nodes alive; else 0), counted as it went out."""
        if "session" in command:
            kind, key = "session", SESSION_PREFIX + str(command["session"])
        elif "user" in command:
            kind, key = "user", USERS_PREFIX + str(command["user"])
        else:
            kind, key = "", ""
        keys = [NODES_KEY] + ([key] if key else [])
        args = [self._channel, KIND + frames.dumps(command), kind, self._node]
        return self._call("eval", CONTROL_SCRIPT, keys, args).addCallback(int)

    def kinds(self) -> dict[bytes, Callable[[bytes], None]]:
        """What takes a command on everyone's channel."""
        return {KIND: self._received}

    def _received(self, payload: bytes) -> None:
        if self.handler is None:
            log.debug("redis: a command came before the hub took them")
            return
        try:
            command = frames.loads(payload[len(KIND):])
        except ValueError:
            log.failure("redis: a command that is not JSON")
            return
        self.handler(command)

    # -- revocations --------------------------------------------------------

    def revoke(self, jti: str | None, user: str | None, before: float | None, until: float) -> Deferred[None]:
        """Refuse the token ``jti`` until ``until`` (the latest given), and
        ``user``'s tokens issued before ``before`` (now when None)."""
        writes = []
        if jti is not None:
            writes.append(self._call("eval", REVOKE_SCRIPT, [REVOKED_JTI_PREFIX + jti], [int(until * 1000)]))
        if user is not None:
            when = before if before is not None else self._clock.seconds()
            writes.append(self._call("set", REVOKED_USER_PREFIX + user, repr(float(when)), USER_REVOCATION_SECONDS))
        return gatherResults(writes, consumeErrors=True).addCallbacks(lambda _: None, _first_error)

    def revoked(self, jti: str | None, user: str, iat: float) -> Deferred[bool]:
        """Whether a token (its ``jti``, ``sub`` and ``iat``; no ``sub``,
        ``""``, for a channel token) was revoked: one ``MGET``."""
        keys = ([REVOKED_JTI_PREFIX + jti] if jti is not None else []) + ([REVOKED_USER_PREFIX + user] if user else [])
        if not keys:
            return succeed(False)

        def answer(values: list[Any]) -> bool:
            if jti is not None and values[0] is not None:
                return True
            before = values[-1] if user else None
            return before is not None and iat < float(before)

        return self._call("mget", keys).addCallback(answer)


def _first_error(failure: Any) -> Any:
    """A failed write of several: its own failure, not gatherResults' wrapper."""
    return failure.value.subFailure
