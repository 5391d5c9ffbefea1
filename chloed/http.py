"""What every HTTP endpoint of Chloe does alike: who may call it, and how
its answers and errors are written.

Who may call: the app's API (``/send``, ``/channels``) takes the bearer
``secret``, compared in constant time; with no secret configured it answers
loopback clients only. The operator's views (``/status``, ``/metrics``, the
status page) take the same check and let loopback through as well
(SPEC section 6). :func:`authorize` is that one check for both.

How answers are written: JSON with its status, and errors as
``{"error": code, "message": text}``.
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Any

from twisted.logger import Logger
from twisted.web.iweb import IRequest
from werkzeug.exceptions import MethodNotAllowed, NotFound

from chloed import frames
from chloed.errors import RequestError

log = Logger(namespace="chloed.api")  # as when api.py answered refusals


def is_loopback(request: IRequest) -> bool:
    """Whether the request comes from this machine."""
    host = getattr(request.getClientAddress(), "host", None)
    if host is None:
        # A UNIX socket: only local processes can reach it.
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    # On a dual-stack IPv6 socket, 127.0.0.1 arrives as ::ffff:127.0.0.1.
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def _authorized(request: IRequest, secrets: tuple[str, ...]) -> bool:
    """The app API's rule: any of ``secrets`` as the bearer, or loopback
    when there are none."""
    if not secrets:
        return is_loopback(request)
    header = request.getHeader(b"authorization") or b""
    scheme, _, given = header.partition(b" ")
    if scheme.lower() != b"bearer":
        return False
    ok = False
    for secret in secrets:
        # Every secret is compared, so timing says nothing of which matched.
        ok |= hmac.compare_digest(given.strip(), secret.encode("utf-8"))
    return ok


def authorize(request: IRequest, secrets: tuple[str, ...], *, loopback: bool = False) -> None:
    """Refuse ``request`` unless it may call: ``401`` with a ``Bearer``
    challenge when a secret is configured, ``403`` when none is.

    :param secrets: the configured ``secret`` values (the first one, and
        those being rotated out).
    :param loopback: let loopback clients through even when a secret is
        configured, as the operator's views do.
    :raises RequestError: the refusal, to answer with
        :func:`answer_request_error`.
    """
    if (loopback and is_loopback(request)) or _authorized(request, secrets):
        return
    if secrets:
        request.setHeader(b"www-authenticate", b'Bearer realm="chloe"')
        raise RequestError(401, "unauthorized", "a valid Authorization: Bearer secret is required")
    raise RequestError(403, "forbidden", "with no secret configured only loopback clients may call the API")


#: The error code of a query parameter the app's API cannot use.
INVALID_REQUEST = "invalid_request"


def query_arg(request: IRequest, name: bytes) -> str | None:
    """The query parameter ``name`` of an app's API call, None when absent.

    :raises RequestError: 400 when it is given twice or is not UTF-8.
    """
    values = (request.args or {}).get(name)
    if not values:
        return None
    if len(values) > 1:
        raise RequestError(400, INVALID_REQUEST, f"{name.decode()} is given more than once")
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError(400, INVALID_REQUEST, f"{name.decode()} is not UTF-8") from None


def page_limit(request: IRequest, default: int, maximum: int) -> int:
    """``?limit=`` of a paged listing: ``default`` when absent.

    :raises RequestError: 400 unless a whole number from 1 to ``maximum``.
    """
    text = query_arg(request, b"limit")
    if text is None:
        return default
    if not (text.isascii() and text.isdigit() and len(text) <= 9 and 1 <= int(text) <= maximum):
        raise RequestError(400, INVALID_REQUEST, f"limit must be an integer from 1 to {maximum}")
    return int(text)


def json_body(request: IRequest, status: int, value: Any) -> bytes:
    """Set ``status`` and the JSON content type; return ``value`` encoded."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return frames.dumps(value)


def json_error_body(code: str, message: str) -> bytes:
    """The JSON error body ``{error, message}``, for a caller that has set
    the status itself."""
    return frames.dumps({"error": code, "message": message})


def error(request: IRequest, status: int, code: str, message: str) -> bytes:
    """Set ``status`` and return the JSON error body ``{error, message}``."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return json_error_body(code, message)


def method_not_allowed(request: IRequest, allowed: list[bytes]) -> bytes:
    """A JSON ``405 {"error": "method_not_allowed"}`` naming ``allowed`` in
    ``Allow``. To ``HEAD`` it is the status and headers alone, so
    twisted.web has no body to eat (and log that it ate)."""
    request.setHeader(b"allow", b", ".join(allowed))
    method = request.method.decode("latin-1")
    body = error(
        request, 405, "method_not_allowed",
        f"{method} is not allowed here; use {', '.join(m.decode('latin-1') for m in allowed)}",
    )
    if request.method == b"HEAD":
        request.setHeader(b"content-length", b"%d" % len(body))
        return b""
    return body


def answer_request_error(request: IRequest, exc: RequestError) -> bytes:
    """Log a refused request in one line and answer its JSON error."""
    log.info(
        "{method} {path}: {status} {code}: {message}",
        method=request.method.decode("ascii", "replace"),
        path=request.path.decode("ascii", "replace"),
        status=exc.status, code=exc.code, message=exc.message,
    )
    return error(request, exc.status, exc.code, exc.message)


def routing_error(request: IRequest, failure: Any) -> bytes:
    """A path no Klein route takes (404), or a method it does not (405 with
    ``Allow``), as a JSON error."""
    exc = failure.value
    if isinstance(exc, MethodNotAllowed):
        allowed = ", ".join(sorted(exc.valid_methods or ()))
        request.setHeader(b"allow", allowed.encode("ascii"))
        return error(request, 405, "method_not_allowed", f"this endpoint takes {allowed}")
    return error(request, 404, "not_found", "no such endpoint")


def json_errors(app: Any) -> None:
    """Answer every refusal (:class:`RequestError`) and every path or
    method no route takes of the Klein ``app`` (of a class: its handlers
    get the instance first) as the API's JSON errors."""

    @app.handle_errors(RequestError)
    def request_error(instance: Any, request: IRequest, failure: Any) -> bytes:
        return answer_request_error(request, failure.value)

    @app.handle_errors(NotFound, MethodNotAllowed)
    def no_route(instance: Any, request: IRequest, failure: Any) -> bytes:
        return routing_error(request, failure)


def origin_allowed(origin: str | None, allowed: tuple[str, ...]) -> bool:
    """Whether a browser from ``origin`` may use Chloe.

    A request with no ``Origin`` header is not from a browser page (curl, a
    server) and is let through: ``Origin`` protects browsers' users, it does
    not authenticate anyone.
    """
    if origin is None or "*" in allowed:
        return True
    return origin.rstrip("/") in allowed
