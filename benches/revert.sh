#!/usr/bin/env bash
# Revert benchmark: how fast `fleetgate run` undoes a change whose health gate
# fails. $HOSTS real sshd hosts on loopback, one canary client per host, the
# canary stage with parallelism = HOSTS and max_failures 0; the app `web`
# (runtime `command`) serves its release with python3's http.server on port
# ssh+1000 and an HTTP health gate expects "ok" in GET /health.
#
# Each round, on a fleet repo whose `origin` is a bare repo on disk:
#   1. baseline: a healthy new version is committed, pushed and rolled out
#      with `fleetgate run --base PREV --head NEW` (a plain deploy of the same
#      hosts: connect, upload, switch, start, health gate, records pushed);
#   2. a broken version (health: bad) is committed, pushed and run: its gate
#      fails on every host, fleetgate rolls the stage back (concurrently) and
#      pushes a `git revert` to main on origin.
# A watcher (benches/revert_fleet.py watch) runs fleetgate as its child and,
# on one monotonic clock, timestamps every stderr line as it arrives, polls
# every host's /health (every POLL_MS ms from the first failed gate on;
# every 100 ms before) for the version it serves, and polls
# `git ls-remote origin refs/heads/main`. It reports
#   (a) first failed health gate -> every host serves the previous release
#       (target: < 5 s + one health interval), also per host and from the last
#       failed gate (when the stage is decided and rollback starts);
#   (b) first failed health gate -> the revert commit is on origin;
# as medians over RUNS rounds, with ratios against the target, the health
# interval and the baseline deploy (time until every host serves the new
# release, and wall time), and a timeline of where the time goes. Each round
# is checked: exit codes 0 and 1, every host seen on the new release and then
# back on the previous one, and origin's main a revert of the broken commit
# (Fleetgate-Reverts / Fleetgate-Failed-Gate trailers, parent = the broken
# commit, tree = the previous release's tree). The load average is printed.
#
#   benches/revert.sh                          # 10 hosts, 3 timed rounds
#   HOSTS=3 RUNS=1 WARMUP=0 benches/revert.sh  # quick run
#
# The hosts log in as `fleetgate-test` (scripts/setup.sh). Nothing is left
# behind: the app's http.server processes (by the pid files the app writes)
# and every sshd started here are stopped on exit, the temp dir removed.
#
# Env: HOSTS (10), RUNS (3), WARMUP (1 untimed round first), HEALTH_INTERVAL
# (1s; the gate's probe interval), HEALTH_FAILURES (3 failed probes in a row
# fail the gate), POLL_MS (20), KEX (default = OpenSSH's choice, or
# curve25519), KEEP=1 keeps the temp dir (logs with arrival times per run),
# FLEETGATE_BIN (a built fleetgate; default: cargo build --release).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
HOSTS=${HOSTS:-10}
RUNS=${RUNS:-3}
WARMUP=${WARMUP:-1}
HEALTH_INTERVAL=${HEALTH_INTERVAL:-1s}
HEALTH_FAILURES=${HEALTH_FAILURES:-3}
POLL_MS=${POLL_MS:-20}
KEX=${KEX:-default}
USER_NAME=fleetgate-test

die() { echo "revert.sh: $*" >&2; exit 1; }
log() { echo "revert.sh: $*" >&2; }
# shellcheck source=lib.sh
source "$root/benches/lib.sh"
[[ $HOSTS =~ ^[0-9]+$ ]] && ((HOSTS >= 1 && HOSTS <= 200)) || die "HOSTS must be 1..200 (got '$HOSTS')"
[[ $RUNS =~ ^[0-9]+$ ]] && ((RUNS >= 1)) || die "RUNS must be >= 1 (got '$RUNS')"
[[ $WARMUP =~ ^[0-9]+$ ]] || die "WARMUP must be a number (got '$WARMUP')"
[[ $HEALTH_INTERVAL =~ ^[0-9]+(ms|s)$ ]] || die "HEALTH_INTERVAL must look like 500ms or 1s (got '$HEALTH_INTERVAL')"
[[ $HEALTH_FAILURES =~ ^[0-9]+$ ]] && ((HEALTH_FAILURES >= 1)) || die "HEALTH_FAILURES must be >= 1"
[[ $POLL_MS =~ ^[0-9]+$ ]] && ((POLL_MS >= 1)) || die "POLL_MS must be >= 1 (got '$POLL_MS')"
[[ $KEX == default || $KEX == curve25519 ]] || die "KEX must be default or curve25519 (got '$KEX')"
((EUID == 0)) || die "run as root: the hosts' sshd run as root and log in as $USER_NAME"

