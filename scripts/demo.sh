#!/usr/bin/env bash
# The main job (README "Try it"): on a fresh Debian machine, installs what it
# needs, builds fleetgate, and runs it on a copy of this repository's example
# fleet: check, then a real change (a port move and a rotated secret) planned
# as text, as the merge-request comment, and as JSON.
#
# Then it runs the whole pipeline on a local sandbox fleet (scripts/sandbox.sh:
# real sshd hosts on loopback, a bare Git remote): first rollout, a change
# through canary, an approval, production, then a broken change that is
# rolled back on the hosts and reverted in Git. It leaves the sandbox
# running to poke at.
#
# Uses the TEST age key in tests/keys/ (public on purpose; never use it for
# real secrets).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

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

step "a local sandbox fleet: sshd hosts on loopback and a Git remote (scripts/sandbox.sh)"
cd "$OLDPWD_DEMO"
bash scripts/sandbox.sh up
sandbox=${SANDBOX:-/tmp/fleetgate-sandbox}
cd "$sandbox/fleet"
export FLEETGATE_SSH_KEY=$sandbox/deploy_key
health() { curl -s "http://127.0.0.1:$(( $(cat "$sandbox/hosts/$1/port") + 1000 ))/health" | tr '\n' ' '; }
serving() { for h in alpha-1 beta-1 beta-2; do echo "  $h serves: $(health $h)"; done; }
# Runs a command that may end with a non-zero exit code, and says which.
expect() {
  local want=$1; shift
  set +e; "$@"; local got=$?; set -e
  echo "exit $got"
  [ "$got" = "$want" ] || { echo "expected exit $want" >&2; exit 1; }
}

step "first rollout, stage by stage: fleetgate deploy --stage canary, then production"
"$bin" deploy --stage canary --rev HEAD
"$bin" deploy --stage production --rev HEAD
serving

step "a change is pushed to main: web version 2 for every client"
sed -i 's/version: "1"/version: "2"/' clients/alpha.yaml clients/beta.yaml
git commit -qam "web: version 2"
git push -q origin main

step "CI runs: fleetgate run --base HEAD~1 --head HEAD  (canary, then production waits: exit 4)"
expect 4 "$bin" run --base HEAD~1 --head HEAD
serving

step "bob approves the plan he reviewed: fleetgate approve --rev HEAD --by bob"
expect 2 "$bin" approve --rev HEAD --by mallory
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

step "what Git records: deployed refs and the run record on the failed commit"
git ls-remote origin 'refs/fleetgate/*' | sed 's/^/  /'
git fetch -q origin refs/notes/fleetgate:refs/notes/fleetgate
git notes --ref=fleetgate show HEAD~1 | python3 -c 'import json,sys; n=json.load(sys.stdin); print("  plan", n["plan_hash"][:12], "| stages", {k: v["passed"] for k, v in n["stages"].items()}, "| revert", n.get("revert", {}).get("result"))'

step "fleetgate status --drift (what each host runs; hand edits show as drift)"
"$bin" status --drift || true

step "the sandbox keeps running"
cat <<TXT
fleet repository: $sandbox/fleet   (origin: $sandbox/remote.git; FLEETGATE_SSH_KEY=$sandbox/deploy_key)
try:   cd $sandbox/fleet && $bin status
stop:  bash $OLDPWD_DEMO/scripts/sandbox.sh down
TXT
