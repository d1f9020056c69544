#!/usr/bin/env bash
# Stops what up.sh started for one guest (by the pids it wrote), and removes its cgroups.
#   down.sh STATE_DIR
S=$1
[ -f "$S/socat.pid" ] && kill "$(cat "$S/socat.pid")" 2>/dev/null; rm -f "$S/socat.pid"
if [ -f "$S/nspawn.pid" ]; then
  P=$(cat "$S/nspawn.pid")
  kill -TERM "$P" 2>/dev/null   # nspawn --boot: a clean poweroff of the guest
  for _ in $(seq 1 150); do kill -0 "$P" 2>/dev/null || break; sleep 0.2; done
  kill -0 "$P" 2>/dev/null && { kill -KILL "$P"; sleep 1; }
  rm -f "$S/nspawn.pid"
fi
rm -f "$S"/bridge/*.sock
if [ -f "$S/.created-run-nspawn" ] && ! ls /sys/fs/cgroup/unified/fleetgate-quadlet-* /sys/fs/cgroup/fleetgate-quadlet-* >/dev/null 2>&1; then
  rm -rf /run/systemd/nspawn
fi
rm -f "$S/.created-run-nspawn"
if [ -f "$S/cgroup" ]; then
  CG=$(cat "$S/cgroup")
  for cg in "/sys/fs/cgroup/unified/$CG" "/sys/fs/cgroup/$CG" "/sys/fs/cgroup/systemd/$CG"; do
    [ -d "$cg" ] && find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null; done
fi
true
