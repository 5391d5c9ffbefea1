"""The two connections of one node to Redis (:class:`RedisLink`): one for
commands, one for pub/sub.

The link opens both, opens each again (with backoff) when it is lost, and
says when each comes and goes through the callbacks it is given; the
pub/sub connection counts as up once Redis has confirmed the node's own
channels on it. It knows Redis and txredisapi, nothing of channels or
sessions: the broker that uses it gives it callbacks, it never calls the
broker.

A command that goes unanswered for :data:`REPLY_TIMEOUT` drops the command
connection (txredisapi's ``replyTimeout``). The pub/sub connection only
waits, so it cannot tell by itself that it went half-dead: its own SUBSCRIBE
is given :data:`REPLY_TIMEOUT` too, and after that its messages are watched
by :mod:`.liveness`, which calls :meth:`RedisLink.reset_pubsub`.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import txredisapi
from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet import defer, protocol
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from chloed.backends.base import BackendUnavailable

log = Logger(namespace="chloed.backends.redis")  # as before redis.py became a package

REPLY_TIMEOUT = 5.0
RETRY_DELAY = 0.5

#: ``call(command, *args)``: a command on the command connection, as
#: :meth:`RedisLink.call` sends it.
Call = Callable[..., Deferred[Any]]
#: An errback for commands sent without waiting (:func:`ignore`).
Ignore = Callable[[Failure], None]


def ignore(failure: Failure) -> None:
    """For commands sent without waiting: Redis being away is expected
    (they are sent again when it is back); anything else is logged."""
    if not failure.check(BackendUnavailable, txredisapi.ConnectionError):
        log.failure("redis: a command failed", failure)


def _unavailable(failure: Failure) -> Failure:
    if failure.check(txredisapi.ConnectionError, ConnectionError):
        raise BackendUnavailable(failure.getErrorMessage())
    if failure.check(txredisapi.ResponseError):
        raise BackendUnavailable("Redis answered: " + failure.getErrorMessage())
    return failure


def _nothing() -> None:
    """A state change nobody listens to."""


class _TellsWhenLost:
    """Mixed into a txredisapi protocol: tells its factory (and so the
    link) when the connection goes, whatever txredisapi does about it."""

    factory: Any

    def connectionLost(self, why: Failure) -> None:
        try:
            super().connectionLost(why)  # type: ignore[misc]  # a mixin: super() is txredisapi's protocol
        finally:
            self.factory.lost(self)


class _Commands(_TellsWhenLost, txredisapi.RedisProtocol):
    """The connection for commands."""


class _Subscriptions(_TellsWhenLost, txredisapi.SubscriberProtocol):
    """The pub/sub connection; hands every message to its factory's
    ``on_message``."""

    def messageReceived(self, pattern: Any, channel: bytes, message: bytes) -> None:
        try:
            self.factory.on_message(channel, message)
        except Exception:
            log.failure("a message from Redis on {channel} could not be delivered", channel=channel)


class _Factory(protocol.Factory):
    """Builds one kind of connection; txredisapi's protocols expect a factory
    with ``stopTrying``, ``connectionError`` and ``isLazy``.

    :param ready: called with each connection once it is usable.
    :param lost: called with each connection that went.
    """

    isLazy = True
    noisy = False

    def __init__(
        self,
        proto: type,
        dbid: int | None,
        timeout: float | None,
        ready: Callable[[Any], None],
        lost: Callable[[Any], None],
        on_message: Callable[[bytes, bytes], None] | None = None,
    ) -> None:
        self.proto = proto
        self.dbid = dbid
        self.timeout = timeout
        self.ready = ready
        self.lost = lost
        self.on_message = on_message

    def buildProtocol(self, addr: Any) -> Any:
        proto = self.proto(None, replyTimeout=self.timeout, dbid=self.dbid, convertNumbers=False)
        proto.factory = self
        proto.whenConnected().addCallback(self.ready)
        return proto

    def stopTrying(self) -> None:
        """Called by txredisapi when ``SELECT`` fails: it logs it."""

    def connectionError(self, why: str) -> None:
        log.error("redis: {why}", why=why)


class RedisLink:
    """A node's connections to Redis: commands and pub/sub.

    :param reactor: connects, and times the retries.
    :param channels: pub/sub channels subscribed on every pub/sub
        connection (the node's own): the link is up once Redis confirmed
        them.
    :param on_message: ``(channel, payload)`` of each pub/sub message.
    :param on_commands_up: the command connection is there (again).
    :param on_commands_down: it went.
    :param on_pubsub_up: the pub/sub connection is there (again), or
        subscribing the node's own channels failed and is tried again: the
        caller subscribes its own channels on it.
    :param on_pubsub_down: it went (subscriptions went with it).
    """

    def __init__(
        self,
        reactor: Any,
        host: str,
        port: int,
        db: int,
        *,
        channels: Sequence[str],
        on_message: Callable[[bytes, bytes], None],
        on_commands_up: Callable[[], None] = _nothing,
        on_commands_down: Callable[[], None] = _nothing,
        on_pubsub_up: Callable[[], None] = _nothing,
        on_pubsub_down: Callable[[], None] = _nothing,
    ) -> None:
        self._reactor = reactor
        self.host, self.port, self.db = host, port, db
        self._base = list(channels)
        self._on_message = on_message
        self._on_commands_up = on_commands_up
        self._on_commands_down = on_commands_down
        self._on_pubsub_up = on_pubsub_up
        self._on_pubsub_down = on_pubsub_down
        # The txredisapi protocols while connected (None while not).
        self.commands: Any = None
        self.subscriptions: Any = None
        self._base_confirmed = False
        # Drops a pub/sub connection whose SUBSCRIBE goes unanswered.
        self._confirm_timer: Any = None
        self._services: list[ClientService] = []
        self.stopping = False

    @property
    def up(self) -> bool:
        """Whether both connections are, the node's own channels subscribed."""
        return self.commands is not None and self.subscriptions is not None and self._base_confirmed

    def connect(self) -> None:
        """Open both connections; they come back by themselves when lost."""
        policy = backoffPolicy(initialDelay=0.1, maxDelay=2.0, factor=2.0)
        factories = (
            _Factory(_Commands, self.db, REPLY_TIMEOUT, self._commands_ready, self._commands_lost),
            _Factory(_Subscriptions, None, None, self._pubsub_ready, self._pubsub_lost, self._on_message),
        )
        for factory in factories:
            endpoint = HostnameEndpoint(self._reactor, self.host, self.port, timeout=5)
            service = ClientService(endpoint, factory, retryPolicy=policy, clock=self._reactor)
            self._services.append(service)
            service.startService()

    def disconnect(self) -> Deferred[Any]:
        """Close both connections for good; fires once they are closed."""
        services, self._services = self._services, []
        self.stopping = True
        self._cancel_confirm_timer()
        return defer.gatherResults([s.stopService() for s in services], consumeErrors=True)

    def call(self, method: str, *args: Any) -> Deferred[Any]:
        """A command on the command connection; fails with
        :class:`BackendUnavailable` when there is none."""
        proto = self.commands
        if proto is None:
            return defer.fail(BackendUnavailable("not connected to Redis"))
        try:
            d = getattr(proto, method)(*args)
        except Exception as exc:
            return defer.fail(BackendUnavailable(str(exc)))
        return d.addErrback(_unavailable)

    def subscribe(self, names: list[str]) -> Deferred[Any]:
        """``SUBSCRIBE`` on the pub/sub connection; fires once confirmed."""
        return self._call_sub("subscribe", names)

    def unsubscribe(self, names: list[str]) -> Deferred[Any]:
        """``UNSUBSCRIBE`` on the pub/sub connection."""
        return self._call_sub("unsubscribe", names)

    def _call_sub(self, method: str, names: list[str]) -> Deferred[Any]:
        proto = self.subscriptions
        if proto is None:
            return defer.fail(BackendUnavailable("no pub/sub connection"))
        try:
            result: Deferred[Any] = getattr(proto, method)(names)
            return result
        except Exception as exc:
            return defer.fail(BackendUnavailable(str(exc)))

    def reset_pubsub(self, why: str) -> None:
        """Tear the pub/sub connection down (``abortConnection``: a
        half-dead socket would not answer a polite close); it is opened and
        subscribed again as if it had been lost, and ``on_pubsub_down`` and
        ``on_pubsub_up`` say so."""
        proto = self.subscriptions
        if proto is None or self.stopping or proto.transport is None:
            return
        log.warn("redis: {why}; dropping the pub/sub connection and subscribing again", why=why)
        proto.transport.abortConnection()

    def later(self, f: Callable[..., Any], *args: Any) -> None:
        """Try ``f`` again in a moment: Redis answered an error (it may be
        loading its data after a restart). Not once the link is closing."""
        if not self.stopping:
            self._reactor.callLater(RETRY_DELAY, f, *args)

    # -- what the connections say -----------------------------------------

    def _commands_ready(self, proto: Any) -> None:
        log.info("redis: connected to {host}:{port}/{db}", host=self.host, port=self.port, db=self.db)
        self.commands = proto
        self._on_commands_up()

    def _commands_lost(self, proto: Any) -> None:
        if self.commands is proto:
            self.commands = None
            if not self.stopping:
                log.warn("redis: lost the connection for commands; /send answers 503 until it is back")
            self._on_commands_down()

    def _pubsub_ready(self, proto: Any) -> None:
        self.subscriptions = proto
        self._cancel_confirm_timer()
        self._confirm_timer = self._reactor.callLater(REPLY_TIMEOUT, self._base_unconfirmed, proto)
        self.subscribe(self._base).addCallbacks(
            self._base_subscribed, self._base_failed, callbackArgs=(proto,), errbackArgs=(proto,)
        )
        self._on_pubsub_up()

    def _base_subscribed(self, _: Any, proto: Any) -> None:
        if self.subscriptions is proto:
            self._cancel_confirm_timer()
            self._base_confirmed = True

    def _base_failed(self, failure: Failure, proto: Any) -> None:
        if self.subscriptions is proto:
            self._cancel_confirm_timer()
            log.warn("redis: SUBSCRIBE failed ({why}); trying again", why=failure.getErrorMessage())
            self.later(self._pubsub_ready, proto)

    def _base_unconfirmed(self, proto: Any) -> None:
        self._confirm_timer = None
        if self.subscriptions is proto and not self._base_confirmed:
            self.reset_pubsub(f"SUBSCRIBE went unanswered for {REPLY_TIMEOUT:g} s")

    def _cancel_confirm_timer(self) -> None:
        timer, self._confirm_timer = self._confirm_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _pubsub_lost(self, proto: Any) -> None:
        if self.subscriptions is not proto:
            return
        self.subscriptions = None
        self._base_confirmed = False
        self._cancel_confirm_timer()
        if not self.stopping:
            log.warn("redis: lost the pub/sub connection; resubscribing when it is back")
        self._on_pubsub_down()


class ConnectedWhileRunning(Service):
    """A service that keeps something connected while the server runs:
    ``connect()`` when it starts, ``disconnect()`` (waited on) when it
    stops."""

    def __init__(self, connect: Callable[[], None], disconnect: Callable[[], Deferred[Any]]) -> None:
        self._connect = connect
        self._disconnect = disconnect

    def startService(self) -> None:
        super().startService()
        self._connect()

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        return self._disconnect()
