#!/usr/bin/env bash
# Builds and publishes a fleetgate release: what .forgejo/workflows/release.yaml
# runs on a pushed tag vX.Y.Z, and what runs the same way anywhere else.
#
#   release.sh build [--dev] [DIST]     cargo zigbuild for x86_64 glibc 2.28
#                                       (release profile; --dev: the tests'
#                                       dev build), then `package`
#   release.sh package BINARY [DIST]    DIST/fleetgate-x86_64-linux and
#                                       DIST/SHA256SUMS ('<sha256>  <name>', as
#                                       sha256sum writes it), after `check-glibc`
#   release.sh check-glibc BINARY       refuses (exit 1) a binary that needs a
#                                       glibc newer than Debian 11's 2.31
#   release.sh publish [--tag vX.Y.Z] [DIST]
#                                       the Forgejo release of the tag, with
#                                       DIST's assets and SHA256SUMS (below)
# DIST defaults to dist/ in the repository.
#
# publish talks to the Forgejo API of the job (GITHUB_SERVER_URL, then
# FLEETGATE_FORGE_URL or GITHUB_API_URL or <server>/api/v1, as fleetgate
# does) for GITHUB_REPOSITORY with FORGEJO_TOKEN or GITHUB_TOKEN (the job's
# token). The tag is --tag, else GITHUB_REF (refs/tags/vX.Y.Z). It refuses,
# before any request, a tag that is not v + Cargo.toml's version, a binary
# whose --version says another, and a DIST that does not match its SHA256SUMS.
#
# Re-running publish is safe. A release that already exists for the tag is
# completed, never changed: every asset it already has must be byte for byte
# the one in DIST (downloaded and compared first; otherwise nothing is
# uploaded and it exits 1 naming the asset to delete), and only the missing
# ones are uploaded. SHA256SUMS goes last, so a release cut short has no
# SHA256SUMS and install.sh refuses it until a re-run completes it.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
asset=fleetgate-x86_64-linux
target=x86_64-unknown-linux-gnu
# Zig's glibc 2.28 stubs: what the binary links against. Debian 11 has 2.31.
zig_target=$target.2.28
max_glibc=2.31

fail() {
  echo "release: $*" >&2
  exit 1
}
say() { echo "release: $*" >&2; }

# Cargo.toml's [package] version.
crate_version() {
  awk '/^\[/ { pkg = ($0 == "[package]") } pkg && /^version *=/ { gsub(/.*= *"|".*/, ""); print; exit }' \
    "$root/Cargo.toml"
}

check_glibc() {
  local binary=$1 header needs newest
  [ -f "$binary" ] || fail "no such file: $binary"
  command -v readelf >/dev/null || fail "needs readelf (apt-get install binutils)"
  header=$(readelf -h "$binary" 2>/dev/null) || fail "$binary is not an ELF file"
  grep -q 'Machine: *Advanced Micro Devices X86-64' <<<"$header" ||
    fail "$binary is not an x86_64 binary"
  # The version-needed section (.gnu.version_r): the versions of each shared
  # library the dynamic loader must find, or it refuses to start the binary.
  needs=$(readelf -V --wide "$binary" | grep -o 'Name: GLIBC_[0-9][0-9.]*' | sed 's/Name: GLIBC_//' | sort -uV)
  [ -n "$needs" ] || fail "$binary needs no GLIBC_ version: not a dynamically linked glibc binary?"
  newest=$(tail -n1 <<<"$needs")
  if [ "$(printf '%s\n%s\n' "$newest" "$max_glibc" | sort -V | tail -n1)" != "$max_glibc" ]; then
    fail "$binary needs GLIBC_$newest, newer than Debian 11's $max_glibc (it needs: $(tr '\n' ' ' <<<"$needs")); build it with: cargo zigbuild --target $zig_target"
  fi
  say "$binary needs glibc $newest at most (limit $max_glibc)"
}

