# Sourced by the bench scripts (which define $root, $work, log and die).

# The fleetgate under test, as a private copy in $work (a rebuild in the
# project while the bench runs cannot swap it): FLEETGATE_BIN if set, else a
# release build of this checkout. Sets $bin and $src_rev.
fleetgate_binary() {
    bin=$work/fleetgate
    if [[ -n ${FLEETGATE_BIN:-} ]]; then
        [[ -x $FLEETGATE_BIN ]] || die "FLEETGATE_BIN=$FLEETGATE_BIN is not executable"
        cp "$FLEETGATE_BIN" "$bin"
        src_rev="FLEETGATE_BIN=$FLEETGATE_BIN"
    else
        log "building fleetgate (release)..."
        (cd "$root" && cargo build --release --quiet) ||
            die "cargo build --release failed; set FLEETGATE_BIN to a built fleetgate to bench it"
        cp "$root/target/release/fleetgate" "$bin"
        src_rev=$(git -C "$root" describe --always --dirty 2>/dev/null || echo unknown)
    fi
}
