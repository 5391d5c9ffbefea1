"""``--log-format json``: one JSON object per line, for machines.

Each line has ``time`` (ISO 8601, UTC), ``level``, ``namespace``, ``text``
(the event formatted as the text log would say it) and the event's own
fields that are plain values (``session``, ``code``, ``status``…), so a log
shipper can filter on them. An unexpected error's traceback goes in
``traceback``, inside the same line.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from typing import IO, Any

from twisted.logger import FileLogObserver, ILogObserver, formatEvent

_PLAIN = (str, int, float, bool, type(None))


def event_as_json(event: dict[str, Any]) -> str:
    """One log event as one line of JSON (with its newline)."""
    line: dict[str, Any] = {
        "time": datetime.fromtimestamp(event.get("log_time") or 0, timezone.utc).isoformat(timespec="milliseconds"),
        "level": getattr(event.get("log_level"), "name", "info"),
        "namespace": event.get("log_namespace", ""),
        "text": formatEvent(event),
    }
    for key, value in event.items():
        if not key.startswith("log_") and key not in line and isinstance(value, _PLAIN):
            line[key] = value
    failure = event.get("log_failure")
    if failure is not None:
        line["traceback"] = failure.getTraceback()
    return json.dumps(line, ensure_ascii=False, default=str) + "\n"


def json_observer(out: IO[str] | None = None) -> ILogObserver:
    """A log observer writing :func:`event_as_json` lines to ``out`` (stdout)."""
    return FileLogObserver(out if out is not None else sys.stdout, event_as_json)
