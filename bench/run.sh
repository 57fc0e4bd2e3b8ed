#!/usr/bin/env bash
# `make bench`: Steelyard against HAProxy and nginx on this machine (see bench/RESULTS.md).
#
#   bash bench/run.sh              the HTTP benchmark (~4 min), then the L4 one (~3.5 min) if Steelyard
#                                  has tcp listeners (BENCH_TCP=0 skips it, =1 forces it), then
#                                  pick() costs of the balancers (~2 min; BENCH_PICK=0 skips it)
#   bash bench/run.sh --quick      a short smoke run
#   bash bench/run.sh --wait-quiet 600   first wait (up to 600 s) for a quiet machine
#
# Installs what is missing (haproxy, nginx + its stream module, wrk, iperf3; py-spy into .venv).
# Every process the harness starts is recorded in a pid file and stopped on exit, by PID.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=.venv/bin/python
[ -x "$PY" ] || { echo "bench: $PY missing; run 'make bench' (it creates .venv)" >&2; exit 1; }

PIDFILE=$(mktemp /tmp/steelyard-bench-pids.XXXXXX)
export BENCH_PIDFILE=$PIDFILE
POLICY_RC_CREATED=0
CHILD=""

# run a harness in the background and wait for it, so that a signal reaches our traps at once
# (bash runs traps only between commands) and is passed on to the harness, which stops its own
run_harness() {
    "$@" &
    CHILD=$!
    local rc=0
    wait "$CHILD" || rc=$?
    CHILD=""
    return "$rc"
}

cleanup() {
    local pid
    if [ -n "$CHILD" ] && kill -0 "$CHILD" 2>/dev/null; then
        kill -TERM "$CHILD" 2>/dev/null || true
        wait "$CHILD" 2>/dev/null || true
    fi
    if [ -s "$PIDFILE" ]; then
        while read -r pid; do
            [ -n "$pid" ] || continue
            if kill -0 "$pid" 2>/dev/null; then
                echo "bench: stopping leftover pid $pid" >&2
                kill -TERM "$pid" 2>/dev/null || true
            fi
        done <"$PIDFILE"
        sleep 1
        while read -r pid; do
            [ -n "$pid" ] || continue
            kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
        done <"$PIDFILE"
    fi
    rm -f "$PIDFILE"
    if [ "$POLICY_RC_CREATED" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- tools -------------------------------------------------------------------------------
missing=()
for tool in haproxy nginx wrk iperf3; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || missing+=(libnginx-mod-stream)
if [ ${#missing[@]} -gt 0 ]; then
    echo "bench: installing ${missing[*]}" >&2
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO=sudo
    # keep Debian from starting system-wide haproxy/nginx services as a side effect
    if [ ! -e /usr/sbin/policy-rc.d ] && [ -z "$SUDO" ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        POLICY_RC_CREATED=1
    fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
        haproxy nginx libnginx-mod-stream wrk iperf3 >/dev/null
fi
if [ ! -x .venv/bin/py-spy ]; then
    .venv/bin/pip install --quiet py-spy || echo "bench: py-spy not installed; no profile" >&2
fi

# --- HTTP (issue 2) ------------------------------------------------------------------------
run_harness "$PY" bench/http_bench.py "$@"

# --- L4 (issue 5): only once Steelyard has tcp listeners ------------------------------------
case "${BENCH_TCP:-auto}" in
    0) ;;
    1) run_harness "$PY" bench/tcp_bench.py "$@" ;;
    *) run_harness "$PY" bench/tcp_bench.py --if-supported "$@" ;;
esac

# --- balancing (issue 3): pick() cost per algorithm, table build times ----------------------
if [ "${BENCH_PICK:-1}" != 0 ]; then
    pick_args=(--clock cpu)
    for a in "$@"; do [ "$a" = --quick ] && pick_args+=(--picks 4000 --repeat 3); done
    mkdir -p bench/out
    echo "bench: pick() costs (bench/bench_pick.py ${pick_args[*]}) -> bench/out/pick-latest.txt" >&2
    run_harness "$PY" bench/bench_pick.py "${pick_args[@]}" >bench/out/pick-latest.txt
    cat bench/out/pick-latest.txt
fi
