"""The two connections to Redis (commands, pub/sub) as txredisapi protocols,
and the service that keeps them up while the server runs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import txredisapi
from twisted.application.service import Service
from twisted.internet import protocol
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

if TYPE_CHECKING:
    from chloed.backends.redis.broker import RedisBroker

log = Logger(namespace="chloed.backends.redis")  # as before redis.py became a package


class _TellsWhenLost:
    """Mixed into a txredisapi protocol: tells its factory (and so the
    broker) when the connection goes, whatever txredisapi does about it."""

    factory: Any

    def connectionLost(self, why: Failure) -> None:
        try:
            super().connectionLost(why)  # type: ignore[misc]
        finally:
            self.factory.lost(self)


class _Commands(_TellsWhenLost, txredisapi.RedisProtocol):
    """The connection for commands."""


class _Subscriptions(_TellsWhenLost, txredisapi.SubscriberProtocol):
    """The pub/sub connection; hands every message to the broker."""

    def messageReceived(self, pattern: Any, channel: bytes, message: bytes) -> None:
        try:
            self.factory.broker._on_message(channel, message)
        except Exception:
            log.failure("a message from Redis on {channel} could not be delivered", channel=channel)


class _Factory(protocol.Factory):
    """Builds one kind of connection; txredisapi's protocols expect a factory
    with ``stopTrying``, ``connectionError`` and ``isLazy``."""

    isLazy = True
    noisy = False

    def __init__(self, broker: "RedisBroker", proto: type, dbid: int | None, timeout: float | None) -> None:
        self.broker = broker
        self.proto = proto
        self.dbid = dbid
        self.timeout = timeout

    def buildProtocol(self, addr: Any) -> Any:
        proto = self.proto(None, replyTimeout=self.timeout, dbid=self.dbid, convertNumbers=False)
        proto.factory = self
        proto.whenConnected().addCallback(self.ready)
        return proto

    def ready(self, proto: Any) -> None:
        if self.proto is _Commands:
            self.broker._commands_ready(proto)
        else:
            self.broker._subscriptions_ready(proto)

    def lost(self, proto: Any) -> None:
        if self.proto is _Commands:
            self.broker._commands_lost(proto)
        else:
            self.broker._subscriptions_lost(proto)

    def stopTrying(self) -> None:
        """Called by txredisapi when ``SELECT`` fails: it logs it."""

    def connectionError(self, why: str) -> None:
        log.error("redis: {why}", why=why)


class _Connector(Service):
    """Keeps the broker's two connections to Redis up (reconnecting with
    backoff) while the server runs."""

    def __init__(self, broker: "RedisBroker") -> None:
        self.broker = broker

    def startService(self) -> None:
        super().startService()
        self.broker.connect()

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        return self.broker.disconnect()
