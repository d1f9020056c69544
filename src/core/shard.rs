//! Sharding a stage over several runners (`run --shard I/N`, `deploy
//! --shard I/N`), pure: which slice of a stage's hosts a shard deploys,
//! and, over the run record (`ShardSet`, edited by
//! `RunRecord::report_shard`), when every shard has reported and what the
//! stage's verdict then is.
//!
//! A host's slice is `sha256(stage \0 client \0 host)` read as a big-endian
//! `u64` from its first 8 bytes, modulo N, plus one. It depends on nothing
//! but those three names and N: not on the order hosts are listed or
//! resolved in, nor on the other hosts, so every shard of a run computes
//! the same partition on its own, and a host added to the fleet moves no
//! other host. Changing N re-slices the whole stage (it is the matrix's
//! size, fixed in the workflow).
//!
//! How a sharded run goes (`core::engine`): every shard plans, scans and
//! waits for approvals as a run on one runner does (they read the same
//! record, so they agree); the shards of one run id hold the pipeline lock
//! together (`core::lock`: each joins it, each renews it, the last one out
//! deletes it). In a stage, each shard deploys the hosts its slice selects
//! (`max_failures` and `parallelism` apply per shard), then reports its
//! outcome into the record and moves no ref. The report that completes the
//! set decides the stage (`ShardVerdict::combine`); the others poll the
//! record for that decision, up to `--shard-timeout`, after which the
//! waiting shard decides `TimedOut`. Once decided: on a failure every
//! shard rolls back the hosts it left switched (a deploy of each client's
//! previous commit, `fleetgate rollback`'s way) and reports again; on a
//! pass the deciding shard moves the passed clients' refs. The deciding
//! shard alone reports the stage to the forge and the webhooks and pushes
//! the one revert; every shard exits with the stage's exit code.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::core::outcome::StageOutcome;
use crate::core::verdict::StageVerdict;
use crate::error::ExitCode;

/// The largest N `--shard I/N` accepts: far more runners than any forge
/// gives one matrix.
pub const MAX_SHARDS: u32 = 256;

/// One shard of a run: the `index`-th (1-based, as a CI matrix counts) of
/// `count` slices of each stage's hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    /// The whole stage: one runner, no sharding.
    pub const ALL: Shard = Shard { index: 1, count: 1 };

    /// Whether this shard deploys `host` of `client` in `stage`.
    pub fn selects(&self, stage: &str, client: &str, host: &str) -> bool {
        slice_of(stage, client, host, self.count) == self.index
    }
}

/// The slice (1..=count) `host` of `client` falls in, for `stage`.
pub fn slice_of(stage: &str, client: &str, host: &str, count: u32) -> u32 {
    let count = count.max(1);
    let mut digest = Sha256::new();
    digest.update(stage.as_bytes());
    digest.update([0u8]);
    digest.update(client.as_bytes());
    digest.update([0u8]);
    digest.update(host.as_bytes());
    let bytes = digest.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&bytes[..8]);
    (u64::from_be_bytes(first) % u64::from(count)) as u32 + 1
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = String;

    /// `I/N`, 1 ≤ I ≤ N ≤ `MAX_SHARDS`; the error says what is wrong.
    fn from_str(text: &str) -> Result<Shard, String> {
        let (i, n) = text
            .split_once('/')
            .ok_or_else(|| format!("`{text}` is not I/N (e.g. 1/3)"))?;
        let number = |part: &str, what: &str| -> Result<u32, String> {
            part.trim()
                .parse::<u32>()
                .map_err(|_| format!("the {what} of `{text}` is not a whole number"))
        };
        let (index, count) = (number(i, "shard")?, number(n, "number of shards")?);
        if count == 0 || count > MAX_SHARDS {
            return Err(format!(
                "the number of shards must be between 1 and {MAX_SHARDS}, not {count}"
            ));
        }
        if index == 0 || index > count {
            return Err(format!(
                "shard {index} of {count} does not exist: shards count from 1 to {count}"
            ));
        }
        Ok(Shard { index, count })
    }
}

