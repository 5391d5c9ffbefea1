"""The disk spool: what is appended survives a restart, torn tails are cut
off, write failures are reported and recovered from, syncs are grouped.

Most tests run the writer synchronously (an injected ``run_in_thread``
and a fake reactor whose ``callFromThread`` calls at once, its
``callLater(0)`` run by ``advance(0)``); two use the real reactor and
threads.
"""

from __future__ import annotations

import errno
import os
import struct
from typing import Any, Callable, Iterator, Sequence

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure

from chloed.spool.base import EVENT, MESSAGE, DeadLetter, Record, SpoolError
from chloed.spool.disk import LOG_NAME, MAGIC, DiskSpool


class FakeReactor(Clock):
    """A clock whose ``callFromThread`` runs the call at once."""

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)


def at_once(f: Callable[[], None]) -> None:
    f()


class Disk:
    """``os.pwritev`` and ``os.fdatasync``, failing on demand; syncs counted."""

    def __init__(self) -> None:
        self.syncs = 0
        self.fail_write: int | None = None
        self.fail_sync: int | None = None

    def pwritev(self, fd: int, buffers: Sequence[memoryview], offset: int) -> int:
        if self.fail_write is not None:
            # Half of it reaches the file first, as a real full disk may do.
            data = b"".join(buffers)
            os.pwrite(fd, data[:len(data) // 2], offset)
            raise OSError(self.fail_write, os.strerror(self.fail_write))
        return os.pwritev(fd, buffers, offset)

    def fdatasync(self, fd: int) -> None:
        if self.fail_sync is not None:
            raise OSError(self.fail_sync, os.strerror(self.fail_sync))
        # (Counted, not done: what a sync makes durable is not testable
        # here, and real ones on a busy disk would slow the tests.)
        self.syncs += 1


def result(d: defer.Deferred[Any]) -> Any:
    """What ``d`` fired with (it must have fired)."""
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


def failure(d: defer.Deferred[Any]) -> Failure:
    """The Failure ``d`` failed with (it must have)."""
    out: list[Any] = []
    d.addBoth(out.append)
    assert out and isinstance(out[0], Failure), out
    return out[0]


class Harness:
    """Disk spools on one directory, run synchronously."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.reactor = FakeReactor()
        self.disk = Disk()

    def open(self, **kwargs: Any) -> tuple[DiskSpool, list[Record]]:
        spool = DiskSpool(self.path, self.reactor, run_in_thread=at_once,
                          pwritev=self.disk.pwritev, fdatasync=self.disk.fdatasync, **kwargs)
        recovered: list[Record] = []
        result(spool.start(recovered.append))
        return spool, recovered

    def restart(self, spool: DiskSpool, **kwargs: Any) -> tuple[DiskSpool, list[Record]]:
        d = spool.stop()
        self.reactor.advance(0)
        result(d)
        return self.open(**kwargs)

    def append(self, spool: DiskSpool, *records: Record) -> list[defer.Deferred[None]]:
        ds = [spool.append(r) for r in records]
        self.reactor.advance(0)
        return ds


@pytest.fixture
def h(tmp_path: Any) -> Harness:
    return Harness(str(tmp_path / "spool"))


@pytest.fixture
def warnings() -> Iterator[list[dict[str, Any]]]:
    """The warnings logged by the disk spool during the test."""
    events: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_level") == LogLevel.warn and event.get("log_namespace") == "chloed.spool.disk":
            events.append(event)

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)


def rec(n: int, lane: str = "lane-a", kind: str = MESSAGE, body: bytes | None = None) -> Record:
    return Record(lane, kind, b"dlv-%d" % n, 1000.0 + n, body if body is not None else b'{"n": %d}' % n)


def fields(r: Record) -> tuple[str, str, str, bytes, float, bytes]:
    return (r.key, r.lane, r.kind, r.delivery, r.arrived, r.body)


def test_pending_records_recovered_in_order(h: Harness) -> None:
    """A restart recovers every appended record, in append order, with its
    key and fields; new keys continue after the old."""
    spool, recovered = h.open()
    assert recovered == []
    records = [rec(1), rec(2, lane="lane-é", kind=EVENT), rec(3, body=bytes(range(256)) * 100), rec(4, body=b"")]
    for d in h.append(spool, *records):
        assert result(d) is None
    assert [r.key for r in records] == ["d1", "d2", "d3", "d4"]
    assert spool.pending == 4
    spool, recovered = h.restart(spool)
    assert [fields(r) for r in recovered] == [fields(r) for r in records]
    assert spool.pending == 4
    new = rec(5)
    result(h.append(spool, new)[0])
    assert new.key == "d5"
    assert os.stat(h.path).st_mode & 0o777 == 0o700


def test_done_records_are_not_recovered(h: Harness) -> None:
    """What was done with is forgotten; the others still come back."""
    spool, _ = h.open()
    records = [rec(i) for i in range(1, 5)]
    h.append(spool, *records)
    spool.done(records[0])
    spool.done(records[2])
    spool, recovered = h.restart(spool)
    assert [r.key for r in recovered] == ["d2", "d4"]


def test_dead_letters_survive_restart(h: Harness) -> None:
    """A buried record is still a dead letter after a restart, with its
    reason, status and time, and is not pending."""
    spool, _ = h.open()
    records = [rec(1), rec(2), rec(3)]
    h.append(spool, *records)
    spool.bury(DeadLetter(records[1], "the app said 422", 422, 2000.5))
    spool.bury(DeadLetter(records[0], "relay_ttl passed: no answer", None, 2001.0))
    spool, recovered = h.restart(spool)
    assert [r.key for r in recovered] == ["d3"]
    assert spool.dead_count() == 2
    letters = result(spool.dead_letters(10, None))
    assert [(x.id, x.reason, x.status, x.died) for x in letters] == [
        ("d2", "the app said 422", 422, 2000.5),
        ("d1", "relay_ttl passed: no answer", None, 2001.0),
    ]
    assert fields(letters[0].record) == fields(records[1])
    assert [x.id for x in result(spool.dead_letters(10, "d2"))] == ["d1"]


def test_revive_and_delete_persist(h: Harness) -> None:
    """A revived dead letter is pending again after a restart, a deleted
    one is gone, the rest stay dead."""
    spool, _ = h.open()
    records = [rec(i) for i in range(1, 5)]
    h.append(spool, *records)
    for r in records[:3]:
        spool.bury(DeadLetter(r, "gave up", 503, 3000.0))
    assert result(spool.delete("d2")) is True
    assert result(spool.delete("d2")) is False
    assert result(spool.delete("nope")) is False
    revived = result(spool.revive(["d3", "d1", "d9"]))
    assert [r.key for r in revived] == ["d1", "d3"]
    spool.bury(DeadLetter(records[2], "again", 500, 3001.0))
    spool, recovered = h.restart(spool)
    assert [r.key for r in recovered] == ["d1", "d4"]
    assert [(x.id, x.reason) for x in result(spool.dead_letters(10, None))] == [("d3", "again")]
    assert [r.key for r in result(spool.revive(None))] == ["d3"]
    spool, recovered = h.restart(spool)
    assert [r.key for r in recovered] == ["d1", "d3", "d4"]
    assert spool.dead_count() == 0


def test_dead_letters_pushed_out_are_deleted_on_disk(h: Harness) -> None:
    """Past ``dead_limit`` the oldest dead letter goes, in the file too."""
    spool, _ = h.open(dead_limit=2)
    records = [rec(i) for i in range(1, 4)]
    h.append(spool, *records)
    for r in records:
        spool.bury(DeadLetter(r, "x", 400, 1.0))
    assert [x.id for x in result(spool.dead_letters(10, None))] == ["d2", "d3"]
    spool, recovered = h.restart(spool, dead_limit=2)
    assert recovered == []
    assert [x.id for x in result(spool.dead_letters(10, None))] == ["d2", "d3"]


def _cut_tail(h: Harness, damage: Callable[[bytearray], None]) -> None:
    """Three records appended, then the log's tail damaged."""
    spool, _ = h.open()
    h.append(spool, rec(1), rec(2), rec(3))
    result(_stopped(h, spool))
    path = os.path.join(h.path, LOG_NAME)
    with open(path, "rb") as f:
        data = bytearray(f.read())
    damage(data)
    with open(path, "wb") as f:
        f.write(data)


def _stopped(h: Harness, spool: DiskSpool) -> defer.Deferred[None]:
    """``spool.stop()``, its writer run."""
    d = spool.stop()
    h.reactor.advance(0)
    return d


@pytest.mark.parametrize("damage", [
    pytest.param(lambda data: data.__delitem__(slice(-5, None)), id="cut-mid-record"),
    pytest.param(lambda data: data.__setitem__(-3, data[-3] ^ 0xFF), id="bad-crc"),
])
def test_damaged_tail_is_dropped_once(h: Harness, warnings: list[dict[str, Any]],
                                      damage: Callable[[bytearray], None]) -> None:
    """A log cut mid-record, or whose last record fails its CRC, recovers
    up to the last whole record, says so in exactly one line, and takes
    appends again."""
    _cut_tail(h, damage)
    size = os.path.getsize(os.path.join(h.path, LOG_NAME))
    spool, recovered = h.open()
    assert [r.key for r in recovered] == ["d1", "d2"]
    assert len(warnings) == 1
    event = warnings[0]
    assert event["file"] == os.path.join(h.path, LOG_NAME)
    assert event["dropped"] == size - event["offset"] > 0
    assert os.path.join(h.path, LOG_NAME) in event["log_format"].format(**event)
    new = rec(9)
    result(h.append(spool, new)[0])
    spool, recovered = h.restart(spool)
    assert [r.body for r in recovered] == [b'{"n": 1}', b'{"n": 2}', b'{"n": 9}']
    assert len(warnings) == 1


def test_append_after_stop_fails(h: Harness) -> None:
    """Once stopped, an append fails with SpoolError instead of waiting
    for a writer that is gone; stopping again is harmless."""
    spool, _ = h.open()
    result(_stopped(h, spool))
    assert failure(spool.append(rec(1))).check(SpoolError)
    spool.done(rec(2))
    assert result(spool.stop()) is None


def test_not_a_spool_log_is_refused(h: Harness) -> None:
    """A file that is not a spool log is not truncated away: it is refused."""
    os.makedirs(h.path)
    with open(os.path.join(h.path, LOG_NAME), "wb") as f:
        f.write(b"something else entirely")
    with pytest.raises(SpoolError, match="not a chloed spool log"):
        h.open()
    assert os.path.getsize(os.path.join(h.path, LOG_NAME)) == 23


def test_unusable_directory(tmp_path: Any) -> None:
    """A directory that cannot be made or is a file fails the start with a
    SpoolError naming the path and the reason."""
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    for path, reason in [(str(blocker / "spool"), "Not a directory"), (str(blocker), "not a directory")]:
        with pytest.raises(SpoolError) as caught:
            Harness(path).open()
        assert path in str(caught.value) and reason in str(caught.value)


def test_probe_before_start(tmp_path: Any) -> None:
    """chloed's start-up check (probe) refuses a path it cannot make a
    directory of, and a directory another spool holds; it takes a fresh
    one and leaves no file behind but the lock."""
    from chloed.spool.disk import probe

    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(SpoolError, match="cannot create the directory"):
        probe(str(blocker / "spool"))
    fresh = tmp_path / "fresh"
    probe(str(fresh))
    assert sorted(p.name for p in fresh.iterdir()) == ["lock"]
    h = Harness(str(fresh))
    h.open()
    with pytest.raises(SpoolError, match="in use by another chloed"):
        probe(str(fresh))


def test_locked_directory(h: Harness) -> None:
    """A second spool on a directory in use fails with SpoolError naming
    it; once the first stops, the directory can be used again."""
    spool, _ = h.open()
    with pytest.raises(SpoolError, match="in use") as caught:
        h.open()
    assert h.path in str(caught.value)
    result(_stopped(h, spool))
    h.open()


@pytest.mark.parametrize("where", ["write", "sync"])
def test_full_disk(h: Harness, warnings: list[dict[str, Any]], where: str) -> None:
    """ENOSPC fails the appends of that commit with SpoolError, leaves no
    partial record, is logged once in a burst, and later appends work."""
    spool, _ = h.open()
    first = rec(1)
    result(h.append(spool, first)[0])
    spool.done(first)
    size = spool.file_bytes
    if where == "write":
        h.disk.fail_write = errno.ENOSPC
    else:
        h.disk.fail_sync = errno.ENOSPC
    a, b = h.append(spool, rec(2), rec(3))
    for d in (a, b):
        f = failure(d)
        assert f.check(SpoolError)
        assert "No space left on device" in f.getErrorMessage()
        assert h.path in f.getErrorMessage()
    assert failure(h.append(spool, rec(4))[0]).check(SpoolError)
    assert os.path.getsize(os.path.join(h.path, LOG_NAME)) == size == spool.file_bytes
    assert len(warnings) == 1 and "No space left on device" in warnings[0]["what"]
    h.disk.fail_write = h.disk.fail_sync = None
    later = rec(5)
    result(h.append(spool, later)[0])
    spool, recovered = h.restart(spool)
    assert [r.key for r in recovered] == [later.key]
    assert len(warnings) == 1


def test_group_commit(h: Harness) -> None:
    """500 appends in one reactor turn are written with one sync (in
    several ``pwritev``, past IOV_MAX buffers), and their Deferreds fire in
    append order once it is done."""
    spool, _ = h.open()
    h.disk.syncs = 0
    fired: list[int] = []
    records = [rec(i) for i in range(500)]
    ds = [spool.append(r) for r in records]
    for i, d in enumerate(ds):
        d.addCallback(lambda _, i=i: fired.append(i))
    assert fired == [] and h.disk.syncs == 0
    h.reactor.advance(0)
    assert fired == list(range(500))
    assert h.disk.syncs == 1
    spool, recovered = h.restart(spool)
    assert [fields(r) for r in recovered] == [fields(r) for r in records]


def test_short_writes(h: Harness) -> None:
    """Writes that take a few bytes at a time still write everything."""
    spool, _ = h.open()
    spool._pwritev = lambda fd, buffers, offset: os.pwrite(fd, b"".join(buffers)[:7], offset)
    records = [rec(1), rec(2, body=b"z" * 5000)]
    for d in h.append(spool, *records):
        result(d)
    spool, recovered = h.restart(spool)
    assert [fields(r) for r in recovered] == [fields(r) for r in records]


def test_compaction_keeps_live_records_in_order(h: Harness) -> None:
    """A log past its compaction size is rewritten with only the live
    records (pending and dead), which a restart finds in order."""
    spool, _ = h.open()
    spool.compact_at = 64 << 10
    body = b"x" * 1000
    kept: list[Record] = []
    for i in range(200):
        r = rec(i, body=body + b"%d" % i)
        result(h.append(spool, r)[0])
        if i % 50 == 7:
            kept.append(r)
        else:
            spool.done(r)
    spool.bury(DeadLetter(kept[1], "dead", 500, 5.0))
    h.reactor.advance(0)
    assert spool.pending == len(kept) - 1
    assert spool.file_bytes < 64 << 10
    assert spool.file_bytes == os.path.getsize(os.path.join(h.path, LOG_NAME))
    spool, recovered = h.restart(spool)
    assert [fields(r) for r in recovered] == [fields(r) for r in kept if r is not kept[1]]
    assert [fields(x.record) for x in result(spool.dead_letters(10, None))] == [fields(kept[1])]


def test_empty_log_is_truncated(h: Harness) -> None:
    """With nothing live the log is emptied past its bound, and appends
    after that are found again (keys are not reused)."""
    spool, _ = h.open()
    spool.truncate_at = 4096
    for i in range(10):
        r = rec(i, body=b"y" * 1000)
        result(h.append(spool, r)[0])
        spool.done(r)
    h.reactor.advance(0)
    assert spool.file_bytes < 4096
    spool, _ = h.restart(spool)
    after = rec(99)
    result(h.append(spool, after)[0])
    assert after.key == "d11"
    spool, recovered = h.restart(spool)
    assert [r.key for r in recovered] == ["d11"]


def test_log_format(h: Harness) -> None:
    """The log is the magic and CRC-framed records (what the docstring
    says), so a torn write is detectable."""
    spool, _ = h.open()
    h.append(spool, rec(1))
    with open(os.path.join(h.path, LOG_NAME), "rb") as f:
        data = f.read()
    assert data.startswith(MAGIC)
    length, _ = struct.unpack_from(">II", data, len(MAGIC))
    assert data[len(MAGIC) + 8] == 6  # MARK
    add = len(MAGIC) + 8 + length
    length, _ = struct.unpack_from(">II", data, add)
    assert data[add + 8] == 1 and add + 8 + length == len(data)
    assert data.endswith(b'{"n": 1}')


@pytest_twisted.inlineCallbacks
def test_real_reactor_and_threads(tmp_path: Any) -> Iterator[defer.Deferred[Any]]:
    """With the reactor's own threads: appends fire once synced, and a new
    spool recovers them after a stop."""
    from twisted.internet import reactor

    path = str(tmp_path / "spool")
    spool = DiskSpool(path, reactor)
    yield spool.start(lambda r: None)
    records = [rec(i, lane="lane-%d" % (i % 3)) for i in range(50)]
    yield defer.gatherResults([spool.append(r) for r in records])
    spool.done(records[0])
    spool.bury(DeadLetter(records[1], "no", 400, 7.0))
    yield spool.stop()
    again = DiskSpool(path, reactor)
    recovered: list[Record] = []
    yield again.start(recovered.append)
    assert [fields(r) for r in recovered] == [fields(r) for r in records[2:]]
    assert again.dead_count() == 1
    with pytest.raises(SpoolError):
        yield DiskSpool(path, reactor).start(lambda r: None)
    yield again.stop()
