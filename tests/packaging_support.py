"""What the packaging tests share (test_deb, test_rpm, test_wheel): a
command that must succeed, and a copy of the tree to build from."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

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