/// A stage verdict as the record keeps it: a shard's own, or the stage's
/// once every shard reported. `TimedOut`: a shard never reported within
/// the waiting shards' timeout (not the change's fault: no revert).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShardVerdict {
    Passed,
    ChangeFailed,
    InfraFailed,
    Interrupted,
    Frozen,
    TimedOut,
}

impl From<StageVerdict> for ShardVerdict {
    fn from(v: StageVerdict) -> ShardVerdict {
        match v {
            StageVerdict::Passed => ShardVerdict::Passed,
            StageVerdict::ChangeFailed => ShardVerdict::ChangeFailed,
            StageVerdict::InfraFailed => ShardVerdict::InfraFailed,
            StageVerdict::Interrupted => ShardVerdict::Interrupted,
            StageVerdict::Frozen => ShardVerdict::Frozen,
        }
    }
}

impl ShardVerdict {
    /// How much a shard's verdict weighs in the stage's, in
    /// `verdict::verdict`'s order: an interruption, then anything a human
    /// must look at (a lost host, a shard that never reported), then a
    /// frozen app, then a failed gate (the only one that reverts).
    fn weight(self) -> u8 {
        match self {
            ShardVerdict::Interrupted => 5,
            ShardVerdict::InfraFailed => 4,
            ShardVerdict::TimedOut => 3,
            ShardVerdict::Frozen => 2,
            ShardVerdict::ChangeFailed => 1,
            ShardVerdict::Passed => 0,
        }
    }

    /// The stage's verdict from every shard's: passed only if each passed,
    /// else the weightiest failure.
    pub fn combine(verdicts: impl IntoIterator<Item = ShardVerdict>) -> ShardVerdict {
        verdicts
            .into_iter()
            .max_by_key(|v| v.weight())
            .unwrap_or(ShardVerdict::Passed)
    }

    /// In words, for logs: "passed", "failed its gate", ...
    pub fn describe(self) -> &'static str {
        match self {
            ShardVerdict::Passed => "passed",
            ShardVerdict::ChangeFailed => "failed a gate",
            ShardVerdict::InfraFailed => "lost hosts",
            ShardVerdict::Interrupted => "was interrupted",
            ShardVerdict::Frozen => "left frozen apps on the failed release",
            ShardVerdict::TimedOut => "timed out waiting for shards",
        }
    }

    /// The run's exit code when the stage ends so, as `StageVerdict`'s; a
    /// shard that never reported is for a human to look at: 3.
    pub fn exit_code(self) -> ExitCode {
        match self {
            ShardVerdict::Passed => ExitCode::Ok,
            ShardVerdict::ChangeFailed | ShardVerdict::Frozen => ExitCode::Blocked,
            ShardVerdict::InfraFailed | ShardVerdict::Interrupted | ShardVerdict::TimedOut => {
                ExitCode::Infra
            }
        }
    }

    /// Whether every shard's switched hosts go back to their previous
    /// release: any stage verdict but `Passed`.
    pub fn rolls_back(self) -> bool {
        self != ShardVerdict::Passed
    }
}

/// One shard's report on a stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    pub verdict: ShardVerdict,
    /// Its hosts, as `client/host`: the ones it replaces when it reports
    /// again (a CI job re-run keeps the run id).
    pub hosts: Vec<String>,
    pub failed_hosts: usize,
    pub rolled_back: bool,
}

/// The shards of one run that have reported on one stage, and the stage's
/// verdict once the last of them did. Kept in the record
/// (`RunRecord::shards`, per stage), edited only by
/// `RunRecord::report_shard`, which runs inside `Records::update`'s
/// read-modify-write: the pushes are serialised by their leases, so
/// exactly one shard's edit sees the set complete, and it decides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardSet {
    pub run_id: String,
    pub count: u32,
    /// Shard index → its report.
    #[serde(default)]
    pub reported: BTreeMap<u32, ShardEntry>,
    /// The stage's verdict, set once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided: Option<ShardVerdict>,
    /// The shard that decided (it pushes the revert, if any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<u32>,
}

