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
# (A crate can be in Cargo.lock through a feature nobody enables; then
# `cargo tree -i` prints nothing and still exits 0: the tree is what counts.)
for crate in openssl-sys aws-lc-sys aws-lc-rs aws-sdk-kms; do
  if cargo tree --locked -e normal,build -i "$crate" 2>/dev/null | grep -q .; then
    echo "error: $crate is in the dependency tree:" >&2
    cargo tree --locked -e normal,build -i "$crate" >&2
    exit 1
  fi
done

echo "== layers: the core and pure modules name no edge library (ARCHITECTURE.md)" >&2
bash scripts/layers.sh --self-test
bash scripts/layers.sh

echo "== leak scan self-test" >&2
python3 scripts/leakscan.py --self-test

# The tests capture fleetgate's outputs and Git records here (tests/cli/leakscan.rs).
leakscan_dir="$(cargo metadata --locked --no-deps --format-version 1 |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/tmp/leakscan"
rm -rf "$leakscan_dir"

# The fast tests (the engine over in-memory doubles, pure modules) apart
# from the real-part ones (sshd hosts, git remotes, trivy, sops, docker):
# each shows its own time.
echo "== cargo test: unit tests (fakes and pure code)" >&2
cargo test --locked --bin fleetgate
# The release binary must run on Debian 11 (glibc 2.31): the same tree built
# by release.sh as the release job builds it, for glibc 2.28 with cargo
# zigbuild, but in the dev profile with unoptimised dependencies (a release
# build would cost a second optimised compile; the glibc versions needed are
# the same). release.sh checks them and packages it; tests/cli/release.rs
# checks them again, starts it with Debian 11's libc, and installs a
# release made by release.sh through install.sh.
echo "== release.sh build --dev: cargo zigbuild --target x86_64-unknown-linux-gnu.2.28" >&2
bash scripts/release.sh build --dev "${leakscan_dir%/leakscan}/release-dist"
export FLEETGATE_REQUIRE_ZIGBUILD=1

# The quadlet tests' guest (tests/cli/quadlet.rs): a Debian 13 root
# filesystem for systemd-nspawn, built once (about a minute, ~500 MB) and
# cached under ~/.cache/fleetgate-quadlet/rootfs-<hash of rootfs.sh>;
# debootstrap, systemd-container and socat come from Debian's packages,
# unpacked into that cache when the machine lacks them.
echo "== quadlet guest root filesystem (tests/quadlet/rootfs.sh)" >&2
quadlet_t=$SECONDS
bash tests/quadlet/rootfs.sh >/dev/null
echo "quadlet root filesystem ready in $((SECONDS - quadlet_t)) s" >&2

echo "== cargo test: integration tests (real parts)" >&2
cargo test --locked --test cli

# The main job is a test too: README command 1, whole, on the sandbox fleet
# (it checks every exit code it expects; it once broke unnoticed when one
# changed).
echo "== scripts/demo.sh (README command 1)" >&2
trap 'bash scripts/sandbox.sh down >/dev/null 2>&1 || true' EXIT
# Its output is scanned for secrets with the tests' (it uses the example
# fleet's, which the tests register).
mkdir -p "$leakscan_dir/captures"
demo_log="$leakscan_dir/captures/demo.log"
bash scripts/demo.sh > "$demo_log" 2>&1 || {
  echo "error: scripts/demo.sh failed; its last lines:" >&2
  tail -n 30 "$demo_log" >&2
  exit 1
}
echo "demo: passed" >&2

echo "== leak scan: no secret in any output or record of the tests and the demo" >&2
python3 scripts/leakscan.py "$leakscan_dir"
