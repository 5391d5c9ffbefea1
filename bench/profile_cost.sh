#!/bin/bash
# py-spy profile of the cost of one message (issue 16): the peer kit's
# `channels` scenario (POST /send to one of 1,000 channels of 10 WebSocket
# subscribers each, 16 publishers) or its `relay` scenario (400 WebSocket
# clients, each with one message in flight to the loader's app server),
# chloed on CPU 0, the loader on CPU 1.
#
#   bench/profile_cost.sh channels|relay OUT.txt [PYTHONPATH] [extra twistd args]
#
# PYTHONPATH: another checkout's root, to profile that code with this venv
# (e.g. `git archive OLD | tar -x -C /tmp/old`). Needs the peer kit built in
# /tmp/peers (cp -r ../shared/peers /tmp/peers; gcc -O2 -o loader loader.c)
# and py-spy (.venv/bin/pip install py-spy). Summarise with
# `python bench/pyspy_top.py OUT.txt`. py-spy stops chloed for each sample
# (not --nonblocking, whose stacks can be torn), which slows it down a little.
set -euo pipefail
scenario=$1 out=$2 pypath=${3:-}
shift $(( $# < 3 ? $# : 3 ))
here=$(cd "$(dirname "$0")/.." && pwd)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
app=()
[ "$scenario" = relay ] && app=(--app-url http://127.0.0.1:8920/updates)
env ${pypath:+PYTHONPATH=$pypath} taskset -c 0 "$here/.venv/bin/twistd" -n --pidfile= chloe \
    --listen "tcp:$port:interface=127.0.0.1" --secret bench-secret "${app[@]}" "$@" > "$out.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -s -o /dev/null "127.0.0.1:$port/health" && break; sleep 0.1; done
if [ "$scenario" = channels ]; then
  taskset -c 1 /tmp/peers/loader --port "$port" --path /ws --proto chloed --pub-port "$port" --pub-path /send \
      --pub-ctype application/x-www-form-urlencoded --pub-body 'channel=bench-{C}&data={P}' --pids "$pid" \
      --pub-header 'Authorization: Bearer bench-secret' --chloed-channel 'bench-{C}' --n 10000 --channels 1000 \
      --npub 16 --conc 200 --settle 1 --warmup 3 --dur 8.0 --connect-timeout 120 --window 64 --seed 1 \
      > "$out.loader" 2>&1 &
  settle=14
else
  taskset -c 1 /tmp/peers/loader --port "$port" --path /ws --proto chloed --pids "$pid" --relay --app-port 8920 \
      --app-mode plain --n 400 --conc 100 --settle 1 --warmup 3 --dur 8.0 --window 1 > "$out.loader" 2>&1 &
  settle=5
fi
loader=$!
sleep $settle   # connections and the warm-up: the profile falls inside the measured window
"$here/.venv/bin/py-spy" record --duration 5 --rate 200 --format raw -o "$out" --pid "$pid" > /dev/null
wait $loader
tail -1 "$out.loader"
