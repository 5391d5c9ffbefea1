"""Where the relay keeps what it has not handed the app yet: in memory, in
an append-only file (:mod:`chloed.spool.disk`), or in Redis Streams
(:mod:`chloed.spool.redis`). :mod:`chloed.spool.base` is the contract."""
