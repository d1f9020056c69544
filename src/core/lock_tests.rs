//! The lock's policy over the doubles: a live run's renewals keep it, a
//! dead run's lock expires after the short expiry, a run whose lock was
//! taken over or removed finds out at its next check, and `lock release`
//! removes it with an entry on the lock log.

use std::time::Duration;

use super::*;
use crate::fakes::{FakeClock, FakeGit};

const TWO_MINUTES: Duration = Duration::from_secs(120);

fn claimant(run_id: &str) -> Claimant {
    Claimant {
        run_id: run_id.into(),
        holder: format!("{run_id}@runner"),
        run_url: Some(format!(
            "https://forge.example/o/fleet/actions/runs/{run_id}"
        )),
        shard: None,
    }
}

/// A lock written before `run_url` existed.
const OLD_LOCK: &str = r#"{"run_id": "other", "holder": "bob@laptop", "started_at": "2026-11-29T09:59:00Z", "expires_at": "2026-11-29T10:30:00Z"}"#;

#[test]
fn renewals_keep_a_live_runs_lock_and_a_dead_runs_lock_expires_in_minutes() {
    let clock = FakeClock::new();
    let a_git = FakeGit::new();
    let b_git = FakeGit::clone_of(a_git.remote.clone());
    let a = acquire(&a_git, &clock, &claimant("a"), TWO_MINUTES, Duration::ZERO).unwrap();
    // A lives: renewed 100 s in, so at 150 s it is still held.
    clock.advance(Duration::from_secs(100));
    a.keep_alive().unwrap();
    clock.advance(Duration::from_secs(50));
    let e = acquire(&b_git, &clock, &claimant("b"), TWO_MINUTES, Duration::ZERO)
        .err()
        .unwrap();
    assert!(e.to_string().contains("a@runner (run a https://"), "{e}");
    // A dies (no more renewals): B waits, and takes over once the last
    // renewal's expiry passed — 2 minutes after it, not an hour.
    let waited_from = clock.now();
    let b = acquire(
        &b_git,
        &clock,
        &claimant("b"),
        TWO_MINUTES,
        Duration::from_secs(600),
    )
    .unwrap();
    let waited = (clock.now() - waited_from).to_std().unwrap();
    assert!(waited <= Duration::from_secs(71), "{waited:?}");
    assert!(b_git.remote_lock().unwrap().contains("\"run_id\": \"b\""));
    // A wakes up: its next check says the lock is lost, and its drop
    // leaves B's lock alone.
    let e = a.keep_alive().unwrap_err();
    assert!(e.to_string().contains("lost the pipeline lock"), "{e}");
    assert!(
        e.to_string().contains("run b of b@runner holds it now"),
        "{e}"
    );
    assert!(a.lease().done());
    drop(a);
    assert!(b_git.remote_lock().unwrap().contains("\"run_id\": \"b\""));
    b.release();
    assert_eq!(b_git.remote_lock(), None);
}

#[test]
fn a_check_between_renewals_finds_a_lock_replaced_or_removed_without_pushing() {
    let clock = FakeClock::new();
    let git = FakeGit::new();
    let other = FakeGit::clone_of(git.remote.clone());
    let lock = acquire(&git, &clock, &claimant("a"), TWO_MINUTES, Duration::ZERO).unwrap();
    clock.advance(Duration::from_secs(5));
    let pushes = git.pushes.get();
    lock.keep_alive().unwrap();
    assert_eq!(git.pushes.get(), pushes, "not due: a read, not a renewal");
    other.put_remote_lock(OLD_LOCK);
    let e = lock.keep_alive().unwrap_err();
    assert!(e.to_string().contains("run other of bob@laptop"), "{e}");
    // Lost stays lost, even if the remote changes again.
    other.remote.borrow_mut().refs.remove(LOCK_REF);
    assert!(lock.keep_alive().is_err());
    assert!(lock.lease().renew(&git, &clock).is_err());

    // Removed (`lock release`): lost too.
    let lock = acquire(&git, &clock, &claimant("c"), TWO_MINUTES, Duration::ZERO).unwrap();
    other.remote.borrow_mut().refs.remove(LOCK_REF);
    let e = lock.keep_alive().unwrap_err();
    assert!(e.to_string().contains("it was removed"), "{e}");
}

