"""What every browser-facing HTTP endpoint does alike: check ``Origin``
against ``allowed_origins``, answer CORS, forbid caching, validate JSONP
callbacks, and answer a method or path it does not serve with a JSON error
(written as every endpoint writes them: :mod:`chloed.http`)."""

from __future__ import annotations

import re
from typing import Any

from twisted.web.error import UnsupportedMethod
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource

from chloed.http import error, json_error_body, method_not_allowed, origin_allowed

CALLBACK_RE = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]{0,63}(?:\.[A-Za-z_$][A-Za-z0-9_$]{0,63})*")
MAX_CALLBACK_CHARS = 255


def request_origin(request: IRequest) -> str | None:
    value = request.getHeader(b"origin")
    return value.decode("latin-1") if value is not None else None


def browser_headers(request: IRequest, allowed: tuple[str, ...]) -> bool:
    """Set CORS and no-cache headers; False (and 403 set) when the origin
    is not allowed."""
    origin = request_origin(request)
    request.setHeader(b"cache-control", b"no-store")
    if not origin_allowed(origin, allowed):
        error(request, 403, "forbidden_origin", f"origin {origin} is not allowed")
        return False
    if origin is not None:
        request.setHeader(b"access-control-allow-origin", origin.encode("latin-1"))
        request.setHeader(b"access-control-allow-credentials", b"true")
        request.setHeader(b"vary", b"Origin")
    return True


def preflight(request: IRequest, allowed: tuple[str, ...]) -> bytes:
    """Answer a CORS preflight ``OPTIONS`` request."""
    if browser_headers(request, allowed):
        request.setResponseCode(204)
        request.setHeader(b"access-control-allow-methods", b"GET, POST, OPTIONS")
        request.setHeader(b"access-control-allow-headers", b"Content-Type, Last-Event-ID")
        request.setHeader(b"access-control-max-age", b"600")
        return b""
    return json_error_body("forbidden_origin", "origin not allowed")


class JsonMethodsResource(Resource):
    """A resource that answers a method it does not serve with
    :func:`method_not_allowed`, not twisted.web's HTML 405 (or its 501 for
    a method twisted.web does not know). ``HEAD`` is served as ``GET``
    unless ``serves_head`` is False."""

    serves_head = True

    def render(self, request: Any) -> Any:
        try:
            if request.method == b"HEAD" and not (self.serves_head and hasattr(self, "render_GET")):
                # Resource.render_HEAD would call render_GET.
                raise UnsupportedMethod(self._allowed())
            return super().render(request)
        except UnsupportedMethod:
            return method_not_allowed(request, self._allowed())

    def _allowed(self) -> list[bytes]:
        methods = sorted(name[len("render_"):] for name in dir(self) if name.startswith("render_"))
        if not (self.serves_head and "GET" in methods):
            methods.remove("HEAD")
        return [m.encode("ascii") for m in methods]


class BrowserResource(JsonMethodsResource):
    """A browser endpoint: a method it does not serve is answered with a
    JSON ``405`` and ``Allow``, like its other errors.

    ``HEAD`` is one of those: every browser endpoint opens a session or
    acts on one, and a ``HEAD`` rendered as ``GET`` would do so (an SSE
    stream held open and counted as a delivery) with nothing to show for
    it.
    """

    serves_head = False

    def getChild(self, path: bytes, request: Any) -> Resource:
        """A path below the endpoint that names nothing (``/poll/x``): a
        JSON 404 like the API's, not twisted.web's HTML page."""
        return _NOT_FOUND


class _NotFound(Resource):
    isLeaf = True

    def render(self, request: Any) -> bytes:
        return error(request, 404, "not_found", "no such endpoint")


_NOT_FOUND = _NotFound()


def valid_callback(name: str) -> bool:
    """JSONP callback names of SPEC section 3: identifiers, dots between."""
    return len(name) <= MAX_CALLBACK_CHARS and CALLBACK_RE.fullmatch(name) is not None


def client_host(request: IRequest) -> str | None:
    """The address a request came from (None for a UNIX socket's peer)."""
    host = getattr(request.getClientAddress(), "host", None)
    return host if isinstance(host, str) else None


def session_options(request: IRequest, max_per_ip: int) -> dict[str, Any]:
    """What a URL that opens a session says of it beyond its channels: the
    client's address (when counted per IP), the page's origin, and a
    connection token with the user cursor of a reconnecting tab."""
    since = arg(request, b"user_since")
    return {
        "ip": client_host(request) if max_per_ip else None,
        "origin": request_origin(request),
        "token": arg(request, b"token"),
        "user_since": since if since is not None and 0 < len(since) <= 64 else None,
    }


def arg(request: IRequest, name: bytes) -> str | None:
    """The first value of a query argument, decoded, or None."""
    values = request.args.get(name)
    if not values:
        return None
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        return None


def args(request: IRequest, name: bytes) -> list[str] | None:
    """Every value of a query argument; None if one is not UTF-8."""
    try:
        return [v.decode("utf-8") for v in request.args.get(name, [])]
    except UnicodeDecodeError:
        return None
