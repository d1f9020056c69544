//! Plan → text (terminals, CI logs), markdown (the merge-request comment), JSON.
//!
//! Architecture Invariant: no secret value ever reaches this module; plans hold
//! masked renders only.

use std::fmt::Write;

use crate::plan::{AppPlan, ClientPlan, Plan};

pub fn json(plan: &Plan) -> String {
    let mut s = serde_json::to_string_pretty(plan).expect("a plan serialises");
    s.push('\n');
    s
}

/// `1 client changes`, `3 clients change`.
fn changes(n: usize) -> String {
    if n == 1 {
        "1 client changes".into()
    } else {
        format!("{n} clients change")
    }
}

/// The first 12 characters of a commit id or hash, as shown to people.
pub fn short(sha: &str) -> &str {
    // Hashes and revs may come from a note or a forge payload: whatever they
    // hold (short, non-ASCII), shortening never panics.
    sha.char_indices().nth(12).map_or(sha, |(i, _)| &sha[..i])
}

fn app_summary(app: &AppPlan) -> String {
    let mut parts = Vec::new();
    let files: std::collections::BTreeSet<&str> =
        app.files.iter().map(|f| f.path.as_str()).collect();
    if !files.is_empty() {
        parts.push(format!(
            "{} file{}",
            files.len(),
            if files.len() == 1 { "" } else { "s" }
        ));
    }
    for img in &app.images {
        parts.push(match (&img.from, &img.to) {
            (Some(f), Some(t)) => format!("image {}: {} → {}", img.name, tag_of(f), tag_of(t)),
            (None, Some(t)) => format!("image {}: + {}", img.name, tag_of(t)),
            (Some(f), None) => format!("image {}: − {}", img.name, tag_of(f)),
            (None, None) => continue,
        });
    }
    if !app.secrets_changed.is_empty() {
        parts.push(format!("secrets: {}", app.secrets_changed.join(", ")));
    }
    parts.join("; ")
}

/// `repo:tag@sha256:…` → `tag@sha256:1234567`, enough to tell versions apart.
fn tag_of(image: &str) -> String {
    let (name, digest) = image.split_once('@').unwrap_or((image, ""));
    let tag = name.rsplit_once(':').map_or(name, |(_, t)| t);
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    format!("{tag}@{}", short(hex))
}

fn host_changes(c: &ClientPlan) -> Vec<String> {
    let mut out = Vec::new();
    for h in &c.hosts_added {
        out.push(format!("+ host {h}"));
    }
    for h in &c.hosts_removed {
        out.push(format!("− host {h}"));
    }
    for h in &c.hosts_changed {
        out.push(format!("~ host {h}"));
    }
    out
}

const NOT_COMPARED: &str =
    "secret values were not compared (no decryption key in this job): listed keys may have changed";

/// Compact text for terminals and CI logs.
pub fn text(plan: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "plan {}..{}: {}, {} unaffected (plan {})",
        short(&plan.base),
        short(&plan.head),
        changes(plan.clients.len()),
        plan.unaffected,
        short(&plan.plan_hash)
    );
    if !plan.secrets_compared {
        let _ = writeln!(out, "note: {NOT_COMPARED}");
    }
    let mut stage = "";
    for c in &plan.clients {
        if c.stage != stage {
            stage = &c.stage;
            let _ = writeln!(out, "\n{stage}");
        }
        let _ = writeln!(
            out,
            "  {} ({})  because {}",
            c.name,
            c.hosts.join(", "),
            reasons(c)
        );
        for h in host_changes(c) {
            let _ = writeln!(out, "    {h}");
        }
        for app in &c.apps {
            let sign = match app.action.as_str() {
                "add" => "+",
                "remove" => "−",
                _ => "~",
            };
            let _ = writeln!(
                out,
                "    {sign} {} {}: {}",
                app.action.as_str(),
                app.name,
                app_summary(app)
            );
            for f in &app.files {
                let _ = writeln!(out, "      {} [{}]", f.path, f.hosts.join(", "));
                for line in f.diff.lines().skip(2) {
                    let _ = writeln!(out, "        {line}");
                }
            }
        }
    }
    out
}

fn reasons(c: &ClientPlan) -> String {
    if c.reasons.is_empty() {
        "its rendered state changed".into()
    } else {
        c.reasons.join(", ")
    }
}

/// The merge-request comment: a summary table, then per client a collapsed
/// `<details>` with the file diffs.
pub fn markdown(plan: &Plan) -> String {
    let mut out = markdown_summary(plan);
    for c in &plan.clients {
        out.push_str(&client_details(c));
    }
    let _ = writeln!(out, "Plan hash: `{}`", plan.plan_hash);
    out
}