#[test]
fn a_keepers_renewals_and_the_engines_share_one_lease() {
    let clock = FakeClock::new();
    let git = FakeGit::new();
    let keeper_git = FakeGit::clone_of(git.remote.clone());
    let lock = acquire(&git, &clock, &claimant("a"), TWO_MINUTES, Duration::ZERO).unwrap();
    let lease = lock.lease();
    assert_eq!(lease.every(), Duration::from_secs(30));
    // During a long deploy the keeper renews through its own handle …
    for _ in 0..10 {
        clock.advance(Duration::from_secs(30));
        lease.renew(&keeper_git, &clock).unwrap();
    }
    assert!(!lease.holder().expired(clock.now()));
    assert!(
        git.remote_lock()
            .unwrap()
            .contains(&rfc3339(clock.now() + chrono::Duration::seconds(120)))
    );
    // … and the engine's next check sees the keeper's object as its own.
    lock.keep_alive().unwrap();
    lock.release();
    assert_eq!(git.remote_lock(), None);
    assert!(lease.done(), "released: the keeper stops");
    lease.renew(&keeper_git, &clock).unwrap();
    assert_eq!(git.remote_lock(), None, "nothing renewed after the release");
}

#[test]
fn the_renewal_interval_follows_a_short_expiry() {
    let clock = FakeClock::new();
    let git = FakeGit::new();
    let lock = acquire(
        &git,
        &clock,
        &claimant("a"),
        Duration::from_secs(6),
        Duration::ZERO,
    )
    .unwrap();
    assert_eq!(lock.lease().every(), Duration::from_millis(1500));
    let pushes = git.pushes.get();
    clock.advance(Duration::from_secs(2));
    lock.keep_alive().unwrap();
    assert_eq!(git.pushes.get(), pushes + 1, "due: renewed");
}

#[test]
fn release_removes_the_lock_and_logs_whose_it_was_who_and_why() {
    let clock = FakeClock::new();
    let git = FakeGit::new();
    git.put_remote_lock(OLD_LOCK);
    let held = read(&git).unwrap().unwrap();
    assert_eq!(
        held.holder.as_ref().map(|h| h.holder.as_str()),
        Some("bob@laptop"),
        "a lock without run_url is read"
    );
    let Released::Yes { removal, .. } =
        release(&git, &clock, "alice", "job cancelled", None).unwrap()
    else {
        panic!("not released")
    };
    assert_eq!(removal.released.unwrap().run_id, "other");
    assert_eq!(git.remote_lock(), None);
    let log = git.lock_log();
    assert_eq!(log.len(), 1);
    assert!(
        log[0].starts_with("lock released by alice: job cancelled\n"),
        "{}",
        log[0]
    );
    let entry: Removal = serde_json::from_str(log[0].split_once("\n\n").unwrap().1).unwrap();
    assert_eq!(
        (entry.by.as_str(), entry.reason.as_str(), entry.at.as_str()),
        ("alice", "job cancelled", "2026-11-29T10:00:00Z")
    );
    assert_eq!(entry.lock, held.id.to_string());
    // Nothing left: nothing logged. The next release goes on top.
    assert_eq!(
        release(&git, &clock, "alice", "again", None).unwrap(),
        Released::Nothing
    );
    git.put_remote_lock("not json");
    release(&git, &clock, "bob", "stuck", None).unwrap();
    let log = git.lock_log();
    assert_eq!(log.len(), 2);
    assert!(log[0].contains("\"released\": null"), "{}", log[0]);
    assert!(log[1].contains("job cancelled"));
}

#[test]
fn release_of_one_run_leaves_another_runs_lock() {
    let clock = FakeClock::new();
    let git = FakeGit::new();
    git.put_remote_lock(OLD_LOCK);
    let out = release(&git, &clock, "ci", "job cancelled", Some("mine")).unwrap();
    assert!(matches!(out, Released::NotThatRun { holder: Some(h) } if h.run_id == "other"));
    assert!(git.remote_lock().is_some());
    assert!(git.lock_log().is_empty());
    let out = release(&git, &clock, "ci", "job cancelled", Some("other")).unwrap();
    assert!(matches!(out, Released::Yes { .. }));
}

#[test]
fn release_reads_again_a_lock_renewed_meanwhile() {
    let clock = FakeClock::new();
    let git = FakeGit::new();
    git.put_remote_lock(OLD_LOCK);
    let live = FakeGit::clone_of(git.remote.clone());
    git.before_push.borrow_mut().push(Box::new(move || {
        live.put_remote_lock(&OLD_LOCK.replace("10:30", "10:32"));
    }));
    let Released::Yes { removal, .. } = release(&git, &clock, "alice", "why", None).unwrap() else {
        panic!("not released")
    };
    assert_eq!(removal.released.unwrap().expires_at, "2026-11-29T10:32:00Z");
    assert_eq!(git.remote_lock(), None);
    assert_eq!(git.lock_log().len(), 1);
}

fn shard_of(run_id: &str, index: u32) -> Claimant {
    Claimant {
        holder: format!("shard-{index}@runner"),
        shard: Some(index),
        ..claimant(run_id)
    }
}

