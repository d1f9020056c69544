//! The pipeline's data and decisions: plain types and pure functions, no
//! I/O. Nothing here imports a process, Git, HTTP or SSH library (a CI
//! check holds this, `scripts/layers.sh`); the edges do that work behind
//! the traits of `ports.rs`.

pub mod outcome;
pub mod record;