/// The title and the summary table: the part of a markdown plan that is
/// never shortened.
fn markdown_summary(plan: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### fleetgate plan `{}`..`{}`\n",
        short(&plan.base),
        short(&plan.head)
    );
    if plan.clients.is_empty() {
        let _ = writeln!(
            out,
            "No client changes. {} client{} unaffected.\n",
            plan.unaffected,
            if plan.unaffected == 1 { "" } else { "s" }
        );
        return out;
    }
    let _ = writeln!(out, "| Client | Stage | Hosts | App | Action | Changes |");
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for c in &plan.clients {
        let hosts = {
            let mut h = c.hosts.join(", ");
            for change in host_changes(c) {
                h.push_str(&format!("<br>{change}"));
            }
            h
        };
        if c.apps.is_empty() {
            let _ = writeln!(
                out,
                "| {} | {} | {} | | | hosts only |",
                c.name, c.stage, hosts
            );
        }
        for (i, app) in c.apps.iter().enumerate() {
            let (name, stage, hosts) = if i == 0 {
                (c.name.as_str(), c.stage.as_str(), hosts.as_str())
            } else {
                ("", "", "")
            };
            let _ = writeln!(
                out,
                "| {name} | {stage} | {hosts} | {} | {} | {} |",
                app.name,
                app.action.as_str(),
                md_cell(&app_summary(app))
            );
        }
    }
    let _ = writeln!(
        out,
        "\n{}, {} unaffected.\n",
        changes(plan.clients.len()),
        plan.unaffected
    );
    if !plan.secrets_compared {
        let _ = writeln!(out, "> **Note:** {NOT_COMPARED}.\n");
    }
    out
}

fn details_summary(c: &ClientPlan) -> String {
    format!(
        "<details><summary><b>{}</b> ({}): {}</summary>\n",
        c.name,
        c.stage,
        c.apps
            .iter()
            .map(|a| format!("{} {}", a.action.as_str(), a.name))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// One client's collapsed section: why it changes and its file diffs.
fn client_details(c: &ClientPlan) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", details_summary(c));
    let _ = writeln!(out, "Because: {}\n", md_cell(&reasons(c)));
    for app in &c.apps {
        for f in &app.files {
            let _ = writeln!(out, "`{}/{}` on {}\n", app.name, f.path, f.hosts.join(", "));
            let _ = writeln!(out, "```diff\n{}```\n", fence_safe(&f.diff));
        }
    }
    let _ = writeln!(out, "</details>\n");
    out
}

/// The pull-request comment: `marker`, the markdown plan, the scan summary
/// if there is one, and `after` (what merging does). Over `limit`
/// characters, the largest clients' diffs give way to a line pointing at
/// `log_url` (the job log has the whole plan), until it fits; the summary
/// table is never cut.
pub fn plan_comment(
    plan: &Plan,
    scan: Option<&crate::scan::ScanReport>,
    marker: &str,
    after: &str,
    limit: usize,
    log_url: Option<&str>,
) -> String {
    let head = format!("{marker}\n{}", markdown_summary(plan));
    let scan = scan
        .map(scan_markdown)
        .map(|s| format!("{s}\n"))
        .unwrap_or_default();
    let tail = format!("Plan hash: `{}`\n\n{after}", plan.plan_hash);
    let mut details: Vec<String> = plan.clients.iter().map(client_details).collect();
    let size = |details: &[String]| {
        head.chars().count()
            + scan.chars().count()
            + tail.chars().count()
            + details.iter().map(|d| d.chars().count()).sum::<usize>()
    };
    let log = match log_url {
        Some(url) => format!("[the job log]({url})"),
        None => "the job log".to_string(),
    };
    let mut shortened = vec![false; details.len()];
    while size(&details) > limit {
        let Some((i, _)) = details
            .iter()
            .enumerate()
            .filter(|(i, _)| !shortened[*i])
            .max_by_key(|(_, d)| d.chars().count())
        else {
            break;
        };
        let c = &plan.clients[i];
        let lines: usize = c
            .apps
            .iter()
            .flat_map(|a| &a.files)
            .map(|f| f.diff.lines().count())
            .sum();
        details[i] = format!(
            "{}\nBecause: {}\n\nThe diff ({lines} lines) is too long for a comment: see {log}.\n</details>\n\n",
            details_summary(c),
            md_cell(&reasons(c)),
        );
        shortened[i] = true;
    }
    format!("{head}{scan}{}{tail}", details.concat())
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// A diff line that starts with ``` would close the code fence early.
fn fence_safe(diff: &str) -> String {
    diff.lines()
        .map(|l| {
            if l.contains("```") {
                l.replace("```", "`\u{200b}``")
            } else {
                l.to_string()
            }
        })
        .map(|l| l + "\n")
        .collect()
}

/// How a plan or a scan report is printed on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Compact, for terminals and CI logs.
    Text,
    /// What the merge-request comment shows.
    Markdown,
    /// Schema 1 (design.md §4), for machines.
    Json,
}

/// How a deploy outcome is printed on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutcomeFormat {
    Text,
    Json,
}

