# Shared by rootfs.sh, up.sh and down.sh (sourced): where the cache and the
# tools are, derived from the recipe's own hash.
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${FLEETGATE_QUADLET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fleetgate-quadlet}
# The root filesystem is keyed by the recipe: editing rootfs.sh builds a new one.
KEY=$(sha256sum "$HERE/rootfs.sh" | cut -c1-16)
ROOTFS=$CACHE/rootfs-$KEY
TOOLS=$CACHE/tools
# The guests' login key (the rootfs authorizes it for root and `fg`).
KEYFILE=$CACHE/ssh-$KEY/id_ed25519
nspawn_cmd() {
  if command -v systemd-nspawn >/dev/null; then NSPAWN=(systemd-nspawn)
  else NSPAWN=(env "LD_LIBRARY_PATH=$TOOLS/usr/lib/x86_64-linux-gnu/systemd" "$TOOLS/usr/bin/systemd-nspawn"); fi
  SOCAT=$(command -v socat || echo "$TOOLS/usr/bin/socat")
}
