#!/usr/bin/env bash
# Scan benchmark: `fleetgate scan` over $IMAGES distinct images (one app per
# client, one image per app, every digest different) on a loopback
# docker-registry, scanned by the real trivy against the fixture vulnerability
# DB (tests/fixtures/trivy: no network needed). Every other image carries the
# fixture CVEs (openssl & co), so the scan blocks (exit 1) as expected. Per
# round, interleaved:
#   (a) --scan-concurrency 1 --no-scan-cache          one image at a time
#   (b) --scan-concurrency $CONCURRENCY --no-scan-cache   a few at a time
#   (c) --scan-concurrency $CONCURRENCY into an empty FLEETGATE_CACHE_DIR (first scan)
#   (d) the same again in the same cache dir: the fully cached rerun
# and, to show where the time goes, trivy without fleetgate: the floors (a')
# and (b'), the same $IMAGES `trivy image` commands fleetgate runs, 1 and
# $CONCURRENCY at a time from a thread pool; `trivy --version` (process startup
# only); and `trivy image` on one image with a cold and a warm trivy cache. CPU
# time (user + system, with the trivy processes) is taken from rusage. Every
# fleetgate run, floor and cold probe gets a fresh trivy cache dir (a copy of
# the fixture DB, no fanal layer cache), so no run profits from an earlier
# one's trivy cache; (d) reuses (c)'s, as a real rerun would.
# Reports medians over RUNS rounds (min..max), the per-round ratios (a)/(b)
# (speedup) and (d)/(c) (cached rerun as % of the first scan), and the load
# average before and after. Targets are reported, not enforced:
#   (d)/(c) < 5 %.
# Checked on every timed run (a failed check stops the bench): the exit code
# (1: blocked), the JSON report (all images, the right ones blocked, `cached`
# false in (a)-(c) and true in (d)), the number of trivy runs (counted by a
# wrapper script given as FLEETGATE_TRIVY: IMAGES in (a)-(c), 0 in (d)), and
# that --no-scan-cache leaves the cache dir empty.
#
#   benches/scan.sh                    # 20 images, 3 timed rounds
#   IMAGES=4 RUNS=1 benches/scan.sh    # quick run
#
# Env: IMAGES (20), RUNS (3), WARMUP (1 untimed round first), CONCURRENCY (4),
# PROBES (5 trivy-alone samples of each kind per round), FLEETGATE_BIN (a built
# fleetgate; default: cargo build --release, then a private copy), KEEP=1 keeps
# the temp dir. As root, scripts/setup.sh installs trivy 0.76 (pinned, sha256
# checked), boltdb and docker-registry when missing; otherwise they must be
# there already. Nothing is left behind: the registry is stopped and the temp
# dir removed on exit.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
IMAGES=${IMAGES:-20}
RUNS=${RUNS:-3}
WARMUP=${WARMUP:-1}
CONCURRENCY=${CONCURRENCY:-4}
PROBES=${PROBES:-5}

die() { echo "scan.sh: $*" >&2; exit 1; }
log() { echo "scan.sh: $*" >&2; }
# shellcheck source=lib.sh
source "$root/benches/lib.sh"
[[ $IMAGES =~ ^[0-9]+$ ]] && ((IMAGES >= 1 && IMAGES <= 500)) || die "IMAGES must be 1..500 (got '$IMAGES')"
[[ $RUNS =~ ^[0-9]+$ ]] && ((RUNS >= 1)) || die "RUNS must be >= 1 (got '$RUNS')"
[[ $WARMUP =~ ^[0-9]+$ ]] || die "WARMUP must be a number (got '$WARMUP')"
[[ $CONCURRENCY =~ ^[0-9]+$ ]] && ((CONCURRENCY >= 1)) || die "CONCURRENCY must be >= 1 (got '$CONCURRENCY')"
[[ $PROBES =~ ^[0-9]+$ ]] && ((PROBES >= 1)) || die "PROBES must be >= 1 (got '$PROBES')"