/// A stage's outcome: a table per host, then what failed and why.
pub fn outcome(o: &crate::deploy::StageOutcome, format: OutcomeFormat) -> String {
    if format == OutcomeFormat::Json {
        let mut s = serde_json::to_string_pretty(o).expect("an outcome serialises");
        s.push('\n');
        return s;
    }
    use crate::core::verdict::StageVerdict;
    use crate::deploy::HostStatus;
    let mut out = String::new();
    let verdict = match crate::core::verdict::verdict(o) {
        StageVerdict::Passed => "passed",
        StageVerdict::Interrupted => "INTERRUPTED",
        _ => "FAILED",
    };
    let _ = writeln!(
        out,
        "stage {} @ {}: {verdict} ({} of {} host{} failed, {} tolerated)",
        o.stage,
        short(&o.rev),
        o.failed_hosts,
        o.hosts.len(),
        if o.hosts.len() == 1 { "" } else { "s" },
        o.max_failures
    );
    let rolled_back: Vec<&str> = o
        .hosts
        .iter()
        .filter(|h| h.status == HostStatus::RolledBack)
        .map(|h| h.host.as_str())
        .collect();
    if !rolled_back.is_empty() {
        let _ = writeln!(out, "rolled back: {}", rolled_back.join(", "));
    }
    for h in o.hosts.iter().filter(|h| h.rollback_failure.is_some()) {
        let f = h.rollback_failure.as_ref().expect("filtered");
        let _ = writeln!(
            out,
            "NOT rolled back: {} ({}: {}); it runs {}",
            h.host,
            f.step,
            f.message.lines().next().unwrap_or_default(),
            runs(h)
        );
    }
    let rows: Vec<Vec<String>> = o
        .hosts
        .iter()
        .map(|h| {
            let status = serde_json::to_value(h.status).expect("status serialises");
            vec![
                h.client.clone(),
                h.host.clone(),
                status.as_str().unwrap_or_default().replace('_', " "),
                runs(h),
                format!("{:.2}s", h.seconds),
                h.failure
                    .as_ref()
                    .map(|f| {
                        format!(
                            "{}{}: {}",
                            f.app
                                .as_deref()
                                .map(|a| format!("{a} "))
                                .unwrap_or_default(),
                            f.step,
                            f.message.lines().next().unwrap_or_default()
                        )
                    })
                    .unwrap_or_default(),
            ]
        })
        .collect();
    out.push_str(&table(
        &["client", "host", "status", "runs", "time", "failure"],
        &rows,
    ));
    for f in o.frozen() {
        let _ = writeln!(
            out,
            "FROZEN: {f} stays on the failed release (rollback: freeze); a human must decide"
        );
    }
    out
}

/// What a host's apps run after a stage: one value when they agree, else
/// per app.
fn runs(h: &crate::deploy::HostOutcome) -> String {
    let all: std::collections::BTreeSet<String> = h.runs.values().map(|r| r.describe()).collect();
    match all.len() {
        0 => "-".into(),
        1 => all.into_iter().next().expect("one"),
        _ => h
            .runs
            .iter()
            .map(|(app, r)| format!("{app}={}", r.describe()))
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// Columns padded to their widest cell; the last one is not padded.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                let pad = w - cell.chars().count();
                l.push_str(cell);
                l.push_str(&" ".repeat(pad + 2));
            }
        }
        l.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

