"""The spool of ``relay_spool = "disk"``: records kept in an append-only
file, so what was accepted survives a restart (or a crash).

The directory holds ``lock`` (``flock``-ed while a chloed uses it) and
``relay.log``: an 8-byte magic (``CHLSPL``, a zero, version 1), then
frames::

    length: u32   crc: u32 (CRC32 of the length's 4 bytes and the body)
    body:   op: u8  key: u64  ...

    ADD     arrived: f64  kind, lane, delivery lengths: u8 u16 u16,
            then kind, lane (UTF-8), delivery, the record's body
    DEAD    died: f64  status: i32 (-1: none), then the reason (UTF-8)
    DONE, REVIVE, DELETE    nothing more
    MARK    (its key is the next key to give, so that keys of records
            compacted away are not given again)

All integers are big-endian. A record's key ``dN`` is its ADD's N. Replay
stops at the first frame that is cut short, fails its CRC or makes no
sense (what a torn write leaves at the tail), and drops all that follows:
without a resynchronisation marker, records after damage in the middle
cannot be trusted to be frames at all.

Writes go through one writer at a time (a loop on a pool thread that
runs only while there is work), so the reactor never waits for the disk.
That writer also compacts: the log is rewritten with only the live frames
(pending ADDs, then dead letters' ADDs and DEADs) when it grows past
``max(16 MiB, 4 × live bytes)``, and cut back to the magic and a MARK when
nothing is live and it passed 1 MiB. Pending records' bodies are not held
here (the relay has them): the writer knows each live ADD by its offset
and length and copies the range from the old file when compacting.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import itertools
import os
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

from twisted.internet import defer
from twisted.logger import Logger

from chloed.spool.base import DeadLetter, Record, SpoolError
from chloed.spool.memory import DEAD_LETTERS_MAX, DeadLetters

log = Logger()

LOG_NAME = "relay.log"
LOCK_NAME = "lock"
MAGIC = b"CHLSPL\x00\x01"

#: Ops of the log; STOP is the writer's own, never written.
STOP, ADD, DONE, DEAD, REVIVE, DELETE, MARK = range(7)

_HEAD = struct.Struct(">II")
_LENGTH = struct.Struct(">I")
_OP = struct.Struct(">BQ")
_ADD = struct.Struct(">BQdBHH")
_DEAD = struct.Struct(">BQdi")
_SIZES = {DONE: _OP.size, REVIVE: _OP.size, DELETE: _OP.size, MARK: _OP.size}

#: A frame longer than this is damage, not a record.
MAX_FRAME = 256 << 20
#: Emptied when nothing is live and it passed this.
TRUNCATE_AT = 1 << 20
#: Rewritten when it passes this and four times the live bytes.
COMPACT_AT = 16 << 20
#: Bytes read from the old file per copy when compacting.
COPY_CHUNK = 4 << 20
#: At most one line about failing writes per this many seconds.
FAIL_LOG_INTERVAL = 10.0
#: Buffers per ``pwritev`` (Linux's IOV_MAX).
IOV_MAX = 1024

_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
_FILE_FLAGS = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC

#: (op, key, body parts, who waits): what the reactor hands the writer.
_Op = tuple[int, int, list[bytes], "defer.Deferred[None] | None"]


def _why(e: OSError) -> str:
    return e.strerror or str(e)


def _frame(parts: Sequence[bytes]) -> list[bytes]:
    """``parts`` (a body) framed: the header first, the parts not copied."""
    length = _LENGTH.pack(sum(len(p) for p in parts))
    crc = zlib.crc32(length)
    for part in parts:
        crc = zlib.crc32(part, crc)
    return [length + _LENGTH.pack(crc), *parts]


def _parse_add(body: bytes | memoryview) -> tuple[int, float, str, str, bytes, int]:
    """An ADD's key, arrived, kind, lane, delivery and where its record's
    body begins (ValueError when it does not add up)."""
    _, key, arrived, kind_len, lane_len, delivery_len = _ADD.unpack_from(body)
    pos = _ADD.size
    end = pos + kind_len + lane_len + delivery_len
    if end > len(body):
        raise ValueError("an ADD shorter than its fields")
    kind = bytes(body[pos:pos + kind_len]).decode()
    pos += kind_len
    lane = bytes(body[pos:pos + lane_len]).decode("utf-8", "surrogatepass")
    pos += lane_len
    return key, arrived, kind, lane, bytes(body[pos:end]), end


def _parse_dead(body: bytes | memoryview) -> tuple[str, int | None, float]:
    """A DEAD's reason, status and died."""
    _, _, died, status = _DEAD.unpack_from(body)
    reason = bytes(body[_DEAD.size:]).decode("utf-8", "surrogatepass")
    return reason, (None if status < 0 else status), died