/// What a shard's report made of the stage, for that shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reported {
    /// Other shards have not reported: wait (bounded) for the decision.
    Waiting { missing: Vec<u32> },
    /// This report completed the set: this shard decided the stage.
    Decided(ShardVerdict),
    /// Another shard decided already (this one reported again, or after a
    /// timeout): follow that decision.
    AlreadyDecided(ShardVerdict),
}

impl ShardSet {
    pub fn new(run_id: &str, count: u32) -> ShardSet {
        ShardSet {
            run_id: run_id.to_string(),
            count,
            reported: BTreeMap::new(),
            decided: None,
            decided_by: None,
        }
    }

    /// The shards that have not reported.
    pub fn missing(&self) -> Vec<u32> {
        (1..=self.count)
            .filter(|i| !self.reported.contains_key(i))
            .collect()
    }

    /// Records `shard`'s verdict; decides the stage when it completes the
    /// set.
    pub fn report(&mut self, shard: Shard, entry: ShardEntry) -> Reported {
        self.reported.insert(shard.index, entry);
        if let Some(v) = self.decided {
            return Reported::AlreadyDecided(v);
        }
        let missing = self.missing();
        if !missing.is_empty() {
            return Reported::Waiting { missing };
        }
        let v = ShardVerdict::combine(self.reported.values().map(|e| e.verdict));
        self.decided = Some(v);
        self.decided_by = Some(shard.index);
        Reported::Decided(v)
    }

    /// A waiting shard gave up on the missing ones: the stage fails, decided
    /// by `shard`, unless a decision got there first (which stands).
    pub fn time_out(&mut self, shard: Shard) -> Reported {
        if let Some(v) = self.decided {
            return Reported::AlreadyDecided(v);
        }
        self.decided = Some(ShardVerdict::TimedOut);
        self.decided_by = Some(shard.index);
        Reported::Decided(ShardVerdict::TimedOut)
    }
}

