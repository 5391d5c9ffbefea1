"""The app's view of the relay's dead letters: ``GET /relay/dead``,
``POST /relay/dead/replay``, ``DELETE /relay/dead/{id}`` (bearer).

A dead letter is a browser message or a lifecycle event the relay gave up
on: the app refused it (a 4xx other than 408 and 429), or it was retried
past ``upstream_retries`` or ``relay_ttl``. It stays, with why, until the
app replays it (it goes back to the queue, in its lane) or deletes it.
"""

from __future__ import annotations

import json
from typing import Any

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.web.iweb import IRequest

from chloed.errors import RequestError
from chloed.http import (
    INVALID_REQUEST, authorize, json_body, page_limit, query_arg, json_errors,
)
from chloed.relay import Relay
from chloed.spool.base import DeadLetter, Record

PAGE_DEFAULT = 100
PAGE_MAX = 1000
# A replay body is a list of ids: 1000 of them fit well within this.
REPLAY_BODY_MAX = 128 * 1024


def letter_json(letter: DeadLetter) -> dict[str, Any]:
    """A dead letter as the API shows it: the relayed body parsed back."""
    record = letter.record
    try:
        body = json.loads(record.body)
    except ValueError:  # (a body the relay made is always JSON)
        body = None
    return {
        "id": letter.id,
        "delivery": record.delivery.decode("ascii"),
        "kind": record.kind,
        "session": record.lane,
        "arrived": record.arrived,
        "died": letter.died,
        "attempts": record.attempt + 1,
        "status": letter.status,
        "reason": letter.reason,
        "body": body,
    }


class DeadLetterApi:
    """Klein routes over one relay (None: chloed has no application, and
    every route says so)."""

    app = Klein()
    json_errors(app)

    def __init__(self, relay: Relay | None, secrets: tuple[str, ...]) -> None:
        self.relay = relay
        self.secrets = secrets

    def resource(self) -> Any:
        return self.app.resource()


    def _relay(self, request: IRequest) -> Relay:
        authorize(request, self.secrets)
        if self.relay is None:
            raise RequestError(404, "no_application", "this server has no application_server_url")
        return self.relay

    @app.route("/relay/dead", methods=["GET"])
    def listing(self, request: IRequest) -> Deferred[bytes]:
        """A page of dead letters, oldest first; ``next`` is the ``after``
        of the next page."""
        relay = self._relay(request)
        limit = page_limit(request, PAGE_DEFAULT, PAGE_MAX)
        after = query_arg(request, b"after")
        return relay.dead_letters(limit, after).addCallback(self._page, relay, limit, request)

    def _page(self, letters: list[DeadLetter], relay: Relay, limit: int, request: IRequest) -> bytes:
        return json_body(request, 200, {
            "dead_letters": [letter_json(letter) for letter in letters],
            "next": letters[-1].id if len(letters) == limit else None,
            "count": relay.spool.dead_count(),
        })

    @app.route("/relay/dead/replay", methods=["POST"])
    def replay(self, request: IRequest) -> Deferred[bytes]:
        """Queue dead letters again: ``{"ids": [...]}`` or ``{"all": true}``."""
        relay = self._relay(request)
        body = request.content.read(REPLAY_BODY_MAX + 1)
        if len(body) > REPLAY_BODY_MAX:
            raise RequestError(413, "too_large", f"a replay body is at most {REPLAY_BODY_MAX} bytes")
        try:
            value = json.loads(body)
        except ValueError:
            raise RequestError(400, INVALID_REQUEST, "the body is not JSON") from None
        ids: list[str] | None
        if isinstance(value, dict) and value.get("all") is True and "ids" not in value:
            ids = None
        elif (isinstance(value, dict) and isinstance(value.get("ids"), list) and "all" not in value
              and all(isinstance(i, str) for i in value["ids"])):
            ids = value["ids"]
        else:
            raise RequestError(400, INVALID_REQUEST, 'the body is {"ids": [id, ...]} or {"all": true}')
        return relay.replay(ids).addCallback(self._replayed, request)

    def _replayed(self, records: list[Record], request: IRequest) -> bytes:
        return json_body(request, 200, {"replayed": len(records), "ids": [r.key for r in records]})

    @app.route("/relay/dead/<string:id>", methods=["DELETE"])
    def delete(self, request: IRequest, id: str) -> Deferred[bytes]:
        relay = self._relay(request)
        return relay.delete_dead(id).addCallback(self._deleted, id, request)

    def _deleted(self, found: bool, id: str, request: IRequest) -> bytes:
        if not found:
            raise RequestError(404, "not_found", f"no dead letter {id}")
        request.setResponseCode(204)
        return b""
