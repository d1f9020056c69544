//! Data parallelism over the machine's cores, for per-client work that is
//! pure CPU (validating, rendering, diffing). Order is preserved.

/// Work smaller than this per thread is done on the calling thread.
const MIN_PER_THREAD: usize = 64;

/// The machine's cores (as the process may use them: cgroup quotas and
/// CPU affinity count), asked once: each ask reads cgroup files.
pub fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// `items.iter().map(f).collect()`, on up to one thread per core.
pub fn map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = cores().min(items.len().div_ceil(MIN_PER_THREAD).max(1));
    if threads == 1 {
        return items.iter().map(f).collect();
    }
    let chunk = items.len().div_ceil(threads);
    // Each worker writes its results into its own part of one vector, sized
    // once: no per-worker vectors copied into a third.
    let mut out: Vec<Option<R>> = std::iter::repeat_with(|| None).take(items.len()).collect();
    let f = &f;
    let work = move |part: &[T], slots: &mut [Option<R>]| {
        for (item, slot) in part.iter().zip(slots) {
            *slot = Some(f(item));
        }
    };
    std::thread::scope(|s| {
        let mut parts = items.chunks(chunk).zip(out.chunks_mut(chunk));
        let first = parts.next();
        for (part, slots) in parts {
            s.spawn(move || work(part, slots));
        }
        // The calling thread takes the first part: one thread fewer, and
        // what it allocates comes from the room the process freed before
        // (on glibc, other threads allocate from arenas of their own).
        if let Some((part, slots)) = first {
            work(part, slots);
        }
    });
    out.into_iter()
        .map(|r| r.expect("every item is mapped"))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_order_small_and_large() {
        for n in [0, 1, 63, 64, 65, 1000] {
            let items: Vec<usize> = (0..n).collect();
            assert_eq!(
                super::map(&items, |x| x * 2),
                items.iter().map(|x| x * 2).collect::<Vec<_>>()
            );
        }
    }
}
