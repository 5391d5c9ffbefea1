"""The benchmark kit still works: a small fan-out run end to end.

``bench/run.py`` builds the C load generator, starts a real chloed, holds a
few hundred WebSocket subscribers, publishes through ``POST /send`` and
counts what comes back. Nothing here checks speed (the machine is shared
and timings are noise); it checks that every message published reached
every subscriber and that nothing failed along the way, so the bench
cannot quietly rot while nobody runs it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.servers import TWISTD

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(REPO, "bench", "run.py")


def test_a_small_fanout_run_delivers_every_message_without_errors() -> None:
    """A quick fan-out (100 and 300 subscribers of one channel: saturation,
    then two fixed rates) reports deliveries, and no connection failure,
    disconnect, error frame, refused publish or lost message."""
    assert shutil.which("gcc") or shutil.which("cc"), "the bench needs a C compiler (gcc) to build bench/loadgen.c"
    result = subprocess.run(
        [sys.executable, RUN, "fanout", "--quick", "--no-write", "--twistd", TWISTD],
        capture_output=True, text=True, timeout=180, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    runs = report["scenarios"]["fanout"]
    assert {(r["n"], r["kind"]) for r in runs} == {
        (n, kind) for n in (100, 300) for kind in ("saturate", "rate-half", "rate-fixed")
    }
    for run in runs:
        context = json.dumps(run)
        assert run["connected"] == run["n"], context
        assert run["deliveries"] > 0, context
        assert run["total_delivered"] == run["total_expected"] > 0, context
        assert run["errors"] == 0, context
    assert report["errors"] == 0
    for server in report["server_logs"]:
        assert server["issues"] == 0, server


def test_a_small_pusher_fanout_run_delivers_every_message_without_errors() -> None:
    """The same quick fan-out over the Pusher protocol (``--proto pusher``):
    subscribers on ``/app/{key}``, publishes signed to ``POST /apps/{id}/events``;
    every event reaches every subscriber, nothing fails."""
    assert shutil.which("gcc") or shutil.which("cc"), "the bench needs a C compiler (gcc) to build bench/loadgen.c"
    result = subprocess.run(
        [sys.executable, RUN, "fanout", "--quick", "--proto", "pusher", "--no-write", "--twistd", TWISTD],
        capture_output=True, text=True, timeout=180, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    runs = report["scenarios"]["fanout"]
    assert {(r["n"], r["kind"], r["proto"]) for r in runs} == {
        (n, kind, "pusher") for n in (100, 300) for kind in ("saturate", "rate-half", "rate-fixed")
    }
    for run in runs:
        context = json.dumps(run)
        assert run["connected"] == run["n"], context
        assert run["deliveries"] > 0, context
        assert run["total_delivered"] == run["total_expected"] == run["total_published"] * run["n"] > 0, context
        assert run["errors"] == 0, context
    assert report["errors"] == 0
    for server in report["server_logs"]:
        assert server["issues"] == 0, server


def test_a_small_multinode_run_delivers_every_message_on_every_node() -> None:
    """``multinode --quick`` on a real redis-server: 300 subscribers of one
    channel on 1 node (memory, then redis backend) and on 2 nodes (150 each,
    every message published on node 1), then 2 x 150 idle WebSockets. Every
    message reaches every subscriber on both nodes, nothing fails, and Redis'
    work per publish is measured."""
    from tests.redis_server import REDIS_SERVER

    assert shutil.which("gcc") or shutil.which("cc"), "the bench needs a C compiler (gcc) to build bench/loadgen.c"
    if not os.path.exists(REDIS_SERVER):
        pytest.skip("redis-server is not installed (scripts/install-system-deps installs it)")
    result = subprocess.run(
        [sys.executable, RUN, "multinode", "--quick", "--no-write", "--twistd", TWISTD,
         "--redis-server", REDIS_SERVER],
        capture_output=True, text=True, timeout=180, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    runs = report["scenarios"]["multinode"]
    assert sorted((r["config"], r["kind"]) for r in runs) == [
        ("memory-1", "saturate"), ("redis-1", "saturate"), ("redis-2", "idle"), ("redis-2", "saturate")]
    for run in runs:
        context = json.dumps(run)
        assert run["connected"] == run["connected_end"] == run["n"], context
        assert run["errors"] == 0, context
        assert run["servers"] == run["nodes"], context
        if run["kind"] == "saturate":
            assert run["deliveries"] > 0, context
            assert run["total_delivered"] == run["total_expected"] == run["total_published"] * run["n"] > 0, context
        if run["config"] != "memory-1":
            assert run["redis_connect"]["calls"].get("set", 0) >= run["n"], context  # one session key each
        if run["config"] != "memory-1" and run["kind"] == "saturate":
            assert run["redis_publish"]["calls_per_publish"]["publish"] >= 1, context
    two = next(r for r in runs if r["config"] == "redis-2" and r["kind"] == "saturate")
    assert two["ports"] == 2 and all(cpu > 0 for cpu in two["server_cpu_s_each"]), json.dumps(two)
    assert report["errors"] == 0
    for server in report["server_logs"]:
        assert server["issues"] == 0, server


def test_a_small_relay_run_on_the_disk_spool_hears_accepted_then_ack_for_every_send() -> None:
    """``relay --spool disk --quick``: 50 WebSocket clients send through a
    chloed with ``relay_spool = "disk"`` (a fresh directory under
    bench/.build) to the loader's app server, saturated then at half that
    rate. Every send hears ``accepted`` (counted apart, with its own
    latency) and then its ``ack``, nothing fails, and the spool directory is
    gone afterwards."""
    assert shutil.which("gcc") or shutil.which("cc"), "the bench needs a C compiler (gcc) to build bench/loadgen.c"
    result = subprocess.run(
        [sys.executable, RUN, "relay", "--spool", "disk", "--quick", "--reps", "1", "--no-write", "--twistd", TWISTD],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    runs = report["scenarios"]["relay"]
    assert sorted((r["spool"], r["kind"]) for r in runs) == [("disk", "rate-half"), ("disk", "saturate")]
    for run in runs:
        context = json.dumps(run)
        assert run["connected"] == run["n"] == 50, context
        assert run["deliveries"] > 0, context  # acks in the window
        assert run["total_delivered"] == run["total_published"] > 0, context  # every send acked
        assert run["accepted"] == run["total_published"], context  # ... and accepted first
        assert run["accepted_lat_n"] > 0 and 0 <= run["accepted_p50_ms"] <= run["accepted_p99_ms"], context
        assert run["errors"] == 0 and run["error_frames"] == 0, context
        assert not os.path.exists(os.path.join(REPO, run["spool_path"])), context
    assert report["errors"] == 0
    for server in report["server_logs"]:
        assert server["issues"] == 0, server


def _redis_server_or_skip() -> str:
    from tests.redis_server import REDIS_SERVER

    assert shutil.which("gcc") or shutil.which("cc"), "the bench needs a C compiler (gcc) to build bench/loadgen.c"
    if not os.path.exists(REDIS_SERVER):
        pytest.skip("redis-server is not installed (scripts/install-system-deps installs it)")
    return REDIS_SERVER


def test_a_small_c100k_run_holds_every_connection_and_one_broadcast_reaches_all() -> None:
    """``c100k --quick`` (issue 20): 600 idle WebSockets on one chloed with
    2 workers on a real redis-server, from 2 loader processes and 2 source
    addresses, held 2 s; then one POST /send reaches every one of them.
    RSS and CPU are measured over the parent and both workers (their pids
    read from /status), redis-server apart."""
    redis_server = _redis_server_or_skip()
    result = subprocess.run(
        [sys.executable, RUN, "c100k", "--quick", "--no-write", "--twistd", TWISTD, "--redis-server", redis_server],
        capture_output=True, text=True, timeout=180, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    (run,) = report["scenarios"]["c100k"]
    context = json.dumps(run)
    assert run["workers"] == 2 and run["procs"] == 2 and run["nsrc"] == 2, context
    assert run["connected"] == run["connected_end"] == run["n"] == 600, context
    assert run["errors"] == 0 and run["disconnects"] == 0, context
    assert run["held_s"] >= 1.9, context
    assert run["broadcast_clients"] == run["broadcast_expected"] == 600 and run["broadcast_missing"] == 0, context
    assert 0 < run["broadcast_s"] < 60 and 0 <= run["broadcast_p50_ms"] <= run["broadcast_p99_ms"], context
    assert run["broadcast_status"] in (200, 202), context
    # the parent and its 2 workers, all measured; redis-server apart
    assert len(run["pids"]) == run["servers"] >= 3, context
    assert len(run["server_rss_end_kb_each"]) == run["servers"] and min(run["server_rss_end_kb_each"]) > 0, context
    assert run["rss_after_kb"] > run["rss_before_kb"] > 0, context
    assert run["aux"] == 1 and run["aux_rss_after_kb"] > 0, context
    assert report["errors"] == 0
    for server in report["server_logs"]:
        assert server["issues"] == 0, server


def test_a_small_scaling_run_delivers_every_message_with_one_and_two_workers() -> None:
    """``scaling --quick`` (issue 20): 300 subscribers of one channel on one
    chloed with workers = 1, then workers = 2, on a real redis-server,
    saturated; then 300 subscribers over 10 channels, random publishes, on
    one chloed with workers = 2 on 1, 2 and 3 redis-servers as shards. Every
    message reaches every subscriber whichever worker and shard holds it,
    Redis' commands per publish are measured (summed over the shards, and
    per shard), every redis-server is measured apart from chloed, and the
    channels are on the shards placement says."""
    redis_server = _redis_server_or_skip()
    result = subprocess.run(
        [sys.executable, RUN, "scaling", "--quick", "--reps", "1", "--no-write", "--twistd", TWISTD,
         "--redis-server", redis_server],
        capture_output=True, text=True, timeout=240, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    runs = report["scenarios"]["scaling"]
    assert sorted((r["config"], r["workers"], r["kind"]) for r in runs) == [
        ("shards-1", 2, "saturate"), ("shards-2", 2, "saturate"), ("shards-3", 2, "saturate"),
        ("workers-1", 1, "saturate"), ("workers-2", 2, "saturate")]
    for run in runs:
        context = json.dumps(run)
        assert run["connected"] == run["connected_end"] == run["n"] == 300, context
        assert run["errors"] == 0, context
        assert run["deliveries"] > 0, context
        assert run["total_delivered"] == run["total_expected"] > 0, context
        assert run["servers"] == len(run["pids"]) >= run["workers"], context
        assert run["redis_publish"]["per_publish"] > 0, context
        assert run["redis_publish"]["calls_per_publish"]["publish"] >= 1, context
        if run["config"].startswith("workers-"):
            assert run["channels"] == 1 and run["aux"] == 1, context
            assert run["total_expected"] == run["total_published"] * run["n"], context
        else:  # publishes to random ones of 10 channels, over `shards` redis-servers
            shards = run["shards"]
            assert run["config"] == f"shards-{shards}" and run["channels"] == 10 and run["random"], context
            assert run["aux"] == len(run["redis_shards"]) == shards, context  # every redis-server, apart
            assert len(run["shard_channels"]) == shards and sum(run["shard_channels"]) == 10, context
            assert run["shard_history_keys"] == run["shard_channels"], context  # where chloed put them
            assert len({s["port"] for s in run["redis_shards"]}) == shards, context
            assert abs(sum(s["per_publish"] for s in run["redis_shards"])
                       - run["redis_publish"]["per_publish"]) < 0.05 * shards, context
    two = next(r for r in runs if r["config"] == "workers-2")
    assert two["servers"] >= 3 and sum(1 for cpu in two["server_cpu_s_each"] if cpu > 0) >= 2, json.dumps(two)
    assert report["errors"] == 0
    for server in report["server_logs"]:
        assert server["issues"] == 0, server
