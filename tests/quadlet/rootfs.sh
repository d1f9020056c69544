#!/usr/bin/env bash
# Builds (once) the root filesystem of the quadlet test guests: Debian 13
# (podman 5.4 with Quadlet, systemd 257, OpenSSH), podman-compose, and what
# rootless podman needs, with the workarounds of a host whose cgroups are
# hybrid v1/v2 (derived from ../shared/testbed/quadlet). Cached in
# $CACHE/rootfs-<hash of this file>: built in a temp dir and renamed, under
# a lock, so concurrent test processes build it once. Prints its path and
# the guests' login key's.
# Needs root, debootstrap, systemd-nspawn and socat: installed from Debian's
# packages when missing: unpacked (apt-get download, dpkg -x) into
# $CACHE/tools, so the host's own packages stay as they are (systemd-container
# would pull systemd onto a host that does not boot with it);
# FLEETGATE_QUADLET_TOOLS=apt installs them with apt-get instead.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9
if [ -x "$ROOTFS/usr/bin/podman" ] && [ -f "$KEYFILE" ]; then printf '%s\n%s\n' "$ROOTFS" "$KEYFILE"; exit 0; fi
# The tools: the host's when it has them, else Debian's packages.
if ! { command -v systemd-nspawn && command -v debootstrap && command -v socat; } >/dev/null \
   && [ ! -x "$TOOLS/usr/bin/systemd-nspawn" ]; then
  if [ "${FLEETGATE_QUADLET_TOOLS:-extract}" = apt ]; then
    echo "quadlet rootfs: apt-get install debootstrap systemd-container socat" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      debootstrap systemd-container socat >/dev/null
  else
    mkdir -p "$CACHE/debs" "$TOOLS"
    echo "quadlet rootfs: apt-get download debootstrap systemd-container socat into $TOOLS" >&2
    (cd "$CACHE/debs" && { apt-get download systemd-container libsystemd-shared debootstrap socat >&2 ||
      { apt-get update -qq && apt-get download systemd-container libsystemd-shared debootstrap socat >&2; }; })
    for f in "$CACHE"/debs/*.deb; do dpkg -x "$f" "$TOOLS"; done
  fi
fi
if command -v debootstrap >/dev/null; then DEBOOTSTRAP=(debootstrap)
else DEBOOTSTRAP=(env "DEBOOTSTRAP_DIR=$TOOLS/usr/share/debootstrap" "$TOOLS/usr/sbin/debootstrap"); fi
T=$(mktemp -d "$CACHE/.build.XXXXXX")
trap 'rm -rf "$T"' EXIT
R=$T/rootfs
echo "quadlet rootfs: debootstrap trixie into $ROOTFS (about a minute, once)" >&2
"${DEBOOTSTRAP[@]}" --variant=minbase \
  --include=systemd,systemd-sysv,dbus,dbus-user-session,libpam-systemd,openssh-server,podman,podman-compose,crun,conmon,netavark,aardvark-dns,passt,catatonit,uidmap,curl,iproute2,nftables,iptables,busybox-static \
  trixie "$R" >"$T/debootstrap.log" 2>&1 || { tail -30 "$T/debootstrap.log" >&2; exit 1; }
mkdir -p "$T/ssh"
ssh-keygen -q -t ed25519 -N '' -f "$T/ssh/id_ed25519" -C fleetgate-quadlet
install -d -m700 "$R/root/.ssh"
install -m600 "$T/ssh/id_ed25519.pub" "$R/root/.ssh/authorized_keys"
# A rootless user, lingering (its systemd --user runs from boot), with subordinate ids.
chroot "$R" useradd --create-home --shell /bin/sh --uid 1000 fg
chroot "$R" usermod -p '*' fg
printf 'fg:100000:65536\n' > "$R/etc/subuid"; printf 'fg:100000:65536\n' > "$R/etc/subgid"
install -d -o 1000 -g 1000 -m700 "$R/home/fg/.ssh"
install -o 1000 -g 1000 -m600 "$T/ssh/id_ed25519.pub" "$R/home/fg/.ssh/authorized_keys"
mkdir -p "$R/var/lib/systemd/linger"; touch "$R/var/lib/systemd/linger/fg"
echo fq-guest > "$R/etc/hostname"
printf '127.0.0.1 localhost fq-guest\n::1 localhost\n' > "$R/etc/hosts"
# sshd reachable from the host through a unix socket in a bind-mounted dir
# (the guest has a private network namespace).
cat > "$R/etc/systemd/system/sshd-bridge.socket" <<'U'
[Socket]
ListenStream=/run/hostbridge/ssh.sock
SocketMode=0600
Accept=yes
[Install]
WantedBy=sockets.target
U
cat > "$R/etc/systemd/system/sshd-bridge@.service" <<'U'
[Service]
ExecStart=-/usr/sbin/sshd -i
StandardInput=socket
RuntimeDirectory=sshd
RuntimeDirectoryPreserve=yes
U
ln -sf /etc/systemd/system/sshd-bridge.socket "$R/etc/systemd/system/sockets.target.wants/sshd-bridge.socket"
for u in apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer fstrim.timer systemd-networkd-wait-online.service ssh.service ssh.socket; do
  ln -sf /dev/null "$R/etc/systemd/system/$u"; done
# This host binds every cgroup controller to v1, so the guest's cgroup2 tree
# has none: podman's default pids_limit makes crun fail without a pids controller.
mkdir -p "$R/etc/containers/containers.conf.d"
printf '[containers]\npids_limit = 0\n' > "$R/etc/containers/containers.conf.d/50-no-pids-controller.conf"
# A tiny image (no registry): static busybox; imported by the tests.
I=$(mktemp -d); mkdir -p "$I/bin" "$I/www"
cp "$R/usr/bin/busybox" "$I/bin/busybox"; ln -s busybox "$I/bin/sh"
tar -C "$I" -cf "$R/root/tiny.tar" .; rm -rf "$I"
install -o 1000 -g 1000 -m644 "$R/root/tiny.tar" "$R/home/fg/tiny.tar"
rm -rf "$ROOTFS" "$(dirname "$KEYFILE")"
mv "$T/ssh" "$(dirname "$KEYFILE")"
mv "$R" "$ROOTFS"
# Root filesystems of earlier recipes are stale: only this one is used.
for old in "$CACHE"/rootfs-* "$CACHE"/ssh-*; do
  case $old in "$ROOTFS"|"$(dirname "$KEYFILE")") ;; *) rm -rf "$old" ;; esac
done
printf '%s\n%s\n' "$ROOTFS" "$KEYFILE"