/// `into` with `outcome`'s hosts merged in by (client, host): a host
/// `outcome` has replaces the one `into` had, the others stay. The stage's
/// own fields (`passed`, `failed_hosts`, `rolled_back`, `interrupted`)
/// are recomputed from `set`'s reports, so they describe every shard that
/// reported.
pub fn merge_outcome(into: &mut StageOutcome, outcome: &StageOutcome, set: &ShardSet) {
    into.hosts.retain(|h| {
        !outcome
            .hosts
            .iter()
            .any(|o| o.client == h.client && o.host == h.host)
    });
    into.hosts.extend(outcome.hosts.iter().cloned());
    into.hosts
        .sort_by(|a, b| (&a.client, &a.host).cmp(&(&b.client, &b.host)));
    into.rev = outcome.rev.clone();
    into.max_failures = outcome.max_failures;
    into.interrupted = into.interrupted || outcome.interrupted;
    let entries = set.reported.values();
    into.passed = set
        .reported
        .values()
        .all(|e| e.verdict == ShardVerdict::Passed);
    into.failed_hosts = entries.map(|e| e.failed_hosts).sum();
    into.rolled_back = set
        .reported
        .values()
        .filter(|e| e.verdict != ShardVerdict::Passed)
        .all(|e| e.rolled_back)
        && !into.passed;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `I/N` as (I, N), or a part of the error.
    type Parsed = Result<(u32, u32), &'static str>;

    #[test]
    fn parses_i_of_n_and_refuses_the_rest() {
        let cases: &[(&str, Parsed)] = &[
            ("1/3", Ok((1, 3))),
            ("3/3", Ok((3, 3))),
            ("1/1", Ok((1, 1))),
            (" 2 / 4 ", Ok((2, 4))),
            ("256/256", Ok((256, 256))),
            ("0/3", Err("shard 0 of 3 does not exist")),
            ("4/3", Err("shard 4 of 3 does not exist")),
            ("1/0", Err("between 1 and 256, not 0")),
            ("1/257", Err("between 1 and 256, not 257")),
            ("3", Err("is not I/N")),
            ("a/3", Err("the shard of `a/3` is not a whole number")),
            ("1/-3", Err("the number of shards of `1/-3`")),
            ("", Err("is not I/N")),
        ];
        for (text, want) in cases {
            let got = text.parse::<Shard>();
            match (want, got) {
                (Ok((i, n)), Ok(s)) => assert_eq!((s.index, s.count), (*i, *n), "{text}"),
                (Err(part), Err(e)) => assert!(e.contains(part), "{text}: {e}"),
                (want, got) => panic!("{text}: want {want:?}, got {got:?}"),
            }
        }
        assert_eq!("2/5".parse::<Shard>().unwrap().to_string(), "2/5");
    }

    /// The slice of a host is part of the contract (shards of one run may
    /// be different builds of fleetgate): these values must never change.
    /// They were computed outside Rust, with Python's hashlib:
    /// `int.from_bytes(sha256(b"canary\0alpha\0alpha-1").digest()[:8], "big") % 3 + 1`.
    #[test]
    fn slices_are_stable() {
        let cases: &[(&str, &str, &str, u32, u32)] = &[
            ("canary", "alpha", "alpha-1", 1, 1),
            ("canary", "alpha", "alpha-1", 3, 1),
            ("canary", "alpha", "alpha-2", 3, 3),
            ("production", "alpha", "alpha-1", 3, 1),
            ("canary", "beta", "alpha-1", 3, 3),
        ];
        for (stage, client, host, n, want) in cases {
            assert_eq!(
                slice_of(stage, client, host, *n),
                *want,
                "{stage}/{client}/{host} of {n}"
            );
        }
    }

    fn hosts(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("web-{i:04}")).collect()
    }

    #[test]
    fn every_host_is_in_exactly_one_shard_and_the_slices_are_even() {
        let fleet = hosts(3000);
        for n in [1u32, 2, 3, 4, 7] {
            let shards: Vec<Shard> = (1..=n).map(|index| Shard { index, count: n }).collect();
            let mut sizes = vec![0usize; n as usize];
            for h in &fleet {
                let owners: Vec<&Shard> = shards
                    .iter()
                    .filter(|s| s.selects("production", "web", h))
                    .collect();
                assert_eq!(owners.len(), 1, "{h} of {n}: {owners:?}");
                sizes[owners[0].index as usize - 1] += 1;
            }
            let even = fleet.len() / n as usize;
            for size in sizes {
                // within 15% of an even split
                assert!(
                    size.abs_diff(even) * 100 <= even * 15,
                    "{n} shards: {size} vs {even}"
                );
            }
        }
    }

    #[test]
    fn a_shards_hosts_do_not_depend_on_order_or_on_the_other_hosts() {
        let shard = Shard { index: 2, count: 4 };
        let mine = |fleet: &[String]| -> Vec<String> {
            let mut v: Vec<String> = fleet
                .iter()
                .filter(|h| shard.selects("canary", "web", h))
                .cloned()
                .collect();
            v.sort();
            v
        };
        let before = hosts(200);
        // the same hosts listed backwards: the same slice
        let mut backwards = before.clone();
        backwards.reverse();
        assert_eq!(mine(&before), mine(&backwards));
        // 100 hosts added: none of the first 200 moves
        let grown = hosts(300);
        let kept: Vec<String> = mine(&grown)
            .into_iter()
            .filter(|h| before.contains(h))
            .collect();
        assert_eq!(kept, mine(&before));
        // a host removed: the others stay
        let shrunk: Vec<String> = before[1..].to_vec();
        let left: Vec<String> = mine(&before)
            .into_iter()
            .filter(|h| h != &before[0])
            .collect();
        assert_eq!(mine(&shrunk), left);
        // stages and clients slice independently
        let differ = before
            .iter()
            .filter(|h| slice_of("canary", "web", h, 4) != slice_of("production", "web", h, 4))
            .count();
        assert!(differ > 100, "{differ}");
        assert_eq!(Shard::ALL, "1/1".parse().unwrap());
        assert!(
            before
                .iter()
                .all(|h| Shard::ALL.selects("canary", "web", h))
        );
    }
}
