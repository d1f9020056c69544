#!/usr/bin/env bash
# Benchmark of `fleetgate plan` on a synthetic fleet of $CLIENTS clients x 2 apps.
#
#   benches/plan.sh                   # 10000 clients
#   CLIENTS=200 benches/plan.sh       # quick run
#
# Commits (packed, as in a clone): A = base fleet, B = A + one client file changed, C = B + one shared
# template changed (renders differently for every client). Measures
#   (a) fleetgate plan A..B   against   git diff --name-only A B
#   (b) fleetgate plan B..C   against   git diff --name-only B C
# with hyperfine (installed with apt-get when missing and possible), else with
# repeated timed runs; peak RSS with /usr/bin/time. Checks that (a) names
# exactly one client and (b) all of them. Targets are reported, not enforced:
# (a) within 3x of git diff, (b) under 2 s.
#
# BASELINE=path/to/fleetgate (e.g. a release build of the previous commit)
# measures that binary too, in the same run on the same repository, checks
# that its plans are byte for byte the same JSON (plan_hash included), and
# reports the ratios.
#
# FLEETGATE=path/to/fleetgate measures that binary instead of building the
# release one (e.g. a debug build, when there is no time for a release build).
#
# Env: CLIENTS (10000), RUNS_A (10), RUNS_B (3), BASELINE (none), FLEETGATE
# (the release build), KEEP=1 keeps the temp dir.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
CLIENTS=${CLIENTS:-10000}
RUNS_A=${RUNS_A:-10}
RUNS_B=${RUNS_B:-3}

die() { echo "plan.sh: $*" >&2; exit 1; }
now() { date +%s.%N; }
secs() { python3 -c 'import sys; print(f"{float(sys.argv[2]) - float(sys.argv[1]):.2f}")' "$1" "$2"; }

[[ $CLIENTS =~ ^[0-9]+$ ]] && ((CLIENTS >= 2)) || die "CLIENTS must be a number >= 2 (got '$CLIENTS')"

# --- tools -------------------------------------------------------------------
apt_install() {
    local sudo=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null && sudo -n true 2>/dev/null || return 1
        sudo=(sudo -n)
    fi
    command -v apt-get >/dev/null || return 1
    echo "installing $* with apt-get..." >&2
    "${sudo[@]}" apt-get install -y -qq "$@" >/dev/null 2>&1 && return 0
    "${sudo[@]}" apt-get update -qq >/dev/null 2>&1 && "${sudo[@]}" apt-get install -y -qq "$@" >/dev/null 2>&1
}
[[ -x /usr/bin/time ]] || apt_install time || die "/usr/bin/time is missing (apt package \`time\`)"
command -v hyperfine >/dev/null || apt_install hyperfine || true
have_hyperfine=0
command -v hyperfine >/dev/null && have_hyperfine=1

# --- build -------------------------------------------------------------------
if [[ -n ${FLEETGATE:-} ]]; then
    [[ -x $FLEETGATE ]] || die "FLEETGATE=$FLEETGATE is not an executable"
    built=$FLEETGATE
else
    echo "building fleetgate (release)..." >&2
    (cd "$root" && cargo build --release --quiet)
    built=$root/target/release/fleetgate
fi
[[ -x $built ]] || die "no binary at $built"
src_rev=$(git -C "$root" describe --always --dirty 2>/dev/null || echo unknown)

# --- fleet repository --------------------------------------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/fleetgate-bench.XXXXXX")
if [[ ${KEEP:-0} == 1 ]]; then
    trap 'echo "kept $work" >&2' EXIT
else
    trap 'rm -rf "$work"' EXIT
fi
repo=$work/fleet
mkdir -p "$repo"
# A private copy: a rebuild in the project while the bench runs cannot swap it.
bin=$work/fleetgate
cp "$built" "$bin"
old=
if [[ -n ${BASELINE:-} ]]; then
    [[ -x $BASELINE ]] || die "BASELINE=$BASELINE is not an executable"
    old=$work/fleetgate-baseline
    cp "$BASELINE" "$old"
fi

export GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1
export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@example.org
export GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@example.org
g() { git -C "$repo" -c core.fsync=none -c gc.auto=0 -c core.untrackedCache=false "$@"; }

echo "generating $CLIENTS clients in $repo..." >&2
t0=$(now)
g init -q -b main
python3 "$here/genfleet.py" "$repo" "$CLIENTS"
t1=$(now)
g add -A
g commit -q -m "base: $CLIENTS clients x 2 apps"
t2=$(now)
A=$(g rev-parse HEAD)

