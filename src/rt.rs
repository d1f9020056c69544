//! The async runtime, for the edges that wait on many things at once (SSH
//! sessions, HTTP probes, trivy processes, forge requests): one thread is
//! plenty for waiting. The pipeline itself is synchronous.

/// The async runtime for commands that talk to hosts: one thread is plenty
/// for waiting on SSH and HTTP.
pub fn runtime() -> crate::error::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| crate::error::Error::Io {
            action: "start",
            path: "the async runtime".into(),
            source,
        })
}
