#!/usr/bin/env bash
# Pretrain on a Cloud TPU VM slice (v4, v5e, v5p): create it, copy this code to every
# worker, start main.py on all of them, follow the log, stop it, delete it.
#
#   launch/tpu_pod.sh create|setup|run|logs|status|stop|delete [main.py flags, for run]
#
# Environment (docs/launch_tpu.md has the whole walk-through):
#   TPU_NAME, ZONE, PROJECT   always
#   ACCELERATOR_TYPE          create: e.g. v5p-64, v5litepod-64, v4-32
#   RUNTIME_VERSION           create: default from ACCELERATOR_TYPE (v2-alpha-tpuv5,
#                             v2-alpha-tpuv5-lite, v2-alpha-tpuv6e, tpu-ubuntu2204-base)
#   SPOT=1                    create: Spot (preemptible) capacity
#   QUEUED=0                  create/status/delete: a plain TPU VM, no queued resource
#   QR_NAME                   the queued resource's name (default: TPU_NAME)
#   CONFIG, WORKDIR           run: e.g. configs/vith14.py, gs://bucket/runs/vith14
#   WORKER                    logs: which worker's log (default 0; 'all' for every worker)
#   INTERNAL_IP=1             ssh/scp over internal IPs (from a VM in the same network)
set -euo pipefail
cd "$(dirname "$0")/.."
# Empty arrays under `set -u` need bash >= 4.4 (macOS ships 3.2: brew install bash).
if ((BASH_VERSINFO[0] * 100 + BASH_VERSINFO[1] < 404)); then
  echo "tpu_pod.sh: needs bash >= 4.4, this is $BASH_VERSION" >&2; exit 2
fi

REMOTE_DIR=ijepa-jax  # on each worker, relative to the home directory

die() { echo "tpu_pod.sh: $*" >&2; exit 2; }
need() {  # need VAR... : stop with a message naming every missing variable
  local missing=() v
  for v in "$@"; do [ -n "${!v:-}" ] || missing+=("$v"); done
  [ ${#missing[@]} = 0 ] || die "set ${missing[*]} (see the top of launch/tpu_pod.sh)"
}
# Print each gcloud command before running it, so what happened can be repeated by hand.
gc() { echo "+ gcloud $(printf '%q ' "$@")" >&2; gcloud "$@"; }

need TPU_NAME ZONE PROJECT
QR_NAME=${QR_NAME:-$TPU_NAME}
LOC=(--zone="$ZONE" --project="$PROJECT")
SSH_OPTS=()
[ "${INTERNAL_IP:-0}" = 1 ] && SSH_OPTS+=(--internal-ip)

# Run one shell command on one worker or, with WORKER=all, on every worker in parallel.
on_workers() {  # on_workers WORKER COMMAND
  gc compute tpus tpu-vm ssh "$TPU_NAME" "${LOC[@]}" "${SSH_OPTS[@]}" --worker="$1" --command="$2"
}

default_runtime() {  # the JAX/PyTorch base images of https://cloud.google.com/tpu/docs/runtimes
  case "$1" in
    v6e-*) echo v2-alpha-tpuv6e ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v5litepod-*) echo v2-alpha-tpuv5-lite ;;
    v2-* | v3-* | v4-*) echo tpu-ubuntu2204-base ;;
    *) die "no default RUNTIME_VERSION for ACCELERATOR_TYPE=$1; set RUNTIME_VERSION" ;;
  esac
}

create() {
  need ACCELERATOR_TYPE
  local runtime spot=()
  runtime=${RUNTIME_VERSION:-$(default_runtime "$ACCELERATOR_TYPE")}
  [ "${SPOT:-0}" = 1 ] && spot=(--spot)
  if [ "${QUEUED:-1}" = 0 ]; then
    # A plain TPU VM: the create call itself waits until the VM exists.
    if gcloud compute tpus tpu-vm describe "$TPU_NAME" "${LOC[@]}" >/dev/null 2>&1; then
      echo "TPU VM $TPU_NAME exists; reusing it"
    else
      gc compute tpus tpu-vm create "$TPU_NAME" "${LOC[@]}" --accelerator-type="$ACCELERATOR_TYPE" \
        --version="$runtime" "${spot[@]}"
    fi
    gc compute tpus tpu-vm describe "$TPU_NAME" "${LOC[@]}" --format='value(state,health)'
    return
  fi
  # A queued resource waits in a queue for capacity (the usual way to get large or Spot
  # slices); re-running create attaches to an existing request instead of failing.
  if gcloud compute tpus queued-resources describe "$QR_NAME" "${LOC[@]}" >/dev/null 2>&1; then
    echo "queued resource $QR_NAME exists; reusing it"
  else
    gc compute tpus queued-resources create "$QR_NAME" "${LOC[@]}" --node-id="$TPU_NAME" \
      --accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$runtime" "${spot[@]}"
  fi
  echo "waiting for $QR_NAME to become ACTIVE (Ctrl-C stops waiting, not the request):"
  local state
  while true; do
    state=$(gcloud compute tpus queued-resources describe "$QR_NAME" "${LOC[@]}" \
              --format='value(state.state)')
    echo "  $(date +%H:%M:%S) $state"
    case "$state" in
      ACTIVE) break ;;
      FAILED | SUSPENDED | SUSPENDING)
        die "queued resource $QR_NAME is $state; see 'gcloud compute tpus queued-resources" \
            "describe $QR_NAME ${LOC[*]}', then 'launch/tpu_pod.sh delete' and create again" ;;
    esac
    sleep 30
  done
}

