#!/usr/bin/env bash
# Sharding benchmark (issue 18): the same release to $HOSTS hosts (200) as
# one `fleetgate deploy` and as $SHARDS (4) concurrent `deploy --shard I/N`
# processes sharing their records through a bare remote, interleaved per
# round, both key exchanges. On one 2-core machine the ratio is the
# coordination overhead (records merged by leased pushes, N processes
# starting up), not the speed-up N runners would give.
#
#   benches/shard.sh                      # 200 hosts, 4 shards, 3 runs
#   HOSTS=20 RUNS=1 benches/shard.sh      # quick run
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
HOSTS=${HOSTS:-200} SHARDS=${SHARDS:-4} EXECS=0 TOOLS="fleetgate shards" exec "$here/deploy.sh"
