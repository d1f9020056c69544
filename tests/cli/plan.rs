//! `fleetgate plan`: exact per-client plans between two commits.
