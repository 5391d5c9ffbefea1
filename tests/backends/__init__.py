"""The backend contract (:mod:`chloed.backends.base`), one suite run against
both implementations: the memory backend in-process and the Redis backend on
a real ``redis-server`` (buildbot's "verified fakes": the fake passes the
real thing's tests)."""
