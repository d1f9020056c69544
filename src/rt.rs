//! The async runtime, for the edges that wait on many things at once (SSH
//! sessions, HTTP probes, trivy processes, forge requests): one thread is
//! plenty for waiting. The pipeline itself is synchronous. And the real
//! clock, which is the process's too: the wall clock, sleeping, signals.

/// The async runtime for commands that talk to hosts: one thread is plenty
/// for waiting on SSH and HTTP.
pub fn runtime() -> crate::error::Result<tokio::runtime::Runtime> {
    raise_open_files_limit();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| crate::error::Error::Io {
            action: "start",
            path: "the async runtime".into(),
            source,
        })
}

/// Raises the soft limit on open files to the hard one (at most 65536), once:
/// a deploy holds a few descriptors per host (the master's control
/// connection, each command's mux socket and pipes), so a fleet of a few
/// hundred hosts goes past the common soft limit of 1024. The cap: some
/// programs close every descriptor up to the limit when they start.
fn raise_open_files_limit() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct it is given, nothing else.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
            let e = std::io::Error::last_os_error();
            tracing::debug!("reading the open files limit: {e}");
            return;
        }
        let want = lim.rlim_max.min(65536);
        if lim.rlim_cur >= want {
            return;
        }
        let before = lim.rlim_cur;
        lim.rlim_cur = want;
        // SAFETY: setrlimit reads the struct it is given, nothing else.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } == 0 {
            tracing::debug!("raised the open files limit from {before} to {want}");
        } else {
            let e = std::io::Error::last_os_error();
            tracing::debug!("raising the open files limit from {before} to {want}: {e}");
        }
    });
}

/// Runs `fut` to completion on a thread of the runtime's blocking pool, for a
/// future whose polls block their thread for a while: `openssh` forks and
/// execs each ssh master in its first poll, and on the single runtime thread
/// those spawns would queue behind each other, so the connections of a wave
/// would start one after the other instead of together. Each such future
/// gets a thread of its own; what it awaits (a child's exit, a timer) is
/// still driven by the runtime, whose thread keeps running the other hosts
/// meanwhile (`Handle::block_on` on a current-thread runtime relies on that).
/// `Err` when the future panicked or the runtime is shutting down.
pub async fn off_runtime<F>(fut: F) -> Result<F::Output, tokio::task::JoinError>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || handle.block_on(fut)).await
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