package() {
  local binary=$1 dist=$2 version said
  check_glibc "$binary"
  version=$(crate_version)
  said=$("$binary" --version) || fail "$binary --version failed"
  [[ "$said" == "fleetgate $version "* ]] ||
    fail "$binary --version says '$said', not fleetgate $version (Cargo.toml)"
  mkdir -p "$dist"
  rm -f "$dist/SHA256SUMS" "$dist/$asset"
  cp "$binary" "$dist/$asset"
  chmod 0755 "$dist/$asset"
  (cd "$dist" && sha256sum "$asset" > SHA256SUMS)
  say "packaged $said in $dist:"
  sed 's/^/  /' "$dist/SHA256SUMS" >&2
}

build() {
  local profile=release dir
  if [ "${1:-}" = --dev ]; then
    profile=dev
    shift
  fi
  local dist=${1:-$root/dist}
  command -v cargo-zigbuild >/dev/null ||
    fail "cargo-zigbuild is not on PATH: pip install --require-hashes -r scripts/zigbuild-requirements.txt"
  local pinned
  pinned=$(sed -n 's/^cargo-zigbuild==\([^ ]*\).*/\1/p' "$root/scripts/zigbuild-requirements.txt")
  [ "$(cargo-zigbuild --version)" = "cargo-zigbuild $pinned" ] ||
    fail "$(command -v cargo-zigbuild) is $(cargo-zigbuild --version), not the pinned $pinned (scripts/zigbuild-requirements.txt)"
  dir=$(cargo metadata --locked --no-deps --format-version 1 --manifest-path "$root/Cargo.toml" |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
  [ -n "$dir" ] || fail "cargo metadata did not name the target directory"
  # --dev is the tests' build (scripts/test.sh): dependencies unoptimised,
  # which halves its compile (8 CPU-minutes instead of 17.5) and needs the
  # same glibc versions.
  local -a args=(--locked --profile "$profile" --target "$zig_target")
  [ "$profile" = dev ] && args+=(--config 'profile.dev.package."*".opt-level=0')
  say "cargo zigbuild ${args[*]}"
  (cd "$root" && cargo zigbuild "${args[@]}")
  local out=$profile
  [ "$profile" = dev ] && out=debug
  package "$dir/$target/$out/fleetgate" "$dist"
}

# --- publish ---------------------------------------------------------------

# api METHOD PATH [curl args]: the response body in $body, the status in $code.
api() {
  local method=$1 path=$2
  shift 2
  code=$(curl -sS -X "$method" -o "$work/body" -w '%{http_code}' -H @"$work/auth" \
    -H 'Accept: application/json' "$@" "$api_url$path") ||
    fail "$method $api_url$path: no answer from the forge"
  body=$(cat "$work/body")
}

# expect CODE WHAT: fail unless the last answer had status CODE.
expect() {
  [ "$code" = "$1" ] && return 0
  local message
  message=$(jq -r '.message? // empty' <<<"$body" 2>/dev/null || true)
  case "$code" in
    401 | 403) fail "$2: the forge answered $code ${message:-}: the token (FORGEJO_TOKEN or GITHUB_TOKEN) may not write releases of $repository" ;;
    *) fail "$2: the forge answered $code ${message:-$(head -c 300 <<<"$body")}" ;;
  esac
}