/// The shards of one run hold the lock together: each joins it, each
/// renews it (re-reading what the others pushed), another run waits for
/// all of them, and the last one out deletes it.
#[test]
fn the_shards_of_one_run_share_the_lock_and_the_last_one_out_deletes_it() {
    let clock = FakeClock::new();
    let remote = FakeGit::new().remote.clone();
    let gits: Vec<FakeGit> = (0..3).map(|_| FakeGit::clone_of(remote.clone())).collect();
    let locks: Vec<_> = (1..=3)
        .map(|i| {
            acquire(
                &gits[i as usize - 1],
                &clock,
                &shard_of("77", i),
                TWO_MINUTES,
                Duration::ZERO,
            )
            .unwrap()
        })
        .collect();
    let text = gits[0].remote_lock().unwrap();
    assert!(
        text.contains("\"shards\": [\n    1,\n    2,\n    3\n  ]"),
        "{text}"
    );
    // each renews in turn, the others' renewals moved the object under it
    for _ in 0..3 {
        clock.advance(Duration::from_secs(40));
        for l in &locks {
            l.keep_alive().unwrap();
        }
    }
    // another run, and a shard of another run, wait and give up
    let other = FakeGit::clone_of(remote.clone());
    for who in [claimant("78"), shard_of("78", 1)] {
        let e = acquire(&other, &clock, &who, TWO_MINUTES, Duration::ZERO)
            .err()
            .unwrap();
        assert!(e.to_string().contains("run 77"), "{e}");
        assert!(e.to_string().contains("shards 1, 2, 3"), "{e}");
    }
    // an unsharded job of the same run id does not join a sharded lock
    assert!(acquire(&other, &clock, &claimant("77"), TWO_MINUTES, Duration::ZERO).is_err());
    let mut locks = locks.into_iter();
    locks.next().unwrap().release();
    assert!(
        gits[1]
            .remote_lock()
            .unwrap()
            .contains("\"shards\": [\n    2,\n    3\n  ]")
    );
    drop(locks.next());
    assert!(gits[2].remote_lock().is_some(), "shard 3 still holds it");
    drop(locks);
    assert_eq!(gits[2].remote_lock(), None, "the last one out deleted it");
}

/// Shard `index` of run `run_id` takes the lock (or joins it), not waiting.
fn shard_lock<'a>(git: &'a FakeGit, clock: &'a FakeClock, run_id: &str, index: u32) -> Lock<'a> {
    acquire(
        git,
        clock,
        &shard_of(run_id, index),
        TWO_MINUTES,
        Duration::ZERO,
    )
    .unwrap()
}

/// The real store reads the lock in two steps (`ls-remote`, then a fetch of
/// the object it named): another shard's push between them leaves the
/// object unreadable. That is read again, not taken for a lost lock (the
/// sharding test failed so: a shard stopped with exit 3 right after its
/// plan while the others joined).
#[test]
fn a_lock_moved_between_reading_its_ref_and_its_object_is_read_again() {
    let clock = FakeClock::new();
    let remote = FakeGit::new().remote.clone();
    let gits: Vec<FakeGit> = (0..2).map(|_| FakeGit::clone_of(remote.clone())).collect();
    let first = shard_lock(&gits[0], &clock, "77", 1);
    gits[1].lock_moved_under_reads.set(1);
    let second = shard_lock(&gits[1], &clock, "77", 2);
    gits[0].lock_moved_under_reads.set(1);
    first.keep_alive().unwrap();
    clock.advance(Duration::from_secs(40));
    gits[0].lock_moved_under_reads.set(1);
    first.keep_alive().unwrap();
    assert!(
        gits[0]
            .remote_lock()
            .unwrap()
            .contains("\"shards\": [\n    1,\n    2\n  ]")
    );
    drop(second);
    drop(first);
    assert_eq!(gits[0].remote_lock(), None);
}

/// A shard whose index was removed from the holders (the lock released by
/// hand and taken by another run) has lost it, like a run on its own.
#[test]
fn a_shard_finds_the_lock_lost_when_another_run_holds_it() {
    let clock = FakeClock::new();
    let git = FakeGit::new();
    let other = FakeGit::clone_of(git.remote.clone());
    let lock = acquire(
        &git,
        &clock,
        &shard_of("77", 2),
        TWO_MINUTES,
        Duration::ZERO,
    )
    .unwrap();
    other.put_remote_lock(OLD_LOCK);
    let e = lock.keep_alive().unwrap_err();
    assert!(
        e.to_string()
            .contains("run other of bob@laptop holds it now"),
        "{e}"
    );
    clock.advance(Duration::from_secs(60));
    assert!(lock.keep_alive().is_err());
    drop(lock);
    assert!(
        git.remote_lock().unwrap().contains("bob@laptop"),
        "left alone"
    );
}
