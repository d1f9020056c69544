#!/usr/bin/env bash
# The test command (README "Run the tests"; CI runs it through .ci/run):
# installs what the tests need, then formatting, lints, dependency policy, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

echo "== cargo fmt --check" >&2
cargo fmt --all -- --check

echo "== cargo clippy -D warnings" >&2
cargo clippy --all-targets --locked -- -D warnings

echo "== dependency policy: no OpenSSL, aws-lc or AWS SDK" >&2
for crate in openssl-sys aws-lc-sys aws-lc-rs aws-sdk-kms; do
  if cargo tree --locked -e normal,build -i "$crate" >/dev/null 2>&1; then
    echo "error: $crate is in the dependency tree:" >&2
    cargo tree --locked -e normal,build -i "$crate" >&2
    exit 1
  fi
done

echo "== cargo test" >&2
cargo test --locked
