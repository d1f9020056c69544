#!/usr/bin/env bash
# Boots one quadlet test guest: systemd as PID 1 under systemd-nspawn, on a
# throw-away copy of the cached root filesystem (--ephemeral), its sshd on
# 127.0.0.1:PORT. Several guests at once: each NAME has its own machine
# name, cgroup, state dir and port.
#   up.sh NAME PORT STATE_DIR      (prints "ready" once ssh answers)
# The workarounds this machine's hybrid v1/v2 cgroups need (see
# ../shared/testbed/quadlet): a unified hierarchy for the guest, a syscall
# filter that lets crun use keyrings and bpf, nspawn in a cgroup of its own.
set -euo pipefail
NAME=$1 PORT=$2 S=$3
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
nspawn_cmd
[ -x "$ROOTFS/usr/bin/podman" ] || { echo "no root filesystem at $ROOTFS: run rootfs.sh first" >&2; exit 1; }
mkdir -p "$S/bridge"; rm -f "$S"/bridge/*.sock
CG=fleetgate-quadlet-$NAME
echo "$CG" > "$S/cgroup"
[ -d /run/systemd/nspawn ] || touch "$S/.created-run-nspawn"
(
  CG2=/sys/fs/cgroup/unified; [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ] && CG2=/sys/fs/cgroup
  mkdir -p "$CG2/$CG"; echo $BASHPID > "$CG2/$CG/cgroup.procs"
  if [ -d /sys/fs/cgroup/systemd ]; then mkdir -p "/sys/fs/cgroup/systemd/$CG"; echo $BASHPID > "/sys/fs/cgroup/systemd/$CG/cgroup.procs"; fi
  export SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1
  exec setsid "${NSPAWN[@]}" -D "$ROOTFS" --ephemeral --boot --machine="fq-$NAME" --register=no --keep-unit \
     --private-network --console=read-only --link-journal=no --resolv-conf=off --timezone=off \
     --system-call-filter="add_key keyctl request_key bpf" --bind="$S/bridge:/run/hostbridge"
) </dev/null >"$S/nspawn.log" 2>&1 &
echo $! > "$S/nspawn.pid"
for _ in $(seq 1 600); do [ -S "$S/bridge/ssh.sock" ] && break
  kill -0 "$(cat "$S/nspawn.pid")" 2>/dev/null || { echo "nspawn died:" >&2; tail -30 "$S/nspawn.log" >&2; exit 1; }
  sleep 0.1; done
[ -S "$S/bridge/ssh.sock" ] || { echo "the guest's ssh socket never appeared" >&2; tail -30 "$S/nspawn.log" >&2; exit 1; }
setsid "$SOCAT" "TCP-LISTEN:$PORT,bind=127.0.0.1,reuseaddr,fork" "UNIX-CONNECT:$S/bridge/ssh.sock" </dev/null >/dev/null 2>&1 &
echo $! > "$S/socat.pid"
SSH=(ssh -p "$PORT" -i "$KEYFILE" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o BatchMode=yes root@127.0.0.1)
for _ in $(seq 1 300); do "${SSH[@]}" true 2>/dev/null && break; sleep 0.2; done
# Booted: the system and fg's lingering user manager. Rootless podman's
# network (pasta) opens /dev/net/tun, which nspawn creates 0600 in the
# guest's own /dev. Rootless Quadlet units wait (90 s at most) for the
# system's network-online.target, which nothing pulls in a guest without a
# network manager: started here, as a real host's would be.
"${SSH[@]}" 'systemctl is-system-running --wait >/dev/null; chmod 0666 /dev/net/tun; systemctl start network-online.target; for i in $(seq 1 100); do systemctl is-active --quiet user@1000.service && break; sleep 0.1; done' || true
echo ready