def _check(op: int, body: bytes) -> None:
    """Raise ValueError (or struct.error) unless ``body`` is a whole op."""
    if op == ADD:
        _parse_add(body)
    elif op == DEAD:
        _parse_dead(body)
    elif _SIZES.get(op) != len(body):
        raise ValueError(f"op {op} of {len(body)} bytes")


@dataclass
class _State:
    """What the log holds that is live, by key: the writer's (and
    replay's) alone. Offsets and lengths are of whole frames."""

    #: Pending records' ADDs, (offset, length).
    live: dict[int, tuple[int, int]] = field(default_factory=dict)
    #: Dead letters in burial order: their ADD's (offset, length) and
    #: their DEAD frame.
    dead: dict[int, tuple[int, int, bytes]] = field(default_factory=dict)
    #: Bytes a rewrite would keep.
    live_bytes: int = 0
    #: The highest key ever given.
    high: int = 0

    def apply(self, op: int, key: int, offset: int, length: int, frame: bytes | None) -> None:
        if op == ADD:
            old = self.live.pop(key, None)
            if old is not None:
                self.live_bytes -= old[1]
            self.live[key] = (offset, length)
            self.live_bytes += length
            self.high = max(self.high, key)
        elif op == DONE:
            # (A dead letter stays until DELETE: done is for pending ones.)
            gone = self.live.pop(key, None)
            if gone is not None:
                self.live_bytes -= gone[1]
        elif op == DEAD:
            assert frame is not None
            if key in self.live:
                o, n = self.live.pop(key)
            elif key in self.dead:
                o, n, was = self.dead.pop(key)
                self.live_bytes -= len(was)
            else:
                return
            self.dead[key] = (o, n, frame)
            self.live_bytes += len(frame)
        elif op == REVIVE:
            if key in self.dead:
                o, n, was = self.dead.pop(key)
                self.live_bytes -= len(was)
                self.live[key] = (o, n)
        elif op == DELETE:
            if key in self.dead:
                _, n, was = self.dead.pop(key)
                self.live_bytes -= n + len(was)
        elif op == MARK:
            self.high = max(self.high, key - 1)


@dataclass
class _Loaded:
    """What :meth:`DiskSpool.start` found, for the reactor thread."""

    records: list[Record]
    dead: list[DeadLetter]
    high: int
    #: (offset, bytes dropped) when the log was cut or damaged.
    torn: tuple[int, int] | None
    #: Dead letters past ``dead_limit`` dropped.
    over: int