one=$(printf 'c%05d' $((CLIENTS / 2)))
sed -i 's/^  port: 8080$/  port: 8081/' "$repo/clients/$one.yaml"
grep -q 'port: 8081' "$repo/clients/$one.yaml" || die "could not change clients/$one.yaml"
g commit -q -a -m "$one: port 8081"
B=$(g rev-parse HEAD)

echo 'FEATURE_FLAGS=fast-plan,{{ client.name }}' >>"$repo/pipelines/apps/web/app.env.j2"
g commit -q -a -m "web: feature flags in app.env"
C=$(g rev-parse HEAD)
# Packed, as a CI checkout (a clone) has its objects: not 3 x CLIENTS loose
# files, each opened and inflated on its own.
g repack -adq
t3=$(now)
gen_write=$(secs "$t0" "$t1")
gen_commit=$(secs "$t1" "$t2")
gen_total=$(secs "$t0" "$t3")

# --- correctness and peak RSS --------------------------------------------------
fg_env=(env -u SOPS_AGE_KEY SOPS_AGE_KEY_FILE= FLEETGATE_LOG=warn)
cd "$repo"

# One run of plan with /usr/bin/time: JSON to $work/$1.json, "wall KiB" on
# stdout. PLAN_BIN: the binary (default: the one built).
plan_once() {
    local tag=$1 base=$2 head=$3
    if ! "${fg_env[@]}" /usr/bin/time -f "%e %M" -o "$work/$tag.time" \
        "${PLAN_BIN:-$bin}" plan --base "$base" --head "$head" --format json >"$work/$tag.json" 2>"$work/$tag.err"; then
        cat "$work/$tag.err" >&2
        die "fleetgate plan ($tag) failed"
    fi
    tail -n1 "$work/$tag.time"
}

clients_in() {
    python3 -c 'import json, sys; print(len(json.load(open(sys.argv[1]))["clients"]))' "$1"
}

echo "checking plans..." >&2
plan_once a "$A" "$B" >/dev/null
plan_once b "$B" "$C" >/dev/null
na=$(clients_in "$work/a.json")
nb=$(clients_in "$work/b.json")
((na == 1)) || die "plan (a) names $na clients, expected exactly 1 ($one)"
python3 -c 'import json, sys; p = json.load(open(sys.argv[1])); assert p["clients"][0]["name"] == sys.argv[2], p["clients"][0]["name"]' \
    "$work/a.json" "$one" || die "plan (a) does not name $one"
((nb == CLIENTS)) || die "plan (b) names $nb clients, expected all $CLIENTS"

# Peak RSS: the largest of 3 runs each.
max_rss() {
    local tag=$1 base=$2 head=$3 best=0 kib
    for _ in 1 2 3; do
        kib=$(plan_once "$tag" "$base" "$head" | awk '{print $2}')
        ((kib > best)) && best=$kib
    done
    echo "$best"
}
rss_a=$(max_rss a "$A" "$B")
rss_b=$(max_rss b "$B" "$C")
old_rss_a=0 old_rss_b=0
if [[ -n $old ]]; then
    for t in a b; do
        [[ $t == a ]] && range=("$A" "$B") || range=("$B" "$C")
        PLAN_BIN=$old plan_once "old_$t" "${range[@]}" >/dev/null
        cmp -s "$work/$t.json" "$work/old_$t.json" ||
            die "plan ($t) differs from BASELINE's: diff $work/$t.json $work/old_$t.json (KEEP=1 keeps them)"
    done
    old_rss_a=$(PLAN_BIN=$old max_rss old_a "$A" "$B")
    old_rss_b=$(PLAN_BIN=$old max_rss old_b "$B" "$C")
fi

# --- timing --------------------------------------------------------------------
# Prints "mean stddev median min max" in seconds.
stats_of_hyperfine() {
    python3 - "$1" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))["results"][0]
print(f'{r["mean"]:.6f} {r["stddev"] or 0:.6f} {r["median"]:.6f} {r["min"]:.6f} {r["max"]:.6f}')
EOF
}

stats_of_list() {
    python3 -c '
import statistics, sys
xs = [float(x) for x in sys.argv[1:]]
sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
print(f"{statistics.mean(xs):.6f} {sd:.6f} {statistics.median(xs):.6f} {min(xs):.6f} {max(xs):.6f}")
' "$@"
}

