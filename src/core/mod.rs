//! The pipeline's data and decisions: plain types and pure functions, no
//! I/O of their own. Nothing here names a process, Git, HTTP or SSH library
//! (a CI check holds this: `scripts/layers.sh`); the edges do that work
//! behind the traits of `ports.rs`.

pub mod approval;
pub mod engine;
pub mod events;
pub mod lock;
pub mod outcome;
pub mod record;
pub mod records;
pub mod rev;
pub mod shard;
pub mod verdict;
