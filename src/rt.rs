//! The async runtime, for the edges that wait on many things at once (SSH
//! sessions, HTTP probes, trivy processes, forge requests): one thread is
//! plenty for waiting. The pipeline itself is synchronous. And the real
//! clock, which is the process's too: the wall clock, sleeping, signals.

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

/// The real clock and the process's signal flag.
pub struct SystemClock;

impl crate::ports::Clock for SystemClock {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now()
    }

    fn sleep(&self, d: std::time::Duration) {
        std::thread::sleep(d);
    }

    fn interrupted(&self) -> bool {
        crate::interrupt::requested()
    }
}
