#!/usr/bin/env bash
# Run N CPU processes of main.py on this machine as one multi-host job, the way the tests
# exercise the multi-host path: each process simulates D CPU devices, and they join through
# jax.distributed.initialize with an explicit coordinator on localhost (gloo collectives).
#
#   bash launch/local.sh N D --config=configs/demo.py --workdir=workdir/local [main.py flags]
#
# Process 0's output goes to this terminal, process i's to <workdir>/process_<i>.log.
# Ctrl-C or SIGTERM reaches every process: they agree on a step, save one checkpoint and
# exit 0; the same command again resumes from it.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -lt 2 ] || ! [[ "$1" =~ ^[1-9][0-9]*$ && "$2" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: bash launch/local.sh NUM_PROCESSES DEVICES_PER_PROCESS --config=... --workdir=... [flags]" >&2
  exit 2
fi
N=$1 D=$2
shift 2
WORKDIR=""
for arg in "$@"; do
  case "$arg" in --workdir=*) WORKDIR=${arg#--workdir=} ;; esac
done
if [ -z "$WORKDIR" ]; then
  echo "launch/local.sh: pass --workdir=<dir> (the per-process logs go there too)" >&2
  exit 2
fi
mkdir -p "$WORKDIR"
PY=${PYTHON:-.venv/bin/python}
PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')

pids=()
forward() {  # pass the signal on to every process; they stop together at an agreed step
  for p in "${pids[@]}"; do kill -s "$1" "$p" 2>/dev/null || true; done
}
trap 'forward TERM' TERM
trap 'forward INT' INT

for ((i = N - 1; i >= 0; i--)); do
  env JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=$D ${XLA_FLAGS:-}" \
    "$PY" main.py "$@" --coordinator_address="localhost:$PORT" --num_processes="$N" \
    --process_id="$i" > >(if [ "$i" = 0 ]; then cat; else cat > "$WORKDIR/process_$i.log"; fi) 2>&1 &
  pids+=($!)
done

status=0
for p in "${pids[@]}"; do
  while true; do  # `wait` returns early when a trapped signal arrives; wait again
    set +e; wait "$p"; rc=$?; set -e
    if kill -0 "$p" 2>/dev/null; then continue; fi
    break
  done
  if [ "$rc" != 0 ] && [ "$status" = 0 ]; then status=$rc; fi
done
exit "$status"
