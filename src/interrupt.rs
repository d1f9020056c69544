//! SIGTERM / SIGINT during a run: stop starting hosts, let the ones in
//! flight finish (or roll back), record, release the lock, exit non-zero.
//! A second signal exits at once.

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Has a stop been asked for?
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// Listens for SIGTERM and SIGINT on a thread of its own, so the flag is set
/// even while the main thread is busy in Git or blocked on a child process.
pub fn install() {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                let _ = ready_tx.send(());
                return;
            };
            rt.block_on(async move {
                use tokio::signal::unix::{SignalKind, signal};
                let (Ok(mut term), Ok(mut int)) = (
                    signal(SignalKind::terminate()),
                    signal(SignalKind::interrupt()),
                ) else {
                    let _ = ready_tx.send(());
                    return;
                };
                let _ = ready_tx.send(());
                loop {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                    if REQUESTED.swap(true, Ordering::SeqCst) {
                        eprintln!("fleetgate: second signal, exiting now; the lock expires by itself");
                        std::process::exit(130);
                    }
                    tracing::warn!(
                        "interrupted: no new hosts are started; hosts in flight finish or roll back, then the run is recorded and the lock released (signal again to exit at once)"
                    );
                }
            });
        })
        .expect("spawn the signal thread");
    // Handlers are in place before the run touches anything.
    let _ = ready_rx.recv();
}