# --- tools: trivy, boltdb, docker-registry ------------------------------------------
if ((EUID == 0)); then
    # shellcheck source=../scripts/setup.sh
    source "$root/scripts/setup.sh"
    set -euo pipefail
fi
command -v python3 >/dev/null || die "python3 is missing"
[[ -x /usr/bin/docker-registry ]] || die "/usr/bin/docker-registry is missing (run as root: scripts/setup.sh installs it)"
python3 -c 'import boltdb' 2>/dev/null || die "python3 cannot import boltdb (run as root: scripts/setup.sh installs it)"
trivy_real=$(command -v trivy) || die "trivy is not on PATH (run as root: scripts/setup.sh installs it)"
# A pyenv shim or similar wrapper would add its own startup to every scan: use the binary.
trivy_real=$(readlink -f "$trivy_real")
trivy_version=$("$trivy_real" --version 2>/dev/null | sed -n 's/^Version: //p' | head -n1)
[[ -n $trivy_version ]] || die "$trivy_real --version does not print a version"
case $(head -c 4 "$trivy_real" | od -An -c | tr -d ' ') in
    177ELF) ;;
    *) log "warning: $trivy_real is not an ELF binary (a wrapper?): its startup is timed too" ;;
esac

# --- work dir, cleanup ------------------------------------------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/fleetgate-scan-bench.XXXXXX")
registry_pid=
harness_pid=
cleanup() {
    local rc=$?
    set +e
    if [[ -n $harness_pid ]]; then
        kill "$harness_pid" 2>/dev/null # it kills the fleetgate or trivy it runs
        wait "$harness_pid" 2>/dev/null
    fi
    if [[ -n $registry_pid ]]; then
        kill "$registry_pid" 2>/dev/null
        wait "$registry_pid" 2>/dev/null
    fi
    if [[ ${KEEP:-0} == 1 ]]; then
        echo "kept $work" >&2
    else
        rm -rf "$work"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- fleetgate ----------------------------------------------------------------------
fleetgate_binary

# --- registry -----------------------------------------------------------------------
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
addr=127.0.0.1:$port
printf 'version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s\n' \
    "$work/registry" "$addr" >"$work/registry.yml"
/usr/bin/docker-registry serve "$work/registry.yml" </dev/null >/dev/null 2>"$work/registry.log" &
registry_pid=$!
python3 - "$port" "$registry_pid" <<'EOF' || die "docker-registry did not start on $addr (see its log: KEEP=1 keeps $work/registry.log)"
import os, socket, sys, time
port, pid = int(sys.argv[1]), int(sys.argv[2])
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit(1)
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.05)
sys.exit(1)
EOF

# --- fixture DB and images ----------------------------------------------------------------
fixtures=$root/tests/fixtures/trivy
python3 "$fixtures/build_db.py" "$fixtures/vulndb.json" "$work/trivy-db" >/dev/null ||
    die "build_db.py failed"
[[ -f $work/trivy-db/db/trivy.db && -f $work/trivy-db/db/metadata.json ]] || die "build_db.py wrote no DB"

VULNERABLE=("openssl=3.0.11-1~deb12u2" "libexpat1=2.5.0-1" "zlib1g=1:1.2.13.dfsg-1" "libgcrypt20=1.10.1-3")
log "pushing $IMAGES images to $addr..."
: >"$work/images.tsv" # index, reference, vulnerable (0/1)
for ((i = 1; i <= IMAGES; i++)); do
    pkgs=("bash=5.2.15-2+b2" "pkg-$i=1.0-$i")
    vulnerable=$((i % 2))
    ((vulnerable)) && pkgs+=("${VULNERABLE[@]}")
    digest=$(python3 "$fixtures/image.py" push "$addr" "fixture/img$i" 1 "${pkgs[@]}") ||
        die "image.py push fixture/img$i failed"
    [[ $digest =~ ^sha256:[0-9a-f]{64}$ ]] || die "image.py push printed '$digest', not a digest"
    printf '%s\t%s\t%s\n' "$i" "$addr/fixture/img$i:1@$digest" "$vulnerable" >>"$work/images.tsv"