# bench TAG RUNS CMD...: stats line for CMD (stdout and stderr discarded).
bench() {
    local tag=$1 runs=$2
    shift 2
    if ((have_hyperfine)); then
        "${fg_env[@]}" hyperfine -N --style none --warmup 1 --runs "$runs" \
            --export-json "$work/$tag.hf.json" -- "$(printf '%q ' "$@")" >/dev/null 2>"$work/$tag.hf.err" ||
            { cat "$work/$tag.hf.err" >&2; die "hyperfine ($tag) failed"; }
        stats_of_hyperfine "$work/$tag.hf.json"
    else
        local times=() t0 t1
        "${fg_env[@]}" "$@" >/dev/null 2>&1 # warmup
        for ((i = 0; i < runs; i++)); do
            t0=$(date +%s%N)
            "${fg_env[@]}" "$@" >/dev/null 2>&1
            t1=$(date +%s%N)
            times+=("$(((t1 - t0) / 1000))e-6")
        done
        stats_of_list "${times[@]}"
    fi
}

echo "timing (hyperfine: $have_hyperfine)..." >&2
git_a=$(bench git_a "$RUNS_A" git diff --name-only "$A" "$B")
plan_a=$(bench plan_a "$RUNS_A" "$bin" plan --base "$A" --head "$B" --format json)
git_b=$(bench git_b "$RUNS_A" git diff --name-only "$B" "$C")
plan_b=$(bench plan_b "$RUNS_B" "$bin" plan --base "$B" --head "$C" --format json)
old_a=- old_b=-
if [[ -n $old ]]; then
    old_a=$(bench old_a "$RUNS_A" "$old" plan --base "$A" --head "$B" --format json)
    old_b=$(bench old_b "$RUNS_B" "$old" plan --base "$B" --head "$C" --format json)
fi

# --- report ----------------------------------------------------------------------
python3 - "$CLIENTS" "$(nproc)" "$src_rev" "$have_hyperfine" "$RUNS_A" "$RUNS_B" \
    "$gen_write" "$gen_commit" "$gen_total" \
    "$git_a" "$plan_a" "$git_b" "$plan_b" "$rss_a" "$rss_b" "$na" "$nb" \
    "$old_a" "$old_b" "$old_rss_a" "$old_rss_b" <<'EOF'
import sys
(clients, nproc, src_rev, hf, runs_a, runs_b, gw, gc, gt,
 git_a, plan_a, git_b, plan_b, rss_a, rss_b, na, nb,
 old_a, old_b, old_rss_a, old_rss_b) = sys.argv[1:]
parse = lambda s: dict(zip(("mean", "sd", "median", "min", "max"), map(float, s.split())))
git_a, plan_a, git_b, plan_b = map(parse, (git_a, plan_a, git_b, plan_b))
ms = lambda r: f'{r["mean"]*1e3:9.1f} ms ± {r["sd"]*1e3:6.1f}  (median {r["median"]*1e3:.1f}, min {r["min"]*1e3:.1f}, max {r["max"]*1e3:.1f})'
ratio_a = plan_a["mean"] / git_a["mean"]
ratio_b = plan_b["mean"] / git_b["mean"]
ok = lambda b: "met" if b else "MISSED"
print(f"fleetgate plan benchmark ({src_rev}): {clients} clients x 2 apps, nproc {nproc}, "
      f"timing: {'hyperfine' if hf == '1' else 'repeated runs'} (runs: a {runs_a}, b {runs_b})")
print(f"generation: {gt} s (write files {gw} s, git add + commit {gc} s)")
print(f"git diff (a)      {ms(git_a)}")
print(f"plan (a)          {ms(plan_a)}   1 client changed (plan names {na})")
print(f"git diff (b)      {ms(git_b)}")
print(f"plan (b)          {ms(plan_b)}   template change (plan names {nb})")
print(f"ratio (a) / git diff (a): {ratio_a:6.2f}x   target <= 3x: {ok(ratio_a <= 3)}")
print(f"ratio (b) / git diff (b): {ratio_b:6.1f}x")
print(f"(b) absolute:             {plan_b['mean']:.3f} s   target < 2 s: {ok(plan_b['mean'] < 2)}")
print(f"peak RSS (a): {int(rss_a)/1024:8.1f} MiB")
print(f"peak RSS (b): {int(rss_b)/1024:8.1f} MiB")
if old_a != "-":
    old_a, old_b = parse(old_a), parse(old_b)
    print("BASELINE (same repository, same run; plans byte for byte the same):")
    print(f"baseline plan (a) {ms(old_a)}   {old_a['mean'] / git_a['mean']:.2f}x git diff")
    print(f"baseline plan (b) {ms(old_b)}")
    print(f"baseline peak RSS (a): {int(old_rss_a)/1024:8.1f} MiB   (b): {int(old_rss_b)/1024:8.1f} MiB")
    print(f"speedup (a): {old_a['mean'] / plan_a['mean']:.2f}x   (b): {old_b['mean'] / plan_b['mean']:.2f}x   "
          f"peak RSS (b): {int(old_rss_b) / int(rss_b):.2f}x smaller")
EOF
