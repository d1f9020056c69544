#!/usr/bin/env bash
# The main job (README "Try it"): on a fresh Debian machine, installs what it
# needs, builds fleetgate, and runs it on a copy of this repository's example
# fleet: check, then a real change (a port move and a rotated secret) planned
# as text, as the merge-request comment, and as JSON; then the image gate
# (`scan`, real trivy, a fixture vulnerability DB, two local images).
#
# Then it runs the whole pipeline on a local sandbox fleet (scripts/sandbox.sh:
# real sshd hosts on loopback, a bare Git remote): the first push's run
# (canary, approval, production), a change through canary, an approval,
# production, then a broken change that is
# rolled back on the hosts and reverted in Git, and a host removed from a
# client. It leaves the sandbox running to poke at.
#
# Uses the TEST age key in tests/keys/ (public on purpose; never use it for
# real secrets).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

# Runs a command that may end with a non-zero exit code, and says which.
expect() {
  local want=$1; shift
  set +e; "$@"; local got=$?; set -e
  echo "exit $got"
  [ "$got" = "$want" ] || { echo "expected exit $want" >&2; exit 1; }
}
step() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }

step "building fleetgate"
cargo build --quiet --locked
bin=$PWD/target/debug/fleetgate
export SOPS_AGE_KEY_FILE=$PWD/tests/keys/test-age-key.txt

