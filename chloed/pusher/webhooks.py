"""Pusher webhooks, through Chloe's relay (:class:`chloed.relay.Relay`).

Each app with a ``webhook_url`` has a relay of its own: a bounded queue,
retries with backoff, a lane per channel (so an app hears each channel's
events in order) and a delivery id per event that stays the same across
retries. The events that become ready in one reactor turn go in one POST,
Pusher's body ``{"time_ms", "events": [...]}``, each event with its
``"delivery"`` id beside Pusher's fields, signed with ``X-Pusher-Key`` and
``X-Pusher-Signature`` (the hex HMAC-SHA256 of the body with the app's
secret), which the Pusher server libraries' webhook validators check.

An event the app cannot take after the last retry, or that finds the queue
full, is counted (``failed`` in ``/status``'s ``pusher.webhooks``, and
``chloe_pusher_webhooks_failed_total``) and logged, never dropped silently.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from chloed import frames
from chloed.pusher.apps import PusherApp
from chloed.pusher.auth import webhook_signature
from chloed.relay import Relay
from chloed.spool.memory import MemorySpool

log = Logger()

#: Events per POST at most (Pusher batches its webhooks too).
WEBHOOK_BATCH = 50

_JSON = [b"application/json"]
_AGENT = [b"chloed"]


class WebhookRelay(Relay):
    """A relay whose POSTs are Pusher webhooks of one app."""

    def __init__(self, app: PusherApp, http: Any, clock: IReactorTime, timeout: float, retries: int,
                 queue_size: int) -> None:
        assert app.webhook_url is not None
        # (Kept in memory, no dead letters: a webhook given up on is logged
        # and counted where it is made, Webhooks._failed.)
        super().__init__(http, app.webhook_url, (), clock, timeout, retries, queue_size, batch=WEBHOOK_BATCH,
                         spool=MemorySpool(dead_limit=0))
        self.app = app
        self._key = [app.key.encode("ascii")]

    def batch_request(self, items: list[bytes], now: float) -> tuple[bytes, dict[bytes, list[bytes]]]:
        """Pusher's webhook body around the events, signed with the app's secret."""
        body = b'{"time_ms":%d,"events":[' % int(now * 1000) + b",".join(items) + b"]}"
        headers = {
            b"Content-Type": _JSON,
            b"User-Agent": _AGENT,
            b"X-Pusher-Key": self._key,
            b"X-Pusher-Signature": [webhook_signature(self.app, body)],
            b"X-Chloe-Batch": [b"%d" % len(items)],
        }
        return body, headers


class Webhooks:
    """What each app hears of its channels, by webhook.

    :param http: the relay's HTTP client (:class:`chloed.relay.AppClient`).
    """

    def __init__(self, apps: tuple[PusherApp, ...], http: Any, clock: IReactorTime, timeout: float,
                 retries: int, queue_size: int) -> None:
        self.relays: dict[str, WebhookRelay] = {
            app.id: WebhookRelay(app, http, clock, timeout, retries, queue_size)
            for app in apps if app.webhook_url is not None and app.webhook_events
        }
        #: Events handed to the relays (each is then delivered, retried or
        #: counted as failed by its relay).
        self.sent = 0

    def _send(self, app: PusherApp, lane: str, event: dict[str, Any]) -> None:
        relay = self.relays.get(app.id)
        if relay is None or event["name"] not in app.webhook_events:
            return
        self.sent += 1
        relay.submit(lane, frames.dumps(event)).addErrback(self._failed, app, event["name"])

    def _failed(self, failure: Any, app: PusherApp, name: str) -> None:
        log.warn("pusher: {name} webhook of app {app} not delivered: {why}",
                 name=name, app=app.id, why=failure.getErrorMessage())

    def occupied(self, app: PusherApp, channel: str) -> None:
        self._send(app, channel, {"name": "channel_occupied", "channel": channel})

    def vacated(self, app: PusherApp, channel: str) -> None:
        self._send(app, channel, {"name": "channel_vacated", "channel": channel})

    def member(self, app: PusherApp, channel: str, joined: bool, user_id: str) -> None:
        name = "member_added" if joined else "member_removed"
        self._send(app, channel, {"name": name, "channel": channel, "user_id": user_id})

    def cache_miss(self, app: PusherApp, channel: str) -> None:
        self._send(app, channel, {"name": "cache_miss", "channel": channel})

    def client_event(self, app: PusherApp, channel: str, event: str, data: Any, socket_id: str,
                     user_id: str | None) -> None:
        body: dict[str, Any] = {
            "name": "client_event", "channel": channel, "event": event,
            "data": data if isinstance(data, str) else frames.dumps(data).decode("utf-8"),
            "socket_id": socket_id,
        }
        if user_id is not None:
            body["user_id"] = user_id
        self._send(app, channel, body)

    # -- counters -------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Per app: delivered, retries, failed, queued (``/status``)."""
        return {
            app_id: {
                "delivered": relay.stats.delivered, "retries": relay.stats.retries,
                "failed": relay.stats.failures, "rejected": relay.stats.rejections, "queued": relay.queued,
            }
            for app_id, relay in self.relays.items()
        }

    def when_idle(self) -> Deferred[Any]:
        """Fires once no webhook is queued or in flight (a graceful drain)."""
        return gatherResults([relay.when_idle() for relay in self.relays.values()])
