#!/usr/bin/env bash
# Proxy switch benchmark: requests per second and p99 latency through a real
# reverse proxy (Debian's Caddy and nginx) during a blue/green deploy, as
# ratios against the same load with no deploy running; the target is p99
# during the switch ≤ 2× steady state. Real fleetgate binary (the test
# build: debug), a real sshd host on loopback, the app python3's
# http.server in two slots.
#
# It runs the ignored test `proxy_bench::bench_switch`: per proxy kind, one
# warm-up deploy sizes the window W (its duration under load + 1 s, whole
# seconds), then RUNS times alternately a steady window (load for W, no
# deploy) and a switch window (the same load for W, a blue/green deploy of
# a new version started 0.5 s in). Two generators measure each window at
# the same time: the in-test load generator (tests/cli/load.rs, 4 workers)
# and wrk (-t2 -c8). It prints medians, the ratios switch/steady, the
# failures seen during the switches (there should be none), and whether
# the p99 target is met.
#
#   benches/proxy.sh            # RUNS=5 medians (~3 minutes)
#   RUNS=3 benches/proxy.sh
#
# Needs what the integration tests need (scripts/setup.sh: sshd, the
# fleetgate-test user, caddy, nginx, python3) and wrk. Never a timed
# assertion: it prints numbers.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
RUNS=${RUNS:-5} cargo test --quiet --test cli -- --ignored --exact proxy_bench::bench_switch --nocapture 2>&1 |
    grep -v '^running\|^test result\|has been running for over\|^$'
