#!/usr/bin/env bash
# The layering of ARCHITECTURE.md, checked: the core (policy and data) and
# the pure modules name no process, Git, HTTP or SSH library; only the
# edges do. Test modules and comments are not code that runs, and are
# left out. Exits 1 naming each file and line that crosses a layer.
#
#   scripts/layers.sh [DIR]      check the crate in DIR (default: this repo)
#   scripts/layers.sh --self-test
#       plants a crossing in a scratch tree and checks it is found, so the
#       check cannot pass by looking at nothing
set -euo pipefail
script=$(cd "$(dirname "$0")" && pwd)/layers.sh
if [ "${1:-}" = --self-test ]; then
  t=$(mktemp -d)
  trap 'rm -rf "$t"' EXIT
  mkdir -p "$t/src/core" "$t/src/commands" "$t/src/config" "$t/src/deploy" "$t/src/scan" "$t/src/gates" "$t/src/remote"
  printf 'use git2::Oid;\n#[cfg(test)]\nmod tests { use reqwest::Client; }\n' > "$t/src/core/engine.rs"
  printf '// git2:: in a comment is fine\n' > "$t/src/ports.rs"
  printf 'fn f() { super::run::go() }\n' > "$t/src/commands/plan.rs"
  if out=$(bash "$script" "$t" 2>&1); then
    echo "layers self-test: a planted crossing was not found" >&2
    exit 1
  fi
  for want in "src/core/engine.rs:1" "src/commands/plan.rs:1"; do
    grep -q "$want" <<<"$out" || { echo "layers self-test: $want not named:" >&2; echo "$out" >&2; exit 1; }
  done
  if grep -q "reqwest\|src/ports.rs" <<<"$out"; then
    echo "layers self-test: a test module or a comment was taken for code:" >&2; echo "$out" >&2; exit 1
  fi
  echo "layers self-test: planted crossings are found, tests and comments are not" >&2
  exit 0
fi
cd "${1:-$(dirname "$0")/..}"

# The code of a file: up to its `#[cfg(test)]` module, without comments.
code() {
  awk '/^#\[cfg\(test\)\]/ { exit } { sub(/\/\/.*/, ""); print FILENAME ":" FNR ": " $0 }' "$1"
}

failed=0
check() { # PATTERN WHY FILE...
  local pattern=$1 why=$2; shift 2
  local f hits
  for f in "$@"; do
    hits=$(code "$f" | grep -E "$pattern" || true)
    if [ -n "$hits" ]; then
      echo "error: $why" >&2
      echo "$hits" >&2
      failed=1
    fi
  done
}

edges='\b(git2|reqwest|openssh|octocrab)::|tokio::process|std::process::Command|\bCommand::new'
core=$(find src/core -name '*.rs' ! -name '*tests.rs'; echo src/ports.rs)
pure=$(find src/config src/deploy -name '*.rs' ! -name 'tests.rs' ! -name 'testing.rs'
       for f in src/plan.rs src/report.rs src/render.rs src/desired.rs \
                src/scan/pin.rs src/scan/policy.rs src/gates/health.rs \
                src/remote/release.rs src/remote/shell.rs src/remote/proxy.rs \
                src/remote/quadlet.rs \
                src/known_hosts.rs src/inventory/selector.rs; do
         if [ -f "$f" ]; then echo "$f"; fi
       done)
# shellcheck disable=SC2086
check "$edges" "the core names an edge's library (ARCHITECTURE.md: layers)" $core
# shellcheck disable=SC2086
check '\bstd::(fs|env)::|\bstd::thread::sleep' "the core reads files, the environment or the wall clock itself (use a port)" $core
# shellcheck disable=SC2086
check "$edges" "a pure module names an edge's library (ARCHITECTURE.md: layers)" $pure

# No command calls another command: they share through the modules below them.
for f in $(find src/commands -name '*.rs'); do
  [ "$f" = src/commands/mod.rs ] && continue
  check '\bsuper::(approve|check|deploy|lock|plan|rollback|run|scan|status)::' "a command calls another command" "$f"
done
# Nothing below the commands calls up into them.
check 'crate::commands' "a module calls up into commands/" $(find src -name '*.rs' ! -path 'src/commands/*' ! -name main.rs ! -name cli.rs)

if [ "$failed" = 0 ]; then
  echo "layers: $(echo $core | wc -w) core and $(echo $pure | wc -w) pure files name no edge library; no command calls another" >&2
fi
exit "$failed"