done
distinct=$(cut -f2 "$work/images.tsv" | sed 's/.*@//' | sort -u | wc -l)
((distinct == IMAGES)) || die "only $distinct distinct digests for $IMAGES images"

# --- fleet repository -----------------------------------------------------------------
repo=$work/fleet
mkdir -p "$repo/pipelines/apps" "$repo/clients"
cat >"$repo/pipelines/pipeline.yaml" <<'EOF'
stages:
  - name: canary
    group: canary
scan:
  fail_on: [CRITICAL, HIGH]
  ignore_unfixed: true
EOF
while IFS=$'\t' read -r i ref _; do
    mkdir -p "$repo/pipelines/apps/app$i"
    printf 'runtime: compose\nimages:\n  main: %s\nfiles:\n  compose.yaml: compose.yaml.j2\n' "$ref" \
        >"$repo/pipelines/apps/app$i/app.yaml"
    printf 'services:\n  main:\n    image: {{ app.images.main }}\n' >"$repo/pipelines/apps/app$i/compose.yaml.j2"
    printf 'domain: c%s.example.org\ngroup: canary\napps: [app%s]\nhosts:\n  - name: c%s-1\n    address: 192.0.2.1\n' \
        "$i" "$i" "$i" >"$repo/clients/c$i.yaml"
done <"$work/images.tsv"
export GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1
g() { git -C "$repo" -c user.name=bench -c user.email=bench@example.org "$@"; }
g init -q -b main
g add -A
g commit -q -m "fleet: $IMAGES clients, one image each"

# --- trivy wrapper that counts its runs ------------------------------------------------
counter=$work/trivy-runs
wrapper=$work/trivy-counting.sh
printf '#!/bin/sh\necho run >>%q\nexec %q "$@"\n' "$counter" "$trivy_real" >"$wrapper"
chmod 755 "$wrapper"

# --- rounds ---------------------------------------------------------------------------
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
log "timing: $WARMUP warmup + $RUNS timed round(s), load average $load_before, nproc $(nproc)..."
python3 - "$work" "$bin" "$repo" "$wrapper" "$counter" "$trivy_real" "$IMAGES" "$RUNS" "$WARMUP" \
    "$CONCURRENCY" "$PROBES" <<'EOF' >"$work/results.json" &
import json, os, resource, shutil, signal, subprocess, sys, time
from concurrent.futures import ThreadPoolExecutor

(work, bin_, repo, wrapper, counter, trivy, images, runs, warmup, conc, probes) = sys.argv[1:]
# SIGTERM (the script's cleanup) raises, so subprocess.run kills the child it waits for.
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
images, runs, warmup, conc, probes = map(int, (images, runs, warmup, conc, probes))
refs = []
vulnerable = {}
for line in open(os.path.join(work, "images.tsv")):
    i, ref, v = line.rstrip("\n").split("\t")
    refs.append(ref)
    vulnerable[ref] = v == "1"
blocked_expected = sum(vulnerable.values())
runs_dir = os.path.join(work, "runs")
os.makedirs(runs_dir, exist_ok=True)
seq = 0

def fail(msg):
    print(f"scan.sh: CHECK FAILED: {msg}", file=sys.stderr)
    sys.exit(1)

def fresh_trivy_cache():
    """A trivy cache dir with the fixture DB only (no fanal layer cache)."""
    global seq
    seq += 1
    d = os.path.join(runs_dir, f"tc{seq}")
    shutil.copytree(os.path.join(work, "trivy-db"), d)
    return d

def fresh_dir(name):
    global seq
    seq += 1
    d = os.path.join(runs_dir, f"{name}{seq}")
    os.makedirs(d)
    return d

def trivy_runs():
    try:
        with open(counter) as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0

