#!/usr/bin/env bash
# A local sandbox fleet: real sshd "servers" on loopback and a fleet repository
# whose clients point at them, for the demo (and anyone) to deploy to.
#
#   bash scripts/sandbox.sh up      # start hosts, write the fleet repo; prints where
#   bash scripts/sandbox.sh down    # stop everything the sandbox started
#
# Hosts: alpha-1 (canary), beta-1 and beta-2 (production), each an sshd on
# 127.0.0.1 with its own host key and deploy root, logging in as the
# `fleetgate-test` user (scripts/setup.sh creates it). The app `web` is a
# `command`-runtime app: python3's http.server serving the release, its
# version on /health. The fleet repository ($SANDBOX/fleet) is a clone of a
# bare remote ($SANDBOX/remote.git, its `origin`): records, approvals, the
# pipeline lock and reverts are pushed there, as they would be to a forge.
# Everything lives under $SANDBOX (/tmp/fleetgate-sandbox).
set -euo pipefail
cd "$(dirname "$0")/.."
SANDBOX=${SANDBOX:-/tmp/fleetgate-sandbox}
USER_NAME=fleetgate-test
HOSTS=(alpha-1 beta-1 beta-2)

down() {
  if [ -d "$SANDBOX" ]; then
    for pidfile in "$SANDBOX"/hosts/*/sshd.pid $(find "$SANDBOX"/hosts -name '*.pid' -path '*/deploy/*' 2>/dev/null); do
      [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
    done
    rm -rf "$SANDBOX"
    echo "sandbox: stopped and removed $SANDBOX" >&2
  fi
}

up() {
  source scripts/setup.sh
  down
  mkdir -p "$SANDBOX/hosts"
  chmod 755 "$SANDBOX" "$SANDBOX/hosts"
  ssh-keygen -q -t ed25519 -N '' -C fleetgate-sandbox -f "$SANDBOX/deploy_key"
  cp "$SANDBOX/deploy_key.pub" "$SANDBOX/authorized_keys"
  : > "$SANDBOX/known_hosts"
  port=22200
  for h in "${HOSTS[@]}"; do
    d="$SANDBOX/hosts/$h"
    mkdir -p "$d/deploy"
    chown "$USER_NAME:" "$d/deploy"
    chmod 755 "$d"
    ssh-keygen -q -t ed25519 -N '' -f "$d/host_key"
    while ! python3 -c "import socket,sys; s=socket.socket(); s.bind(('127.0.0.1',$port)); s.close(); s=socket.socket(); s.bind(('127.0.0.1',$port+1000))" 2>/dev/null; do
      port=$((port + 1))
    done
    cat > "$d/sshd_config" <<CFG
Port $port
ListenAddress 127.0.0.1
HostKey $d/host_key
PidFile $d/sshd.pid
AuthorizedKeysFile $SANDBOX/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowUsers $USER_NAME
LogLevel ERROR
CFG
    /usr/sbin/sshd -f "$d/sshd_config" -E "$d/sshd.log"
    # Pinned by host name: fleetgate connects with HostKeyAlias=<name>.
    echo "$h $(cut -d' ' -f1,2 "$d/host_key.pub")" >> "$SANDBOX/known_hosts"
    echo "$port" > "$d/port"
    port=$((port + 1))
  done

  # The fleet repository: the example's pipeline, a `web` app, clients on the sandbox hosts.
  f="$SANDBOX/fleet"
  mkdir -p "$f/pipelines/apps/web" "$f/clients"
  cp -r scripts/sandbox/web/. "$f/pipelines/apps/web/"
  cp "$SANDBOX/known_hosts" "$f/pipelines/known_hosts"
  cat > "$f/pipelines/pipeline.yaml" <<'YAML'
stages:
  - name: canary
    group: canary
    soak: 3s
  - name: production
    group: production
    approval:
      required: true
      approvers: [alice, bob]
    parallelism: 2
    max_failures: 0
on_failure:
  rollback: true
  revert: true
ssh:
  options:
    KexAlgorithms: curve25519-sha256
YAML
  client() { # name group hosts...
    local name=$1 group=$2; shift 2
    {
      echo "domain: $name.sandbox.test"
      echo "group: $group"
      echo "apps: [web]"
      echo "hosts:"
      for h in "$@"; do
        echo "  - name: $h"
        echo "    address: 127.0.0.1"
        echo "    port: $(cat "$SANDBOX/hosts/$h/port")"
        echo "    user: $USER_NAME"
        echo "    deploy_root: $SANDBOX/hosts/$h/deploy"
      done
      echo "vars:"
      echo "  version: \"1\""
      echo "  health: ok"
    } > "$f/clients/$name.yaml"
  }
  client alpha canary alpha-1
  client beta production beta-1 beta-2
  git -C "$f" init -q -b main
  git -C "$f" config user.name sandbox
  git -C "$f" config user.email sandbox@localhost
  git -C "$f" add -A
  git -C "$f" commit -qm "sandbox fleet"
  git init -q --bare -b main "$SANDBOX/remote.git"
  git -C "$f" remote add origin "$SANDBOX/remote.git"
  git -C "$f" push -q origin main
  echo "sandbox: hosts ${HOSTS[*]} up; fleet repository $f (origin: $SANDBOX/remote.git); deploy key $SANDBOX/deploy_key" >&2
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
