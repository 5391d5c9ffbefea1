"""Summarise a py-spy ``--format raw`` profile: self and inclusive shares.

    python bench/pyspy_top.py PROFILE.txt [N]
"""

from __future__ import annotations

import collections
import sys


def name(frame: str) -> str:
    """``func (path/file.py:line)`` → ``func (file.py)``."""
    frame = frame.strip()
    if " (" not in frame:
        return frame
    func, where = frame.split(" (", 1)
    return f"{func} ({where.split(':')[0].split('/')[-1]})"


def main() -> None:
    path, top = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 12
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            if not stack:
                continue
            n = int(count)
            total += n
            frames = [name(x) for x in stack.split(";")]
            own[frames[-1]] += n
            for frame in set(frames):
                inclusive[frame] += n
    print(f"{total} samples\nself %  function")
    for frame, n in own.most_common(top):
        print(f"{100 * n / total:6.1f}  {frame}")
    print("inclusive %  function (the fan-out path)")
    for frame, n in inclusive.most_common():
        if any(key in frame for key in ("_fan_out", "deliver", ".write (", "doWrite", "doPoll", "send_now")):
            print(f"{100 * n / total:6.1f}  {frame}")


if __name__ == "__main__":
    main()