def cpu_children():
    """User + system CPU seconds of every waited-for child so far (with the
    trivy processes fleetgate waited for)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime

last_cpu = 0.0  # CPU seconds of the last timed() or floor()

def timed(cmd, env, out, err):
    global last_cpu
    with open(out, "wb") as o, open(err, "wb") as e:
        c0 = cpu_children()
        t0 = time.perf_counter()
        p = subprocess.run(cmd, env=env, stdout=o, stderr=e, stdin=subprocess.DEVNULL, cwd=repo)
        t = time.perf_counter() - t0
        last_cpu = cpu_children() - c0
    return t, p.returncode

base_env = dict(os.environ)
for k in list(base_env):
    if k.startswith("FLEETGATE_") or k in ("XDG_CACHE_HOME",):
        del base_env[k]
base_env["FLEETGATE_LOG"] = "info"

def fleetgate(mode, tag, trivy_cache, cache_dir):
    args = [bin_, "scan", "--rev", "HEAD", "--format", "json"]
    if mode == "a":
        args += ["--scan-concurrency", "1", "--no-scan-cache"]
    elif mode == "b":
        args += ["--scan-concurrency", str(conc), "--no-scan-cache"]
    else:
        args += ["--scan-concurrency", str(conc)]
    env = dict(base_env, FLEETGATE_TRIVY=wrapper, FLEETGATE_TRIVY_CACHE_DIR=trivy_cache,
               FLEETGATE_CACHE_DIR=cache_dir)
    out, err = os.path.join(runs_dir, f"{tag}.json"), os.path.join(runs_dir, f"{tag}.err")
    before = trivy_runs()
    t, rc = timed(args, env, out, err)
    ran = trivy_runs() - before
    stderr = open(err, errors="replace").read()
    if rc not in (0, 1):
        fail(f"({mode}) {tag}: fleetgate scan exit {rc}:\n{stderr}")
    want_rc = 1 if blocked_expected else 0
    if rc != want_rc:
        fail(f"({mode}) {tag}: exit {rc}, expected {want_rc}:\n{stderr}")
    try:
        report = json.load(open(out))
    except ValueError as e:
        fail(f"({mode}) {tag}: the JSON report does not parse: {e}")
    got = {i["image"]: i for i in report["images"]}
    if sorted(got) != sorted(refs):
        fail(f"({mode}) {tag}: the report lists {len(got)} image(s), not the {images} of the fleet")
    for ref, i in got.items():
        blocked = bool(i["blocking"])
        if blocked != vulnerable[ref]:
            fail(f"({mode}) {tag}: {ref} blocked={blocked}, expected {vulnerable[ref]}")
        if i["cached"] != (mode == "d"):
            fail(f"({mode}) {tag}: {ref} cached={i['cached']}, expected {mode == 'd'}")
    want_ran = 0 if mode == "d" else images
    if ran != want_ran:
        fail(f"({mode}) {tag}: trivy ran {ran} time(s), expected {want_ran}")
    if mode in "ab":
        left = [os.path.join(dp, f) for dp, _, fs in os.walk(cache_dir) for f in fs]
        if left:
            fail(f"({mode}) {tag}: --no-scan-cache wrote {len(left)} file(s) into FLEETGATE_CACHE_DIR, e.g. {left[0]}")
    secs = [i["seconds"] for i in report["images"]]
    return {"t": t, "cpu": last_cpu, "trivy_runs": ran, "image_seconds_min": min(secs), "image_seconds_max": max(secs)}

def probe_version(tag):
    t, rc = timed([trivy, "--version"], base_env, os.devnull, os.devnull)
    if rc != 0:
        fail(f"trivy --version: exit {rc}")
    return t

def probe_scan(tag, ref, cache):
    err = os.path.join(runs_dir, f"{tag}.err")
    t, rc = timed(trivy_args(ref, cache), base_env, os.devnull, err)
    if rc != 0:
        fail(f"trivy image {ref}: exit {rc}:\n{open(err).read()}")
    return t

def trivy_args(ref, cache):
    # Exactly what fleetgate runs (src/scan/trivy.rs).
    return [trivy, "image", "--scanners", "vuln", "--format", "json", "--quiet", "--timeout", "300s",
            "--cache-dir", cache, "--image-src", "remote", ref]

def floor(tag, parallel):
    """trivy on every image, `parallel` at a time, without fleetgate."""
    cache = fresh_trivy_cache()
    def one(ref):
        p = subprocess.run(trivy_args(ref, cache), stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        return ref, p.returncode, p.stderr
    c0 = cpu_children()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(parallel) as ex:
        results = list(ex.map(one, refs))
    t = time.perf_counter() - t0
    global last_cpu
    last_cpu = cpu_children() - c0
    for ref, rc, err in results:
        if rc != 0:
            fail(f"{tag}: trivy image {ref}: exit {rc}:\n{err.decode(errors='replace')}")
    return t

samples = []  # {"round", "kind", "t", ...}
for r in range(warmup + runs):
    is_timed = r >= warmup
    rnd = r - warmup
    label = f"round {rnd + 1}/{runs}" if is_timed else f"warmup {r + 1}/{warmup}"
    print(f"scan.sh: {label}", file=sys.stderr)
    rec = lambda kind, t, **kw: samples.append(dict(round=rnd, kind=kind, t=t, **kw)) if is_timed else None
    for k in range(probes):
        rec("version", probe_version(f"r{r}-version{k}"))
    for k in range(probes):
        ref = refs[(r * probes + k) % images]
        cache = fresh_trivy_cache()
        rec("cold", probe_scan(f"r{r}-cold{k}", ref, cache))
        rec("warm", probe_scan(f"r{r}-warm{k}", ref, cache))
    # The floors and (a), (b) reverse their order every round; (c) then (d)
    # always last, back to back.
    order = ("fa", "a", "fb", "b")
    for mode in (order if r % 2 == 0 else order[::-1]) + ("c", "d"):
        if mode in ("fa", "fb"):
            t = floor(f"r{r}-{mode}", 1 if mode == "fa" else conc)
            rec(mode, t, cpu=last_cpu)
            continue
        if mode in "ab":
            trivy_cache, cache_dir = fresh_trivy_cache(), fresh_dir("fgcache")
        elif mode == "c":
            trivy_cache, cache_dir = fresh_trivy_cache(), fresh_dir("fgcache")
        # (d): (c)'s trivy cache and fleetgate cache, as they are.
        res = fleetgate(mode, f"r{r}-{mode}", trivy_cache, cache_dir)
        rec(mode, res.pop("t"), **res)
json.dump(samples, sys.stdout)
EOF
# In the background so that a signal to this script is handled at once (cleanup).
harness_pid=$!
wait "$harness_pid" || { harness_pid=; die "a check failed (KEEP=1 keeps $work)"; }
harness_pid=
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# --- report -------------------------------------------------------------------------
python3 - "$work/results.json" "$src_rev" "$trivy_version" "$IMAGES" "$RUNS" "$WARMUP" "$CONCURRENCY" \
    "$PROBES" "$(nproc)" "$load_before" "$load_after" "$((IMAGES - IMAGES / 2))" <<'EOF'
import statistics, sys
(path, src_rev, trivy_version, images, runs, warmup, conc, probes, nproc, load_before,
 load_after, vulnerable) = sys.argv[1:]
import json
samples = json.load(open(path))
images, runs, conc = int(images), int(runs), int(conc)
med = statistics.median
def of(kind):
    return [s for s in samples if s["kind"] == kind]
def times(kind):
    return [s["t"] for s in of(kind)]
def by_round(kind):
    return {s["round"]: s["t"] for s in of(kind)}
def row(name, kind, note=""):
    ts = times(kind)
    n = f"  n={len(ts)}" if len(ts) != runs else ""
    cpus = [s["cpu"] for s in of(kind) if "cpu" in s]
    cpu = f"   CPU {med(cpus):6.2f} s" if cpus else ""
    print(f"  {name:<46} {med(ts):8.3f} s   ({min(ts):.3f} .. {max(ts):.3f}){cpu}{n}{note}")
def ratios(num, den):
    a, b = by_round(num), by_round(den)
    return [a[r] / b[r] for r in sorted(a) if r in b]
def span(xs, fmt):
    return f"median {fmt(med(xs))}  ({fmt(min(xs))} .. {fmt(max(xs))} over {len(xs)} round(s))"

print(f"fleetgate scan benchmark ({src_rev}): {images} distinct images ({vulnerable} with fixture CVEs, "
      f"so the gate blocks), trivy {trivy_version}, loopback docker-registry, fixture DB")
print(f"nproc {nproc}; load average {load_before} before, {load_after} after; "
      f"{runs} timed round(s) after {warmup} warmup, interleaved; timer: python perf_counter")
print()
print(f"wall time, median (min .. max); CPU = user + system of fleetgate and its trivy processes:")
row("(a) 1 at a time, --no-scan-cache", "a")
row(f"(b) {conc} at a time, --no-scan-cache", "b")
row(f"(c) first scan, empty cache, {conc} at a time", "c")
row("(d) fully cached rerun", "d")
row("floor (a'): trivy x images, 1 at a time", "fa", "   no fleetgate")
row(f"floor (b'): trivy x images, {conc} at a time", "fb", "   no fleetgate")
print()
sp = ratios("a", "b")
cached = [100 * x for x in ratios("d", "c")]
print(f"speedup (a)/(b), {conc} at a time vs 1:  {span(sp, lambda x: f'{x:.2f}x')}"
      f"   [at most {min(conc, int(nproc))}x with {nproc} CPUs]")
busy = [s["cpu"] / s["t"] for s in of("b")]
print(f"  CPUs kept busy by (b) (CPU / wall): {span(busy, lambda x: f'{x:.2f}')} of {nproc};"
      f" (a): {med([s['cpu'] / s['t'] for s in of('a')]):.2f}")
ok = "met" if med(cached) < 5 else "MISSED"
print(f"cached rerun (d)/(c):                {span(cached, lambda x: f'{x:.1f} %')}   target < 5 %: {ok}")
cb = ratios("c", "b")
print(f"first scan with cache (c)/(b):       {span(cb, lambda x: f'{x:.2f}x')}   (cost of writing the cache, plus noise)")
fa_ = ratios("a", "fa")
fb_ = ratios("b", "fb")
print(f"fleetgate vs bare trivy (a)/(a'):    {span(fa_, lambda x: f'{x:.2f}x')}")
print(f"fleetgate vs bare trivy (b)/(b'):    {span(fb_, lambda x: f'{x:.2f}x')}")
print(f"trivy runs in (d): {sum(s['trivy_runs'] for s in of('d'))} over {len(of('d'))} rerun(s)"
      f" (expected 0); in each of (a), (b), (c): {images}")
print()
print("where the time goes (trivy alone, same images and DB; "
      f"{probes} sample(s) of each per round):")
row("trivy --version (process startup only)", "version")
row("trivy image, 1 image, fresh trivy cache", "cold")
row("trivy image, 1 image, warm trivy cache", "warm")
v, c, w = med(times("version")), med(times("cold")), med(times("warm"))
a, d = med(times("a")), med(times("d"))
fa = med(times("fa"))
print(f"  per image, 1 at a time: fleetgate (a) {1e3 * a / images:.0f} ms, bare trivy (a') {1e3 * fa / images:.0f} ms;"
      f" trivy startup alone {1e3 * v:.0f} ms = {100 * v / c:.0f} % of a one-image trivy scan ({1e3 * c:.0f} ms)")
print(f"  a fully cached run (no trivy at all): {1e3 * d:.0f} ms; "
      f"sum of per-image trivy time if run one by one: {images * c:.2f} s")
for mode in ("a", "b"):
    ss = of(mode)
    lo = med([s["image_seconds_min"] for s in ss])
    hi = med([s["image_seconds_max"] for s in ss])
    wall = med([s["t"] for s in ss])
    note = "  <- every image shows ~the whole run, not its own scan" if lo > 0.8 * wall else ""
    print(f"  per-image `seconds` in fleetgate's JSON report, ({mode}): {lo:.2f} .. {hi:.2f} s"
          f" (run wall {wall:.2f} s, one trivy scan ~{c:.2f} s){note}")
EOF