fn severities(list: &[crate::config::Severity]) -> String {
    list.iter()
        .map(|s| {
            serde_json::to_value(s)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn image_cell(image: &str) -> String {
    crate::scan::pin::ImageRef::parse_pinned(image)
        .map(|i| crate::scan::short(&i))
        .unwrap_or_else(|_| image.to_string())
}

fn blocking_line(b: &crate::scan::policy::Blocking) -> String {
    let f = &b.finding;
    let fix = f
        .fixed
        .as_deref()
        .map(|v| format!("fixed in {v}"))
        .unwrap_or_else(|| "no fix yet".into());
    let sev = severities(&[f.severity]);
    let mut l = format!("{} {} {} → {fix} ({sev})", f.id, f.package, f.installed);
    if let Some(d) = b.expired_ignore {
        l.push_str(&format!(" — its trivyignore entry expired on {d}"));
    }
    l
}

/// The scan gate's report: a row per image, then what blocks and why.
pub fn scan(r: &crate::scan::ScanReport, format: Format) -> String {
    match format {
        Format::Json => {
            let mut s = serde_json::to_string_pretty(r).expect("a scan report serialises");
            s.push('\n');
            s
        }
        Format::Text => scan_text(r),
        Format::Markdown => scan_markdown(r),
    }
}

fn scan_text(r: &crate::scan::ScanReport) -> String {
    let mut out = format!(
        "scan: {} image(s); fail on {}{}{}\n",
        r.images.len(),
        severities(&r.fail_on),
        if r.ignore_unfixed {
            "; unfixed findings do not block"
        } else {
            ""
        },
        r.db.as_deref()
            .map(|d| format!("; trivy DB {d}"))
            .unwrap_or_default()
    );
    let rows: Vec<Vec<String>> = r
        .images
        .iter()
        .map(|i| {
            let c = &i.verdict.counts;
            vec![
                image_cell(&i.verdict.image),
                c.critical.to_string(),
                c.high.to_string(),
                c.medium.to_string(),
                c.low.to_string(),
                if i.verdict.passed() {
                    "pass"
                } else {
                    "BLOCKED"
                }
                .to_string(),
                i.used_by.join(", "),
            ]
        })
        .collect();
    if !rows.is_empty() {
        out.push_str(&table(
            &[
                "image", "critical", "high", "medium", "low", "verdict", "used by",
            ],
            &rows,
        ));
    }
    for i in &r.images {
        for b in &i.verdict.blocking {
            let _ = writeln!(
                out,
                "  ✗ {}: {}",
                image_cell(&i.verdict.image),
                blocking_line(b)
            );
        }
        for a in &i.verdict.accepted {
            let _ = writeln!(
                out,
                "  ~ {}: {} {} accepted until {}: {}",
                image_cell(&i.verdict.image),
                a.id,
                a.package,
                a.expires,
                a.reason
            );
        }
    }
    for e in &r.expired_ignores {
        let _ = writeln!(
            out,
            "expired: {}:{} `{}` expired on {} and no longer accepts anything ({})",
            crate::config::TRIVYIGNORE,
            e.line.map(|l| l.to_string()).unwrap_or_default(),
            e.id,
            e.expires,
            e.reason
        );
    }
    let _ = writeln!(
        out,
        "verdict: {}",
        if r.passed {
            "pass".to_string()
        } else {
            format!(
                "blocked by {} finding(s) in {} image(s)",
                r.blocking(),
                r.images.iter().filter(|i| !i.verdict.passed()).count()
            )
        }
    );
    out
}

fn scan_markdown(r: &crate::scan::ScanReport) -> String {
    let mut out = format!(
        "### Image scan: {}\n\nFail on {}{}.\n\n",
        if r.passed { "pass ✅" } else { "blocked ❌" },
        severities(&r.fail_on),
        if r.ignore_unfixed {
            "; unfixed findings do not block"
        } else {
            ""
        },
    );
    if !r.images.is_empty() {
        out.push_str(
            "| image | critical | high | medium | low | verdict |\n|---|---:|---:|---:|---:|---|\n",
        );
        for i in &r.images {
            let c = &i.verdict.counts;
            let _ = writeln!(
                out,
                "| `{}` | {} | {} | {} | {} | {} |",
                image_cell(&i.verdict.image),
                c.critical,
                c.high,
                c.medium,
                c.low,
                if i.verdict.passed() {
                    "pass"
                } else {
                    "**blocked**"
                }
            );
        }
    }
    let blocking: Vec<String> = r
        .images
        .iter()
        .flat_map(|i| {
            i.verdict.blocking.iter().map(move |b| {
                format!(
                    "- `{}`: {}",
                    image_cell(&i.verdict.image),
                    md_cell(&blocking_line(b))
                )
            })
        })
        .collect();
    if !blocking.is_empty() {
        let _ = write!(out, "\n**Blocking**\n\n{}\n", blocking.join("\n"));
    }
    if !r.expired_ignores.is_empty() {
        out.push_str("\n**Expired acceptances** (no longer ignore anything)\n\n");
        for e in &r.expired_ignores {
            let _ = writeln!(
                out,
                "- `{}` expired {}: {}",
                e.id,
                e.expires,
                md_cell(&e.reason)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn short_never_panics() {
        assert_eq!(super::short("0123456789abcdef"), "0123456789ab");
        assert_eq!(super::short("abc"), "abc");
        assert_eq!(super::short(""), "");
        assert_eq!(super::short("ééééééééééééééé"), "éééééééééééé");
    }
}