# --- machine: sshd, the test user, git -----------------------------------------
# shellcheck source=../scripts/setup.sh
source "$root/scripts/setup.sh"
set -euo pipefail
mkdir -p /run/sshd
command -v python3 >/dev/null || die "python3 is missing"
helper() { python3 "$here/revert_fleet.py" "$@"; }

# --- temp dir, clean-up ------------------------------------------------------------
work=$(mktemp -d /tmp/fgr.XXXXXX) # short: ssh control sockets live below it
chmod 755 "$work"
sshd_pids=()
cleanup() {
    local rc=$?
    set +e
    # The app's servers (started detached by the hosts' user), by their pid files.
    for f in "$work"/hosts/*/deploy/*/web/web.pid; do
        [[ -f $f ]] && kill "$(cat "$f")" 2>/dev/null
    done
    for p in "${sshd_pids[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${sshd_pids[@]}"; do wait "$p" 2>/dev/null; done
    if [[ ${KEEP:-0} == 1 ]]; then
        echo "kept $work" >&2
    else
        rm -rf "$work"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- fleetgate -------------------------------------------------------------------
fleetgate_binary

# --- hosts -------------------------------------------------------------------------
w=$((${#HOSTS} > 2 ? ${#HOSTS} : 2))
log "starting $HOSTS sshd hosts in $work..."
ssh-keygen -q -t ed25519 -N '' -C "$USER_NAME" -f "$work/client_key"
cp "$work/client_key.pub" "$work/authorized_keys"
chmod 644 "$work/authorized_keys"
# Below the ephemeral range, each with port+1000 (the app's HTTP port) free too.
mapfile -t ports < <(helper ports "$HOSTS")
: >"$work/hosts.tsv"
for ((i = 1; i <= HOSTS; i++)); do
    name=$(printf "h%0${w}d" "$i")
    client=$(printf "c%0${w}d" "$i")
    port=${ports[i - 1]}
    hdir=$work/hosts/$name
    mkdir -p "$hdir/deploy"
    chmod 755 "$work/hosts" "$hdir"
    chown "$USER_NAME:" "$hdir/deploy"
    ssh-keygen -q -t ed25519 -N '' -f "$hdir/host_key"
    cat >"$hdir/sshd_config" <<EOF
Port $port
ListenAddress 127.0.0.1
HostKey $hdir/host_key
PidFile $hdir/sshd.pid
AuthorizedKeysFile $work/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowUsers $USER_NAME
Subsystem sftp internal-sftp
LogLevel ERROR
EOF
    /usr/sbin/sshd -D -e -f "$hdir/sshd_config" </dev/null >/dev/null 2>"$hdir/sshd.log" &
    sshd_pids+=($!)
    key=$(cut -d' ' -f1,2 "$hdir/host_key.pub")
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$client" "$port" "$hdir" "$key" >>"$work/hosts.tsv"
done
python3 - "${ports[@]}" <<'EOF' || die "sshd did not start on every port (see $work/hosts/*/sshd.log; KEEP=1 keeps them)"
import socket, sys, time
deadline = time.time() + 20
for p in map(int, sys.argv[1:]):
    while True:
        try:
            socket.create_connection(("127.0.0.1", p), timeout=1).close()
            break
        except OSError:
            if time.time() > deadline:
                sys.exit(f"port {p}: no sshd")
            time.sleep(0.02)
EOF

# --- the fleet repository and its origin ----------------------------------------------
repo=$work/fleet
remote=$work/origin.git
mkdir -p "$repo" "$work/results" "$work/logs"
export GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1
export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@example.org
export GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@example.org
g() { git -C "$repo" -c core.fsync=none -c gc.auto=0 "$@"; }
git init -q --bare -b main "$remote"
g init -q -b main
g remote add origin "$remote"
version=1
write_fleet() { # VERSION HEALTH
    helper fleet "$repo" "$work/hosts.tsv" "$1" "$2" "$HEALTH_INTERVAL" "$HEALTH_FAILURES" "$KEX"
}
commit_push() { # MESSAGE
    g add -A
    g commit -q -m "$1"
    g push -q origin main
}
fleetgate_in() { # ARGS... (in the fleet repo, no age key: the app has no secrets)
    (cd "$repo" && env -u SOPS_AGE_KEY -u SOPS_AGE_KEY_FILE FLEETGATE_SSH_KEY="$work/client_key" \
        FLEETGATE_LOG=info "$bin" "$@")
}

write_fleet "$version" ok
commit_push "bench fleet: $HOSTS canary hosts, version $version"
log "first rollout of version $version (untimed)..."
fleetgate_in deploy --stage canary --rev HEAD --format json >"$work/logs/first.json" 2>"$work/logs/first.err" ||
    { tail -n 20 "$work/logs/first.err" >&2; die "the first deploy failed"; }

app_start=$(helper appstart)

# --- rounds ------------------------------------------------------------------------------
timed_run() { # KIND OUT PREV NEW PREV_SHA NEW_SHA BASE HEAD
    helper watch --kind "$1" --out "$2" --hosts "$work/hosts.tsv" --prev "$3" --new "$4" \
        --prev-sha "$5" --new-sha "$6" --remote "$remote" --branch main --poll-ms "$POLL_MS" -- \
        env -u SOPS_AGE_KEY -u SOPS_AGE_KEY_FILE FLEETGATE_SSH_KEY="$work/client_key" FLEETGATE_LOG=info \
        "$bin" --repo "$repo" run --base "$7" --head "$8" --format json ||
        { tail -n 30 "$2.err" >&2; die "round $r ($1): see above (KEEP=1 keeps $work)"; }
}
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
rounds=$((WARMUP + RUNS))
for ((r = 1; r <= rounds; r++)); do
    if ((r > WARMUP)); then tag=run$((r - WARMUP)); dir=$work/results; else tag=warmup$r; dir=$work/logs; fi
    # Start from origin's main: the previous round's revert is on it.
    g fetch -q origin main
    g reset -q --hard FETCH_HEAD
    base=$(g rev-parse HEAD)
    prev=$version

    version=$((version + 1))
    write_fleet "$version" ok
    commit_push "version $version"
    good=$(g rev-parse HEAD)
    timed_run good "$dir/good-$tag" "$prev" "$version" "$base" "$good" "$base" "$good"

    version=$((version + 1))
    write_fleet "$version" bad
    commit_push "version $version (health: bad)"
    broken=$(g rev-parse HEAD)
    timed_run bad "$dir/bad-$tag" "$((version - 1))" "$version" "$good" "$broken" "$good" "$broken"

    python3 - "$dir/good-$tag.json" "$dir/bad-$tag.json" "$tag" <<'EOF' >&2
import json, sys
g, b = (json.load(open(p)) for p in sys.argv[1:3])
e, f = g["events"], b["events"]
t0 = f["first health ✗"]
print(f"revert.sh: {sys.argv[3]}: deploy: all serving new {e['all serve new']:.2f} s, wall {e['exit']:.2f} s; "
      f"broken: gate failed at {t0:.2f} s, all serving previous +{f['all serve previous'] - t0:.2f} s, "
      f"revert on origin +{f['revert on origin'] - t0:.2f} s, exit +{f['exit'] - t0:.2f} s")
EOF
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# --- report --------------------------------------------------------------------------------
header="fleetgate revert benchmark: $HOSTS canary hosts on loopback (parallelism $HOSTS, max_failures 0), nproc $(nproc), load average $load_before before, $load_after after
fleetgate $src_rev; $(ssh -V 2>&1 | cut -d, -f1); kex $KEX; app restart = stop the old python3 http.server, start a new one (start-up alone: ${app_start} s)"
helper report "$work/results" "$HEALTH_INTERVAL" "$HEALTH_FAILURES" "$POLL_MS" "$header"
