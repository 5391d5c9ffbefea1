"""What of a session id may reach a log: a tag, never the id.

For long-poll, SSE and JSONP the session id is a capability (whoever holds
it reads and sends as that browser), so a log line that held it would hand
the session to whoever reads the logs. Log lines name a session by
:func:`session_tag`: eight hex characters of a keyed hash, the same for one
id within one process (so the lines of one session can be followed), with a
key made at start-up and never written anywhere, so a tag says nothing of
the id and cannot be turned back into it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

_KEY = secrets.token_bytes(32)


def session_tag(session_id: str) -> str:
    """``s:`` and 8 hex characters standing for ``session_id`` in logs."""
    digest = hmac.new(_KEY, session_id.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
    return "s:" + digest[:8]
