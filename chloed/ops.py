"""The operator's HTTP endpoints: ``GET /status``, ``GET /metrics`` and
``GET /openapi.json``.

``/status`` (JSON) and ``/metrics`` (Prometheus text) say as much about the
server as ``/channels`` does, so they take the same bearer ``secret``; as
SPEC section 6 says, loopback clients may read them without it too (a
Prometheus or an agent on the same machine needs no copy of the secret).
``/openapi.json``, the description of the whole HTTP API, is public: it
holds nothing of this server.

With ``workers > 1``, ``/status`` and ``/metrics`` answer for the whole
server, whichever worker the request reaches, with a per-worker breakdown
(``Metrics.whole``: :mod:`chloed.worker_status` says how the numbers are
combined); ``/health`` stays each worker's own.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from klein import Klein
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from twisted.web.iweb import IRequest

from chloed.http import authorize, json_body, json_errors
from chloed.hub import Hub
from chloed.metrics import Metrics

#: The paths this module answers; everything else goes to the app's API.
PATHS = (b"status", b"metrics", b"openapi.json")


def openapi_document() -> bytes:
    """``chloed/openapi.json``, shipped with the package."""
    return (resources.files("chloed") / "openapi.json").read_bytes()


class Ops:
    """Klein routes of the operator's endpoints, bound to one hub."""

    app = Klein()
    json_errors(app)

    def __init__(self, hub: Hub, metrics: Metrics) -> None:
        self.hub = hub
        self.metrics = metrics
        self._openapi = openapi_document()

    def resource(self) -> Any:
        return self.app.resource()

    def _authorize(self, request: IRequest) -> None:
        authorize(request, self.hub.config.secret, loopback=True)

    @app.route("/status", methods=["GET"])
    def status(self, request: IRequest) -> bytes:
        self._authorize(request)
        request.setHeader(b"cache-control", b"no-store")
        return json_body(request, 200, self.metrics.status())

    @app.route("/metrics", methods=["GET"])
    def prometheus(self, request: IRequest) -> bytes:
        self._authorize(request)
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return self.metrics.exposition()

    @app.route("/openapi.json", methods=["GET"])
    def openapi(self, request: IRequest) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"access-control-allow-origin", b"*")
        return self._openapi