class DiskSpool:
    """Records in an append-only, CRC-framed file in ``path``.

    Every method is called from the reactor thread; the disk is only
    touched by the writer (``run_in_thread``, the reactor's pool by
    default). Group commit: an operation is queued, and the writer is
    woken at the end of the reactor turn (``callLater(0)``), so what one
    turn appended goes in one ``pwritev`` and one ``fdatasync``. While the
    writer syncs, the next turns' operations queue up and go together in
    its next commit: under load the batch grows with the disk's latency
    by itself, and when idle nobody waits for company. ``commit_delay``
    (seconds, 0 by default) makes the writer sleep before each commit to
    gather more: worth it only where syncs are costly and arrivals
    sparse; it is left off because it adds its whole length to every
    lone append's ``accepted``.

    ``done``, ``bury``, ``revive`` and ``delete`` are written the same way
    but nobody waits for them (the relay and the app are answered from
    memory); one whose write failed is tried again with the next commit.

    ``pwritev`` and ``fdatasync`` may be replaced (tests fail them).
    """

    name = "disk"
    durable = True

    #: Seconds between two lines about failing writes.
    fail_log_interval = FAIL_LOG_INTERVAL

    def __init__(
        self,
        path: str,
        reactor: Any,
        dead_limit: int = DEAD_LETTERS_MAX,
        commit_delay: float = 0.0,
        run_in_thread: Callable[[Callable[[], None]], object] | None = None,
        *,
        pwritev: Callable[[int, Sequence[memoryview], int], int] = os.pwritev,
        fdatasync: Callable[[int], None] = getattr(os, "fdatasync", os.fsync),
    ) -> None:
        self.path = path
        self.log_path = os.path.join(path, LOG_NAME)
        self._reactor = reactor
        self._run = run_in_thread if run_in_thread is not None else reactor.callInThread
        self._commit_delay = commit_delay
        self._pwritev = pwritev
        self._fdatasync = fdatasync
        self.dead = DeadLetters(dead_limit)
        #: Compaction thresholds (tests lower them).
        self.truncate_at = TRUNCATE_AT
        self.compact_at = COMPACT_AT
        self._keys: Iterator[int] = itertools.count(1)
        self._open = False
        # Shared with the writer, under the lock.
        self._lock = threading.Lock()
        self._queue: list[_Op] = []
        self._running = False
        self._kick_pending = False
        # The writer's (and the start thread's, before it).
        self._state = _State()
        self._fd = -1
        self._lock_fd = -1
        self._size = 0
        self._retry: list[_Op] = []
        self._dirty_tail = False
        self._complained_at: float | None = None
        self._hidden = 0
        self._compact_not_before = 0.0

    # -- what the relay and the metrics read -------------------------------

    @property
    def file_bytes(self) -> int:
        """The log's size, as the writer last left it."""
        return self._size

    @property
    def pending(self) -> int:
        """Pending records the log holds (written, not done nor dead)."""
        return len(self._state.live)

    # -- the Spool protocol ------------------------------------------------

    def start(self, recover: Callable[[Record], None]) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()

        def load() -> None:
            try:
                loaded = self._load()
            except BaseException as e:
                self._reactor.callFromThread(d.errback, e)
            else:
                self._reactor.callFromThread(self._started, d, loaded, recover)

        self._run(load)
        return d

    def _started(self, d: defer.Deferred[None], loaded: _Loaded, recover: Callable[[Record], None]) -> None:
        if loaded.torn is not None:
            offset, dropped = loaded.torn
            log.warn(
                "relay spool {file}: cut short or damaged at byte {offset}: the {dropped} bytes "
                "from there on are dropped", file=self.log_path, offset=offset, dropped=dropped,
            )
        if loaded.over:
            log.warn(
                "relay spool {file}: more than {limit} dead letters: the {over} oldest are dropped",
                file=self.log_path, limit=self.dead.limit, over=loaded.over,
            )
            self.dead.dropped += loaded.over
        for letter in loaded.dead:
            self.dead.add(letter)
        self._keys = itertools.count(loaded.high + 1)
        self._open = True
        try:
            for record in loaded.records:
                recover(record)
        except BaseException as e:
            d.errback(e)
        else:
            d.callback(None)

    def append(self, record: Record) -> defer.Deferred[None]:
        if not self._open:
            return defer.fail(SpoolError(f"relay spool {self.path} is not open"))
        key = next(self._keys)
        record.key = "d%d" % key
        record.token = key
        kind = record.kind.encode()
        lane = record.lane.encode("utf-8", "surrogatepass")
        size = _ADD.size + len(kind) + len(lane) + len(record.delivery) + len(record.body)
        if len(kind) > 0xFF or len(lane) > 0xFFFF or len(record.delivery) > 0xFFFF or size > MAX_FRAME:
            return defer.fail(SpoolError(f"relay spool {self.path}: record {record.key} is too large"))
        head = _ADD.pack(ADD, key, record.arrived, len(kind), len(lane), len(record.delivery))
        d: defer.Deferred[None] = defer.Deferred()
        self._queue_op((ADD, key, [head + kind + lane + record.delivery, record.body], d))
        return d

    def done(self, record: Record) -> None:
        self._small(DONE, record.key)

    def bury(self, letter: DeadLetter) -> None:
        pushed = self.dead.add(letter)
        key = _number(letter.id)
        if key is not None and self._open:
            status = letter.status if letter.status is not None and 0 <= letter.status < 1 << 31 else -1
            reason = letter.reason.encode("utf-8", "surrogatepass")
            self._queue_op((DEAD, key, [_DEAD.pack(DEAD, key, letter.died, status) + reason], None))
        if pushed is not None:
            self._small(DELETE, pushed.id)

    def dead_letters(self, limit: int, after: str | None) -> defer.Deferred[list[DeadLetter]]:
        return defer.succeed(self.dead.page(limit, after))

    def dead_count(self) -> int:
        return len(self.dead.letters)

    def revive(self, ids: list[str] | None) -> defer.Deferred[list[Record]]:
        letters = self.dead.take(ids)
        # (take gives burial order for "every one"; the contract wants
        # arrival order, keys breaking ties.)
        records = sorted((letter.record for letter in letters), key=lambda r: (r.arrived, _number(r.key) or 0))
        for record in records:
            self._small(REVIVE, record.key)
        return defer.succeed(records)

    def delete(self, id: str) -> defer.Deferred[bool]:
        if self.dead.letters.pop(id, None) is None:
            return defer.succeed(False)
        self._small(DELETE, id)
        return defer.succeed(True)

    def stop(self) -> defer.Deferred[None]:
        if not self._open:
            return defer.succeed(None)
        self._open = False
        d: defer.Deferred[None] = defer.Deferred()
        self._queue_op((STOP, 0, [], d))
        return d

    # -- handing work to the writer (reactor thread) -------------------------

    def _small(self, op: int, id: str) -> None:
        key = _number(id)
        if key is not None and self._open:
            self._queue_op((op, key, [_OP.pack(op, key)], None))

    def _queue_op(self, op: _Op) -> None:
        with self._lock:
            self._queue.append(op)
            kick = not self._running and not self._kick_pending
            if kick:
                self._kick_pending = True
        if kick:
            # At the end of this turn: the rest of its appends go along.
            self._reactor.callLater(0, self._kick)

    def _kick(self) -> None:
        with self._lock:
            self._kick_pending = False
            if self._running or not self._queue:
                return
            self._running = True
        self._run(self._drain)

    def _settle(self, waiters: list[defer.Deferred[None]], error: str | None) -> None:
        for d in waiters:
            if error is None:
                d.callback(None)
            else:
                d.errback(SpoolError(error))

    # -- the writer (its thread) -------------------------------------------

    def _drain(self) -> None:
        """Commit what is queued until nothing is."""
        while True:
            with self._lock:
                if not self._queue:
                    self._running = False
                    return
            if self._commit_delay > 0:
                time.sleep(self._commit_delay)
            with self._lock:
                taken, self._queue = self._queue, []
            try:
                self._commit(taken)
            except Exception as e:
                # (A bug: whoever waits is told, and the writer goes on.)
                self._broken(taken, f"relay spool {self.log_path}: {e!r}")

    def _broken(self, taken: list[_Op], error: str) -> None:
        waiters = []
        for op, _, _, d in taken:
            if d is None:
                continue
            if op == STOP:
                self._close()
                self._reactor.callFromThread(d.callback, None)
            else:
                waiters.append(d)
        self._reactor.callFromThread(self._settle, waiters, error)
        self._complain(error)

    def _commit(self, taken: list[_Op]) -> None:
        """Write ``taken`` (after what failed before) in one go, sync it,
        and tell who waits."""
        batch, self._retry = self._retry + taken, []
        stop: defer.Deferred[None] | None = None
        waiters: list[defer.Deferred[None]] = []
        applied: list[tuple[int, int, int, int, bytes | None]] = []
        buffers: list[bytes] = []
        pos = self._size
        if pos == 0:
            buffers.append(MAGIC + b"".join(_frame([_OP.pack(MARK, self._state.high + 1)])))
            pos = len(buffers[0])
        for op, key, parts, d in batch:
            if op == STOP:
                stop = d
                continue
            framed = _frame(parts)
            length = sum(len(p) for p in framed)
            applied.append((op, key, pos, length, b"".join(framed) if op == DEAD else None))
            buffers.extend(framed)
            pos += length
            if d is not None:
                waiters.append(d)
        error: str | None = None
        if applied:
            try:
                if self._dirty_tail:
                    os.ftruncate(self._fd, self._size)
                    self._dirty_tail = False
                self._write_all(self._fd, buffers, self._size)
                self._fdatasync(self._fd)
            except Exception as e:
                why = _why(e) if isinstance(e, OSError) else repr(e)
                error = f"relay spool {self.log_path}: cannot write: {why}"
                try:
                    os.ftruncate(self._fd, self._size)
                except OSError:
                    # (The next commit writes over it from the last good
                    # length anyway, and tries this again first.)
                    self._dirty_tail = True
                self._retry = [o for o in batch if o[3] is None and o[0] != STOP]
                self._complain(error)
            else:
                for change in applied:
                    self._state.apply(*change)
                self._size = pos
        if waiters:
            self._reactor.callFromThread(self._settle, waiters, error)
        if error is None and stop is None:
            self._maybe_compact()
        if stop is not None:
            self._close()
            self._reactor.callFromThread(stop.callback, None)

    def _write_all(self, fd: int, buffers: list[bytes], offset: int) -> None:
        """All of ``buffers`` at ``offset``, however short the writes."""
        views = [memoryview(b) for b in buffers if b]
        i = 0
        while i < len(views):
            n = self._pwritev(fd, views[i:i + IOV_MAX], offset)
            if n <= 0:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            offset += n
            while n and i < len(views):
                if n >= len(views[i]):
                    n -= len(views[i])
                    i += 1
                else:
                    views[i] = views[i][n:]
                    n = 0

    def _complain(self, what: str) -> None:
        """Log ``what``, at most once per :attr:`fail_log_interval`."""
        now = time.monotonic()
        if self._complained_at is not None and now - self._complained_at < self.fail_log_interval:
            self._hidden += 1
            return
        if self._hidden:
            what += f" ({self._hidden} more failures not logged since the last line)"
        self._hidden, self._complained_at = 0, now
        self._reactor.callFromThread(log.warn, "{what}", what=what)

    def _maybe_compact(self) -> None:
        st = self._state
        if time.monotonic() < self._compact_not_before:
            return
        try:
            if not st.live and not st.dead:
                if self._size > self.truncate_at:
                    # Down to the magic and a MARK (so keys go on from
                    # where they were). A crash in between leaves it empty
                    # or all done: either way nothing is pending.
                    os.ftruncate(self._fd, 0)
                    self._size = 0
                    self._dirty_tail = True
                    header = MAGIC + b"".join(_frame([_OP.pack(MARK, st.high + 1)]))
                    self._write_all(self._fd, [header], 0)
                    self._fdatasync(self._fd)
                    self._size = len(header)
                    self._dirty_tail = False
            elif self._size > max(self.compact_at, 4 * st.live_bytes):
                self._rewrite()
        except OSError as e:
            self._compact_not_before = time.monotonic() + self.fail_log_interval
            self._complain(f"relay spool {self.log_path}: cannot compact: {_why(e)}")

    def _rewrite(self) -> None:
        """Replace the log by one of its live frames: pending ADDs and dead
        letters' ADDs in key order (copied from the old file), then the
        dead letters' DEADs in burial order."""
        st = self._state
        tmp = self.log_path + ".new"
        fd = os.open(tmp, _FILE_FLAGS | os.O_TRUNC, 0o600)
        try:
            out = _Output(self, fd)
            out.add(MAGIC + b"".join(_frame([_OP.pack(MARK, st.high + 1)])))
            live: dict[int, tuple[int, int]] = {}
            moved: dict[int, int] = {}
            cursor = out.pos
            run_at, run_len = 0, 0
            for key in sorted(itertools.chain(st.live, st.dead)):
                if key in st.live:
                    offset, length = st.live[key]
                    live[key] = (cursor, length)
                else:
                    offset, length, _ = st.dead[key]
                    moved[key] = cursor
                cursor += length
                # (Neighbours in the old file are copied in one go.)
                if run_len and offset == run_at + run_len:
                    run_len += length
                else:
                    out.copy(self._fd, run_at, run_len)
                    run_at, run_len = offset, length
            out.copy(self._fd, run_at, run_len)
            for key, (_, _, frame) in st.dead.items():
                out.add(frame)
            out.flush()
            os.fsync(fd)
            os.rename(tmp, self.log_path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        old, self._fd = self._fd, fd
        os.close(old)
        st.live = live
        st.dead = {key: (moved[key], length, frame) for key, (_, length, frame) in st.dead.items()}
        self._size = out.pos
        self._dirty_tail = False
        _sync_dir(self.path)

    def _close(self) -> None:
        for fd in (self._fd, self._lock_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fd = self._lock_fd = -1

    # -- opening (a thread) --------------------------------------------------

    def _load(self) -> _Loaded:
        """Lock the directory, replay the log, compact it."""
        try:
            self._lock_fd = _lock(self.path)
        except SpoolError as e:
            raise SpoolError(f"relay spool {e}") from None
        try:
            return self._open_log()
        except BaseException:
            self._close()
            raise

    def _open_log(self) -> _Loaded:
        """Replay the log, then compact it (also dropping a torn tail)."""
        try:
            self._fd = os.open(self.log_path, _FILE_FLAGS, 0o600)
        except OSError as e:
            raise SpoolError(f"relay spool {self.path}: cannot open {self.log_path}: {_why(e)}") from None
        try:
            st, good, size = self._replay()
            records = [self._read_record(offset, length) for offset, length in
                       (st.live[key] for key in sorted(st.live))]
            over = max(0, len(st.dead) - self.dead.limit)
            for key in list(itertools.islice(st.dead, over)):
                st.apply(DELETE, key, 0, 0, None)
            dead = []
            for offset, length, frame in st.dead.values():
                reason, status, died = _parse_dead(memoryview(frame)[_HEAD.size:])
                dead.append(DeadLetter(self._read_record(offset, length), reason, status, died))
            self._state = st
            self._size = size
            self._rewrite()
        except OSError as e:
            raise SpoolError(f"relay spool {self.path}: cannot use {self.log_path}: {_why(e)}") from None
        torn = (good, size - good) if good < size else None
        return _Loaded(records, dead, st.high, torn, over)

    def _replay(self) -> tuple[_State, int, int]:
        """The live state of the log, how far it is whole, and its size."""
        st = _State()
        size = os.fstat(self._fd).st_size
        os.lseek(self._fd, 0, os.SEEK_SET)
        reader = io.BufferedReader(io.FileIO(self._fd, "r", closefd=False), 1 << 20)
        magic = reader.read(len(MAGIC))
        if magic != MAGIC:
            if len(magic) < len(MAGIC) and MAGIC.startswith(magic):
                return st, 0, size
            raise SpoolError(
                f"relay spool {self.path}: {self.log_path} is not a chloed spool log "
                "(or of another version): move it away")
        pos = len(MAGIC)
        while True:
            head = reader.read(_HEAD.size)
            if len(head) < _HEAD.size:
                break
            length, crc = _HEAD.unpack(head)
            if not _OP.size <= length <= MAX_FRAME:
                break
            body = reader.read(length)
            if len(body) < length or zlib.crc32(body, zlib.crc32(head[:4])) != crc:
                break
            op, key = _OP.unpack_from(body)
            try:
                _check(op, body)
            except (ValueError, struct.error):
                break
            n = _HEAD.size + length
            st.apply(op, key, pos, n, head + body if op == DEAD else None)
            pos += n
        return st, pos, size

    def _read_record(self, offset: int, length: int) -> Record:
        frame = os.pread(self._fd, length, offset)
        if len(frame) < length:
            raise OSError(errno.EIO, "the log is shorter than it was a moment ago")
        body = memoryview(frame)[_HEAD.size:]
        key, arrived, kind, lane, delivery, start = _parse_add(body)
        record = Record(lane, kind, delivery, arrived, bytes(body[start:]))
        record.key = "d%d" % key
        record.token = key
        return record


class _Output:
    """A new log being written by :meth:`DiskSpool._rewrite`, buffered."""

    def __init__(self, spool: DiskSpool, fd: int) -> None:
        self._spool = spool
        self._fd = fd
        self.pos = 0
        self._written = 0
        self._buffers: list[bytes] = []

    def add(self, data: bytes) -> None:
        self._buffers.append(data)
        self.pos += len(data)
        if self.pos - self._written >= COPY_CHUNK:
            self.flush()

    def copy(self, src: int, offset: int, length: int) -> None:
        while length > 0:
            n = min(length, COPY_CHUNK)
            data = os.pread(src, n, offset)
            if len(data) < n:
                raise OSError(errno.EIO, "the log is shorter than it was a moment ago")
            self.add(data)
            offset += n
            length -= n

    def flush(self) -> None:
        self._spool._write_all(self._fd, self._buffers, self._written)
        self._buffers = []
        self._written = self.pos


def _sync_dir(path: str) -> None:
    """Make a rename in ``path`` durable."""
    fd = os.open(path, _DIR_FLAGS)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _number(key: str) -> int | None:
    """The N of a key ``dN``; None for anything else."""
    if key[:1] == "d" and key[1:].isascii() and key[1:].isdigit():
        return int(key[1:])
    return None


def _lock(path: str) -> int:
    """Make the directory ``path`` if need be and lock it: the lock file's
    descriptor, whose closing releases it.

    :raises SpoolError: ``<path>: why`` it cannot be had.
    """
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except FileExistsError:
        raise SpoolError(f"{path}: not a directory") from None
    except OSError as e:
        raise SpoolError(f"{path}: cannot create the directory: {_why(e)}") from None
    lock_path = os.path.join(path, LOCK_NAME)
    try:
        fd = os.open(lock_path, _FILE_FLAGS, 0o600)
    except OSError as e:
        raise SpoolError(f"{path}: cannot lock {lock_path}: {_why(e)}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SpoolError(f"{path}: in use by another chloed (it holds {lock_path})") from None
    except OSError as e:
        os.close(fd)
        raise SpoolError(f"{path}: cannot lock {lock_path}: {_why(e)}") from None
    return fd


def probe(path: str) -> None:
    """What chloed checks of ``relay_spool_path`` before it starts (the
    reactor not running yet, so a blocking look costs nobody): that the
    directory can be made, is not locked by another chloed, and takes a
    file. The spool's own start reads the log.

    :raises SpoolError: saying what is wrong, for one line and exit 1.
    """
    os.close(_lock(path))
    probe_path = os.path.join(path, ".probe")
    try:
        fd = os.open(probe_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, MAGIC)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe_path)
    except OSError as e:
        raise SpoolError(f"{path}: cannot write in it: {_why(e)}") from None
