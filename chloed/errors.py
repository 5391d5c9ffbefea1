"""The exceptions Chloe's parts raise to each other.

Expected failures are types, so that each layer can turn them into what its
peer understands (an error frame, an HTTP status, one line of log) and leave
``log.failure`` for the unexpected.
"""

from __future__ import annotations


class ChloeError(Exception):
    """Base class of every error Chloe raises on purpose."""


class ConfigError(ChloeError):
    """A bad option; the message names it.

    :param option: the option's name, as written in ``conf/chloe.toml``.
    """

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"{option}: {message}")
        self.option = option


class ProtocolError(ChloeError):
    """A browser frame Chloe refuses; becomes an ``error`` frame.

    :param code: one of the error codes of SPEC section 2.
    :param ref: the ``ref`` of the frame it answers, when it had one.
    :param channel: the channel the frame named, when it named one.
    """

    def __init__(
        self,
        code: str,
        message: str,
        ref: object = None,
        channel: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref
        self.channel = channel


class RequestError(ChloeError):
    """A bad request to the HTTP API; becomes ``{"error", "message"}``.

    :param status: the HTTP status to answer with.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class RelayRejected(ChloeError):
    """The app answered 4xx (other than 408 and 429): never retried."""

    def __init__(self, status: int) -> None:
        super().__init__(f"the application answered {status}")
        self.status = status


class RelayUnavailable(ChloeError):
    """The app could not take the message: after the last retry, or at once
    when the relay queue is full."""
