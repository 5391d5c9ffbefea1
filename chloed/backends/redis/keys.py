"""Redis key names, message ids as ``(ms, seq)`` keys, and the parsing of
ids and ``redis://`` URLs."""

from __future__ import annotations

from urllib.parse import urlsplit

IDS_KEY = "chloe:ids"
HISTORY_PREFIX = "chloe:h:"
SESSION_PREFIX = "chloe:s:"
SESSION_TTL = 86400  # a dead node's sessions are forgotten after a day
# node -> "<expires ms> <streaming sessions> <polling sessions> <partial>";
# "" -> "<ms>" until which receipts are a lower bound (see census)
NODES_KEY = "chloe:nodes"
OCCUPANCY_PREFIX = "chloe:o:"  # channel -> {nodes with subscribers of it}, for occupied/vacated
COUNTS_PREFIX = "chloe:r:"  # channel -> {node: "<streaming> <polling>"}, for receipts
ROSTER_PREFIX = "chloe:roster:"  # node -> sorted set of "<session id> <row>", for GET /sessions
USERS_PREFIX = "chloe:u:"  # user -> {session id: node}, for per-user limits, /users/ID, /disconnect
USER_CHANNELS_PREFIX = "chloe:uc:"  # user -> {channel}: its sessions' persisted server-side subscriptions
REVOKED_JTI_PREFIX = "chloe:rv:j:"  # jti -> until when (ms), expiring then
REVOKED_USER_PREFIX = "chloe:rv:u:"  # user -> tokens issued before when (epoch s) are refused

Key = tuple[int, int]
ZERO: Key = (0, 0)


def parse_key(text: bytes | str | None) -> Key | None:
    """``(ms, seq)`` of a message id (Redis orders stream ids so), or None
    when ``text`` is not an id."""
    if text is None:
        return None
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    ms, dash, seq = text.partition("-")
    if not dash or not (ms.isascii() and ms.isdigit() and seq.isascii() and seq.isdigit()):
        return None
    if len(ms) > 16 or len(seq) > 20:
        return None
    return int(ms), int(seq)


def format_key(key: Key) -> str:
    return f"{key[0]}-{key[1]}"


def parse_url(url: str) -> tuple[str, int, int]:
    """Host, port and database number of a ``redis://host:port/db`` URL."""
    parts = urlsplit(url)
    db = parts.path.strip("/")
    return parts.hostname or "127.0.0.1", parts.port or 6379, int(db) if db else 0
