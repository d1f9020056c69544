//! Hosts over SSH: one trait for running a script on a host, the OpenSSH
//! implementation, and the release layout's scripts (built as data).

pub mod proxy;
pub mod quadlet;
pub mod release;
pub mod shell;
pub mod ssh;

pub use ssh::{Remote, RemoteError, RemoteOutput};
