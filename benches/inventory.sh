#!/usr/bin/env bash
# Inventory benchmark: resolving a Hetzner Cloud label selector against the
# OpenAPI-validated stand-in of tests/cli/hcloud_server.rs (loopback), with
# the real fleetgate binary (the test build: debug).
#
# It runs the ignored test `hcloud::bench_inventory`, which times the same
# `plan` (one client changed) three ways in one run — without HCLOUD_TOKEN
# (no inventory: the baseline), with the selector resolving to 1 server (one
# page request), and to 500 servers (10 pages of 50) — and reports the
# inventory's cost (each minus the baseline) and the ratio 10 pages / 1 page.
# Then it times a real one-host deploy through the inventory (sshd on
# loopback) and reports the share of one page in it. A 50-host deploy needs
# one page too (50 per page) and takes at least as long as a 1-host deploy,
# so that share is an upper bound of inventory's share of a 50-host deploy.
# On the real API each request costs a round trip to Hetzner (~50-150 ms
# from Europe) instead of loopback's ~1 ms: add that per page.
#
#   benches/inventory.sh            # RUNS=7 medians
#   RUNS=3 benches/inventory.sh
#
# Needs what the integration tests need (scripts/setup.sh: sshd, the
# fleetgate-test user). Never a timed assertion: it prints numbers.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
RUNS=${RUNS:-7} cargo test --quiet --test cli -- --ignored --exact hcloud::bench_inventory --nocapture 2>&1 |
    grep -v '^running\|^test result\|^$'