OLDPWD_DEMO=$PWD
work=$(mktemp -d /tmp/fleetgate-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT
git clone -q "$PWD" "$work/fleet"
cd "$work/fleet"
export GIT_AUTHOR_NAME=demo GIT_AUTHOR_EMAIL=demo@example.org
export GIT_COMMITTER_NAME=demo GIT_COMMITTER_EMAIL=demo@example.org

step "fleetgate check (the example fleet: 3 clients, 3 apps, 2 stages)"
"$bin" check

step "a change: alpha moves whoami to port 8090, beta's api token is rotated"
sed -i 's/whoami_port: 8080/whoami_port: 8090/' clients/alpha.yaml
(cd secrets && sops set clients/beta.sops.yaml '["api_token"]' '"demo-rotated-token"')
git commit -qam "alpha: whoami on 8090; beta: rotate api token"
git show --stat --format='commit %h %s' HEAD | cat

step "fleetgate plan --base HEAD~1 --head HEAD"
"$bin" plan --base HEAD~1 --head HEAD

step "fleetgate plan --format markdown (what the merge-request comment shows)"
"$bin" plan --base HEAD~1 --head HEAD --format markdown

step "fleetgate plan --format json (schema 1)"
"$bin" plan --base HEAD~1 --head HEAD --format json >"$work/plan.json"
python3 -c 'import json,sys; p=json.load(open(sys.argv[1])); print("plan_hash", p["plan_hash"]); [print(" ", c["stage"], c["name"], [(a["name"], a["action"], a["secrets_changed"]) for a in c["apps"]]) for c in p["clients"]]' "$work/plan.json"

step "the rotated value appears in no output"
if "$bin" plan --base HEAD~1 --head HEAD --format json -vv 2>&1 | grep -q demo-rotated-token; then
  echo "LEAK: the secret value was printed" >&2
  exit 1
fi
echo "ok: no secret value in plan output or logs"

step "without a decryption key (a merge-request job): values are not compared, keys are named"
SOPS_AGE_KEY_FILE= "$bin" plan --base HEAD~1 --head HEAD

step "the image gate: fleetgate scan (real trivy, a fixture vulnerability DB, a loopback registry)"
# The example's images live on public registries this machine may not reach:
# the gate is shown on two local images, one with a (made-up) CRITICAL CVE.
scan_dir=$work/scan
mkdir -p "$scan_dir/registry" "$scan_dir/fleet/pipelines/apps/vuln" "$scan_dir/fleet/pipelines/apps/clean" "$scan_dir/fleet/clients"
fixtures=$OLDPWD_DEMO/tests/fixtures/trivy
python3 "$fixtures/build_db.py" "$fixtures/vulndb.json" "$scan_dir/trivy-cache"
reg_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
printf 'version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' "$scan_dir/registry" "$reg_port" > "$scan_dir/registry.yml"
/usr/bin/docker-registry serve "$scan_dir/registry.yml" >/dev/null 2>&1 &
reg_pid=$!
trap 'kill $reg_pid 2>/dev/null; rm -rf "$work"' EXIT
until curl -s "http://127.0.0.1:$reg_port/v2/" >/dev/null; do sleep 0.1; done
vuln=127.0.0.1:$reg_port/fixture/vuln:1@$(python3 "$fixtures/image.py" push "127.0.0.1:$reg_port" fixture/vuln 1 openssl=3.0.11-1~deb12u2 libexpat1=2.5.0-1)
clean=127.0.0.1:$reg_port/fixture/clean:1@$(python3 "$fixtures/image.py" push "127.0.0.1:$reg_port" fixture/clean 1 bash=5.2.15-2+b2)
(
  cd "$scan_dir/fleet"
  printf 'stages:\n  - name: canary\n    group: canary\nscan:\n  fail_on: [CRITICAL, HIGH]\n  ignore_unfixed: true\n' > pipelines/pipeline.yaml
  for app in vuln clean; do
    image=$([ $app = vuln ] && echo "$vuln" || echo "$clean")
    printf 'runtime: compose\nimages:\n  main: %s\nfiles:\n  compose.yaml: compose.yaml.j2\n' "$image" > pipelines/apps/$app/app.yaml
    printf 'services:\n  main:\n    image: {{ app.images.main }}\n' > pipelines/apps/$app/compose.yaml.j2
  done
  printf 'domain: a.example.org\ngroup: canary\napps: [clean]\nhosts:\n  - name: a-1\n    address: 192.0.2.1\n' > clients/alpha.yaml
  printf 'domain: b.example.org\ngroup: canary\napps: [vuln]\nhosts:\n  - name: b-1\n    address: 192.0.2.2\n' > clients/beta.yaml
  git init -q -b main && git add -A && git commit -qm "scan demo fleet"
  export FLEETGATE_TRIVY_CACHE_DIR=$scan_dir/trivy-cache FLEETGATE_CACHE_DIR=$scan_dir/cache
  expect 1 "$bin" scan --rev HEAD
  printf 'ignore:\n  - id: CVE-2099-0001\n    package: openssl\n    expires: 2099-12-31\n    reason: "demo: accepted until a fixed image exists"\n' > pipelines/trivyignore.yaml
  git add -A && git commit -qm "accept CVE-2099-0001"
  echo "-- with the finding accepted (and every result from the cache):"
  expect 0 "$bin" scan --rev HEAD
)

step "a local sandbox fleet: sshd hosts on loopback and a Git remote (scripts/sandbox.sh)"
cd "$OLDPWD_DEMO"
bash scripts/sandbox.sh up
sandbox=${SANDBOX:-/tmp/fleetgate-sandbox}
cd "$sandbox/fleet"
export FLEETGATE_SSH_KEY=$sandbox/deploy_key
health() { curl -s "http://127.0.0.1:$(( $(cat "$sandbox/hosts/$1/port") + 1000 ))/health" | tr '\n' ' '; }
serving() { for h in alpha-1 beta-1 beta-2; do echo "  $h serves: $(health $h)"; done; }

step "the hosts, and whether each one's key is pinned in pipelines/known_hosts (by host name)"
expect 0 "$bin" hosts

step "the fleet's first push: CI runs fleetgate run --base 0000… --head HEAD (the forge's \"before\" on a new branch): canary, then production waits (exit 4)"
expect 4 "$bin" run --base 0000000000000000000000000000000000000000 --head HEAD
serving
"$bin" approve --rev HEAD --by bob
step "the promote job resumes the run (no --base: the recorded one, here none): production (exit 0)"
expect 0 "$bin" run --head HEAD
serving

step "a change is pushed to main: web version 2 for every client"
sed -i 's/version: "1"/version: "2"/' clients/alpha.yaml clients/beta.yaml
git commit -qam "web: version 2"
git push -q origin main

step "CI runs: fleetgate run --base HEAD~1 --head HEAD  (canary, then production waits: exit 4)"
expect 4 "$bin" run --base HEAD~1 --head HEAD
serving

step "bob approves the plan he reviewed: fleetgate approve --rev HEAD --by bob"
expect 1 "$bin" approve --rev HEAD --by mallory
"$bin" approve --rev HEAD --by bob

step "CI runs again: canary is not redeployed, production goes out (exit 0)"
expect 0 "$bin" run --base HEAD~1 --head HEAD
serving

step "a broken change is pushed: version 3, whose health check fails"
sed -i 's/health: ok/health: sick/; s/version: "2"/version: "3"/' clients/alpha.yaml
sed -i 's/version: "2"/version: "3"/' clients/beta.yaml
git commit -qam "web: version 3"
git push -q origin main

step "CI runs: canary fails its gate, alpha-1 is rolled back, the change is reverted in Git (exit 1)"
expect 1 "$bin" run --base HEAD~1 --head HEAD
serving
git pull -q --ff-only origin main
echo "origin/main now:"
git log --format='  %h %s' -3
echo "the revert's trailers:"
git log -1 --format='%(trailers)' | sed 's/^/  /'

step "CI runs for the revert commit: nothing to do, the fleet already runs it (exit 0)"
expect 0 "$bin" run --base HEAD~1 --head HEAD

step "a removal: beta gives up beta-2 (its entry deleted from clients/beta.yaml); production carries it out after an approval"
python3 - <<'PY'
import re
p = "clients/beta.yaml"
text = open(p).read()
text = re.sub(r"  - name: beta-2\n(    .*\n)+", "", text)
open(p, "w").write(text)
PY
git commit -qam "beta: off beta-2"
git push -q origin main
expect 4 "$bin" run --base HEAD~1 --head HEAD
"$bin" approve --rev HEAD --by bob
expect 0 "$bin" run --head HEAD
echo "  beta-2 serves: $(health beta-2)(nothing: stopped; its releases stay on the host)"

step "what Git records: deployed refs and the run record on the failed commit"
git ls-remote origin 'refs/fleetgate/*' | sed 's/^/  /'
git fetch -q origin refs/notes/fleetgate:refs/notes/fleetgate
git notes --ref=fleetgate show HEAD~1 | python3 -c 'import json,sys; n=json.load(sys.stdin); print("  plan", n["plan_hash"][:12], "| stages", {k: v["passed"] for k, v in n["stages"].items()}, "| revert", n.get("revert", {}).get("result"))'

step "fleetgate history (every run Git recorded, newest first)"
"$bin" history

step "fleetgate status --drift (what each host runs; hand edits show as drift)"
"$bin" status --drift || true

step "the sandbox keeps running"
cat <<TXT
fleet repository: $sandbox/fleet   (origin: $sandbox/remote.git; FLEETGATE_SSH_KEY=$sandbox/deploy_key)
try:   cd $sandbox/fleet && $bin status
stop:  bash $OLDPWD_DEMO/scripts/sandbox.sh down
TXT