publish() {
  local tag=""
  if [ "${1:-}" = --tag ]; then
    tag=${2:?--tag needs a tag}
    shift 2
  fi
  local dist=${1:-$root/dist}
  if [ -z "$tag" ]; then
    case "${GITHUB_REF:-}" in
      refs/tags/*) tag=${GITHUB_REF#refs/tags/} ;;
      "") fail "no tag: give --tag vX.Y.Z (or run on a tag push, which sets GITHUB_REF)" ;;
      *) fail "GITHUB_REF is $GITHUB_REF, not a tag: releases are cut from tags vX.Y.Z" ;;
    esac
  fi
  # Everything that can be checked without the forge, first.
  local version
  version=$(crate_version)
  [ -n "$version" ] || fail "no version in Cargo.toml"
  [ "$tag" = "v$version" ] ||
    fail "tag $tag does not match Cargo.toml's version $version (the tag must be v$version): refusing to publish; bump the version in Cargo.toml, or tag v$version"
  [ -f "$dist/SHA256SUMS" ] || fail "no $dist/SHA256SUMS: run release.sh build first"
  local -a names
  mapfile -t names < <(awk '{ sub(/^\*/, "", $2); print $2 }' "$dist/SHA256SUMS")
  [[ " ${names[*]} " == *" $asset "* ]] || fail "$dist/SHA256SUMS has no line for $asset"
  (cd "$dist" && sha256sum --check --strict --quiet SHA256SUMS) ||
    fail "$dist does not match its SHA256SUMS: refusing to publish it"
  local said
  said=$("$dist/$asset" --version) || fail "$dist/$asset --version failed"
  [[ "$said" == "fleetgate $version "* ]] ||
    fail "$dist/$asset --version says '$said', not fleetgate $version: refusing to publish it as $tag"
  names+=(SHA256SUMS)

  local server=${GITHUB_SERVER_URL:?GITHUB_SERVER_URL is not set (the forge, e.g. https://forgejo.example.com)}
  server=${server%/}
  repository=${GITHUB_REPOSITORY:?GITHUB_REPOSITORY is not set (OWNER/NAME)}
  api_url=${FLEETGATE_FORGE_URL:-${GITHUB_API_URL:-$server/api/v1}}
  api_url=${api_url%/}
  local token=${FORGEJO_TOKEN:-${GITHUB_TOKEN:-}}
  [ -n "$token" ] || fail "no token: set GITHUB_TOKEN (the job's token) or FORGEJO_TOKEN"
  command -v jq >/dev/null || fail "needs jq (apt-get install jq)"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  # The token goes to curl in a file, never on a command line (ps shows those).
  (umask 077 && printf 'Authorization: token %s\n' "$token" > "$work/auth")

  local repo_path="/repos/$repository" release id created=false
  api GET "$repo_path/releases/tags/$tag"
  if [ "$code" = 404 ]; then
    local request
    request=$(jq -n --arg tag "$tag" --arg sha "${GITHUB_SHA:-}" --arg said "$said" '{
        tag_name: $tag, name: $tag,
        body: "fleetgate \($tag): `\($said)`. Install: .forgejo/install.sh with FLEETGATE_VERSION=\($tag | ltrimstr("v")), checked against SHA256SUMS.",
        draft: false, prerelease: ($tag | test("-"))
      } + (if $sha != "" then { target_commitish: $sha } else {} end)')
    api POST "$repo_path/releases" -H 'Content-Type: application/json' --data-binary "$request"
    expect 201 "create the release $tag"
    created=true
  else
    expect 200 "look up the release $tag"
  fi
  release=$body
  id=$(jq -r '.id' <<<"$release")
  [[ "$id" =~ ^[0-9]+$ ]] || fail "the forge's release $tag has no id"
  if [ "$created" = true ]; then
    say "created release $tag (id $id)"
  else
    say "release $tag exists (id $id): completing it"
  fi

  # The plan, in full, before any upload: which assets are there already
  # (then they must be ours), which to upload.
  local -a upload=()
  local name url have want
  for name in "${names[@]}"; do
    url=$(jq -r --arg n "$name" '[.assets[]? | select(.name == $n)][0].browser_download_url // empty' <<<"$release")
    if [ -z "$url" ]; then
      upload+=("$name")
      continue
    fi
    curl -fsSL -H @"$work/auth" -o "$work/existing" "$url" ||
      fail "release $tag already has $name, and it could not be downloaded from $url to compare"
    have=$(sha256sum "$work/existing" | cut -d' ' -f1)
    want=$(sha256sum "$dist/$name" | cut -d' ' -f1)
    [ "$have" = "$want" ] ||
      fail "release $tag already has a different $name (sha256 $have, this build's is $want): nothing uploaded; delete that asset (or the release) on the forge, then run again"
    say "$name: already published, identical"
  done
  for name in "${upload[@]}"; do
    api POST "$repo_path/releases/$id/assets?name=$name" \
      -F "attachment=@$dist/$name;filename=$name;type=application/octet-stream"
    expect 201 "upload $name to release $tag"
    say "$name: uploaded ($(jq -r '.browser_download_url' <<<"$body"))"
  done
  say "published $tag: ${names[*]}"
}

case "${1:-}" in
  build) shift && build "$@" ;;
  package) shift && package "${1:?package needs the binary}" "${2:-$root/dist}" ;;
  check-glibc) shift && check_glibc "${1:?check-glibc needs the binary}" ;;
  publish) shift && publish "$@" ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
