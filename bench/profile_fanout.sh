#!/bin/bash
# py-spy profile of chloed's fan-out at saturation: 10k WebSocket subscribers
# of one channel, the peer kit's loader (window 4) on CPU 1, chloed on CPU 0.
#
#   bench/profile_fanout.sh OUT.txt [PYTHONPATH]
#
# PYTHONPATH: another checkout's root, to profile that code with this venv
# (e.g. a `git worktree` of an older commit). Needs the peer kit built in
# /tmp/peers (cp -r ../shared/peers /tmp/peers; it builds its loader there)
# and py-spy (.venv/bin/pip install py-spy). Summarise with
# `python bench/pyspy_top.py OUT.txt`.
set -euo pipefail
out=$1
here=$(cd "$(dirname "$0")/.." && pwd)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
env ${2:+PYTHONPATH=$2} taskset -c 0 "$here/.venv/bin/twistd" -n --pidfile= chloe \
    --listen "tcp:$port:interface=127.0.0.1" --secret bench-secret > "$out.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -s -o /dev/null "127.0.0.1:$port/health" && break; sleep 0.1; done
taskset -c 1 /tmp/peers/loader --port "$port" --path /ws --proto chloed --pub-port "$port" --pub-path /send \
    --pub-ctype application/x-www-form-urlencoded --pub-body 'channel=bench&data={P}' --pids "$pid" \
    --pub-header 'Authorization: Bearer bench-secret' --n 10000 --conc 200 --settle 1 --warmup 3 --dur 8.0 \
    --window 4 > "$out.loader" 2>&1 &
loader=$!
sleep 14   # 10k connections and the warm-up: the profile falls inside the measured window
"$here/.venv/bin/py-spy" record --nonblocking --duration 5 --rate 250 --format raw -o "$out" --pid "$pid" > /dev/null
wait $loader
tail -1 "$out.loader"
