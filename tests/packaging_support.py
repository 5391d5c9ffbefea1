"""What the packaging tests share (test_deb, test_rpm, test_wheel): a
command that must succeed, and a copy of the tree to build from."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def run(cmd: list[str], timeout: float = 180, **kwargs) -> subprocess.CompletedProcess:
    """Run ``cmd``; fail with the ends of its output unless it exits 0."""
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert result.returncode == 0, (
        f"{' '.join(cmd)} exited {result.returncode}\n--- stdout\n{result.stdout[-6000:]}"
        f"\n--- stderr\n{result.stderr[-6000:]}"
    )
    return result


def copy_tree(dest: Path, untracked: bool = True) -> None:
    """The files git tracks (and, with ``untracked``, the untracked ones it
    does not ignore), as they are in the working tree."""
    cmd = ["git", "-C", str(ROOT), "ls-files", "-z", "--cached"]
    if untracked:
        cmd += ["--others", "--exclude-standard"]
    for name in sorted(set(filter(None, run(cmd).stdout.split("\0")))):
        source = ROOT / name
        if not source.is_symlink() and not source.exists():
            continue  # deleted in the working tree
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)


def serves_health(command: list[str], **popen: Any) -> None:
    """``command`` (a ``twistd chloe`` listening on ``--listen``'s port, the
    last ``tcp:PORT`` of it) answers ``/health`` ``ok`` within a minute and
    exits 0 on SIGTERM, with no traceback in its output."""
    port = int(next(arg for arg in reversed(command) if arg.startswith("tcp:")).split(":")[1])
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)
    try:
        deadline, body, last = time.monotonic() + 60, b"", None
        while time.monotonic() < deadline and process.poll() is None and not body:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as response:
                    body = response.read()
            except OSError as exc:  # not listening yet
                last = exc
                time.sleep(0.2)  # start-up poll, not synchronisation
        assert b'"ok"' in body, f"no /health answer (exit {process.poll()}): {last}"
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
        assert process.stdout is not None
        output = process.stdout.read()
    assert code == 0, output
    assert "Traceback" not in output, output