setup() {
  # Ship the committed code (HEAD), identical on every worker; uncommitted edits stay behind.
  if ! git diff --quiet HEAD 2>/dev/null; then
    echo "tpu_pod.sh: warning: uncommitted changes are not copied (git archive HEAD)" >&2
  fi
  local rev
  rev=$(git rev-parse --short HEAD)
  tarball=$(mktemp "${TMPDIR:-/tmp}/ijepa-jax.XXXXXX")
  trap 'rm -f "$tarball"' EXIT
  git archive --format=tar HEAD | gzip > "$tarball"
  gc compute tpus tpu-vm scp "$tarball" "$TPU_NAME:$REMOTE_DIR.tar.gz" "${LOC[@]}" \
    "${SSH_OPTS[@]}" --worker=all
  # JAX >= 0.11 needs Python >= 3.12; the TPU images are Ubuntu 22.04 (Python 3.10), so
  # take 3.12 from the deadsnakes PPA when no 3.12/3.13 is there. JAX_EXTRA=tpu installs
  # jax[tpu] (libtpu); IJEPA_EXTRAS=gcs installs gcsfs for gs:// workdirs and data.
  on_workers all "set -e
mkdir -p ~/$REMOTE_DIR && tar -xzf ~/$REMOTE_DIR.tar.gz -C ~/$REMOTE_DIR && rm ~/$REMOTE_DIR.tar.gz
echo $rev > ~/$REMOTE_DIR/.code_version
if ! command -v python3.12 >/dev/null && ! command -v python3.13 >/dev/null; then
  sudo add-apt-repository -y ppa:deadsnakes/ppa
  sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3.12 python3.12-venv
fi
cd ~/$REMOTE_DIR && JAX_EXTRA=tpu IJEPA_EXTRAS=gcs bash launch/setup.sh"
}

run() {
  need CONFIG WORKDIR
  case "$WORKDIR" in
    gs://* | /*) ;;
    *) echo "tpu_pod.sh: warning: WORKDIR=$WORKDIR is on each worker's own disk; checkpoints" \
            "need storage all workers share (gs://... or a shared mount)" >&2 ;;
  esac
  local args
  args=$(printf '%q ' --config="$CONFIG" --workdir="$WORKDIR" --distributed=on "$@")
  # Every worker starts its process in the background (nohup, detached from ssh) and
  # records its pid, so 'stop' signals exactly that process. A worker whose previous run
  # is still alive refuses: two processes cannot share the TPU chips.
  on_workers all "cd ~/$REMOTE_DIR || exit 1
if [ -f train.pid ] && kill -0 \$(cat train.pid) 2>/dev/null; then
  echo \"\$(hostname): main.py still running (pid \$(cat train.pid)); 'launch/tpu_pod.sh stop' first\" >&2; exit 1
fi
nohup setsid .venv/bin/python main.py $args > train.log 2>&1 < /dev/null &
echo \$! > train.pid
echo \"\$(hostname): started pid \$!, code \$(cat .code_version 2>/dev/null)\""
  echo "started; 'launch/tpu_pod.sh logs' follows worker 0 (process 0 prints the training lines)"
}

logs() {
  # Only process 0 (worker 0) prints step lines; the others show their errors, if any.
  on_workers "${WORKER:-0}" "tail -n 200 -F ~/$REMOTE_DIR/train.log"
}

status() {
  if [ "${QUEUED:-1}" != 0 ]; then
    gc compute tpus queued-resources describe "$QR_NAME" "${LOC[@]}" --format='value(state.state)'
  fi
  gc compute tpus tpu-vm describe "$TPU_NAME" "${LOC[@]}" --format='value(state,health)'
  on_workers all "cd ~/$REMOTE_DIR 2>/dev/null || { echo \"\$(hostname): not set up\"; exit 0; }
if [ -f train.pid ] && kill -0 \$(cat train.pid) 2>/dev/null; then s=running; else s=stopped; fi
echo \"\$(hostname): code \$(cat .code_version 2>/dev/null), main.py \$s; \$(tail -n 1 train.log 2>/dev/null)\""
}

stop() {
  # SIGTERM: the processes agree on a step, write one checkpoint together and exit 0;
  # 'run' with the same WORKDIR resumes from it.
  on_workers all "cd ~/$REMOTE_DIR 2>/dev/null && [ -f train.pid ] && kill -TERM \$(cat train.pid) 2>/dev/null \
&& echo \"\$(hostname): sent SIGTERM to \$(cat train.pid)\" || echo \"\$(hostname): no main.py running\""
  echo "the checkpoint is written before exit; 'launch/tpu_pod.sh status' shows when all stopped"
}

delete() {
  if [ "${QUEUED:-1}" = 0 ]; then
    gc compute tpus tpu-vm delete "$TPU_NAME" "${LOC[@]}" --quiet
  else
    # --force also deletes the TPU VM the queued resource holds.
    gc compute tpus queued-resources delete "$QR_NAME" "${LOC[@]}" --force --quiet
  fi
}

[ $# -ge 1 ] || die "usage: launch/tpu_pod.sh create|setup|run|logs|status|stop|delete [main.py flags]"
cmd=$1
shift
case "$cmd" in
  create | setup | logs | status | stop | delete)
    [ $# = 0 ] || die "$cmd takes no arguments (main.py flags go after 'run')"
    "$cmd" ;;
  run) run "$@" ;;
  *) die "unknown subcommand '$cmd': create|setup|run|logs|status|stop|delete" ;;
esac
