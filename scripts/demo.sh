#!/usr/bin/env bash
# The main job (README "Try it"): on a fresh Debian machine, installs what it
# needs, builds fleetgate, and runs it on a copy of this repository's example
# fleet: check, then a real change (a port move and a rotated secret) planned
# as text, as the merge-request comment, and as JSON.
#
# Then it deploys to a local sandbox fleet (scripts/sandbox.sh: real sshd
# hosts on loopback): canary, production, an upgrade, and a broken change
# that is rolled back; it leaves the sandbox running to poke at.
#
# Uses the TEST age key in tests/keys/ (public on purpose; never use it for
# real secrets). The approval gate, records pushed to a remote and the
# automatic `git revert` come with `fleetgate run` (issue 4).
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

step "a local sandbox fleet: sshd hosts on loopback (scripts/sandbox.sh)"
cd "$OLDPWD_DEMO"
bash scripts/sandbox.sh up
sandbox=${SANDBOX:-/tmp/fleetgate-sandbox}
cd "$sandbox/fleet"
export FLEETGATE_SSH_KEY=$sandbox/deploy_key
health() { curl -s "http://127.0.0.1:$(( $(cat "$sandbox/hosts/$1/port") + 1000 ))/health" | tail -n 1; }

step "fleetgate deploy --stage canary (alpha-1)"
"$bin" deploy --stage canary --rev HEAD
echo "alpha-1 serves: $(health alpha-1)"

step "fleetgate deploy --stage production (beta-1, beta-2; 2 at a time)"
"$bin" deploy --stage production --rev HEAD
echo "beta-1 serves: $(health beta-1)"

step "an upgrade: version 2, planned, then deployed to canary"
sed -i 's/version: "1"/version: "2"/' clients/alpha.yaml clients/beta.yaml
git -c user.name=demo -c user.email=demo@example.org commit -qam "web: version 2"
"$bin" plan --base HEAD~1 --head HEAD
"$bin" deploy --stage canary --rev HEAD
echo "alpha-1 serves: $(health alpha-1)"

step "a broken change: its health check fails on canary, and alpha-1 is rolled back"
sed -i 's/health: ok/health: sick/' clients/alpha.yaml
sed -i 's/version: "2"/version: "3"/' clients/alpha.yaml
git -c user.name=demo -c user.email=demo@example.org commit -qam "web: version 3 (broken)"
if "$bin" deploy --stage canary --rev HEAD; then
  echo "the broken change was not caught" >&2
  exit 1
else
  echo "deploy exited $? (1: a gate failed and the hosts were rolled back)"
fi
echo "alpha-1 serves again: $(health alpha-1)"

step "fleetgate status --drift (what each host runs; hand edits show as drift)"
"$bin" status --drift || true

step "the sandbox keeps running"
cat <<TXT
fleet repository: $sandbox/fleet   (FLEETGATE_SSH_KEY=$sandbox/deploy_key)
try:   cd $sandbox/fleet && $bin status
stop:  bash $OLDPWD_DEMO/scripts/sandbox.sh down
TXT
