//! Plan → text (terminals, CI logs), markdown (the merge-request comment), JSON;
//! stage outcomes and scan reports likewise; run records → `history` rows.
//!
//! Architecture Invariant: no secret value ever reaches this module; plans hold
//! masked renders only.
//!
//! Colour: only the text forms take a [`Paint`], and only `printer` decides
//! whether it colours. JSON and markdown (forge comments) are never styled.

use std::fmt::Write;

use anstyle::Style;

use crate::plan::{AppPlan, ClientPlan, Plan};

/// Whether text for a terminal carries ANSI colour. `printer::paint`
/// decides (from `--color`, the stream and the environment); every
/// `*_with` function here applies it, and `PLAIN` is what logs, files and
/// forge comments get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Paint {
    pub color: bool,
}

impl Paint {
    pub const PLAIN: Paint = Paint { color: false };

    /// `text` in `style` when colouring, else as it is.
    fn on(self, style: Style, text: &str) -> String {
        if self.color && !text.is_empty() {
            format!("{}{text}{}", style.render(), style.render_reset())
        } else {
            text.to_string()
        }
    }
}

/// The few styles fleetgate uses: green is good or added, red is bad or
/// removed, yellow needs attention, bold is a heading. The words carry the
/// meaning too, so nothing is lost without colour.
mod hue {
    use anstyle::{AnsiColor, Style};

    pub const GOOD: Style = AnsiColor::Green.on_default();
    pub const BAD: Style = AnsiColor::Red.on_default().bold();
    pub const REMOVED: Style = AnsiColor::Red.on_default();
    pub const ATTENTION: Style = AnsiColor::Yellow.on_default();
    pub const HUNK: Style = AnsiColor::Cyan.on_default();
    pub const HEADING: Style = anstyle::Style::new().bold();
    pub const FAINT: Style = anstyle::Style::new().dimmed();
}

/// The plan as pretty JSON, one line break at the end (the `plan --format
/// json` contract), written to `w` as it is serialised.
pub fn write_json(w: &mut dyn std::io::Write, plan: &Plan) -> std::io::Result<()> {
    serde_json::to_writer_pretty(&mut *w, plan)?;
    w.write_all(b"\n")
}

/// `1 client changes`, `3 clients change`.
fn changes(n: usize) -> String {
    if n == 1 {
        "1 client changes".into()
    } else {
        format!("{n} clients change")
    }
}

pub use crate::core::rev::short;

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

/// Compact text for terminals and CI logs, coloured when `paint` says so
/// (diff lines, signs, headings).
pub fn text_with(plan: &Plan, paint: Paint) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}",
        paint.on(
            hue::HEADING,
            &format!(
                "plan {}..{}: {}, {} unaffected (plan {})",
                short(&plan.base),
                short(&plan.head),
                changes(plan.clients.len()),
                plan.unaffected,
                short(&plan.plan_hash)
            )
        )
    );
    if !plan.secrets_compared {
        let _ = writeln!(
            out,
            "{}",
            paint.on(hue::ATTENTION, &format!("note: {NOT_COMPARED}"))
        );
    }
    if !plan.inventory.is_empty() {
        let _ = writeln!(out, "\n{}", paint.on(hue::HEADING, "Hetzner Cloud hosts"));
        for line in inventory_lines(plan) {
            let _ = writeln!(out, "  {}", paint.on(sign_hue(&line), &line));
        }
    }
    let mut stage = "";
    for c in &plan.clients {
        if c.stage != stage {
            stage = &c.stage;
            let _ = writeln!(out, "\n{}", paint.on(hue::HEADING, stage));
        }
        let _ = writeln!(
            out,
            "  {} ({})  because {}",
            paint.on(hue::HEADING, &c.name),
            c.hosts.join(", "),
            reasons(c)
        );
        for h in host_changes(c) {
            let _ = writeln!(out, "    {}", paint.on(sign_hue(&h), &h));
        }
        for app in &c.apps {
            let sign = match app.action.as_str() {
                "add" => "+",
                "remove" => "−",
                _ => "~",
            };
            let _ = writeln!(
                out,
                "    {}: {}",
                paint.on(
                    sign_hue(sign),
                    &format!("{sign} {} {}", app.action.as_str(), app.name)
                ),
                app_summary(app)
            );
            for f in &app.files {
                let _ = writeln!(out, "      {} [{}]", f.path, f.hosts.join(", "));
                for line in f.diff.lines().skip(2) {
                    let _ = writeln!(out, "        {}", paint.on(diff_hue(line), line));
                }
            }
        }
    }
    out
}

/// The colour of a change marked `+`, `−` or `~`.
fn sign_hue(marked: &str) -> Style {
    match marked.chars().next() {
        Some('+') => hue::GOOD,
        Some('−') => hue::REMOVED,
        _ => hue::ATTENTION,
    }
}

/// The colour of a unified-diff line.
fn diff_hue(line: &str) -> Style {
    match line.chars().next() {
        Some('+') => hue::GOOD,
        Some('-') => hue::REMOVED,
        Some('@') => hue::HUNK,
        _ => Style::new(),
    }
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
    if !plan.inventory.is_empty() {
        let _ = writeln!(out, "**Hetzner Cloud hosts**\n");
        for line in inventory_lines(plan) {
            let _ = writeln!(out, "- {}", md_cell(&line));
        }
        out.push('\n');
    }
    out
}

/// Each Hetzner client's servers now, then (marked `+` / `−`) what changed
/// since its last recorded deploy: the same words in text and markdown.
fn inventory_lines(plan: &Plan) -> Vec<String> {
    let mut out = Vec::new();
    for r in &plan.inventory {
        let head = format!("{} (`{}`)", r.client, r.label_selector);
        match (&r.hosts, &r.not_resolved) {
            (Some(hosts), _) => {
                out.push(format!(
                    "{head}: {}",
                    if hosts.is_empty() {
                        "no server".to_string()
                    } else {
                        hosts.join(", ")
                    }
                ));
                let since = match &r.last_deployed {
                    Some(_) => "since the last deploy",
                    None => "no deploy recorded",
                };
                out.extend(r.added.iter().map(|h| format!("+ {h} ({since})")));
                out.extend(r.removed.iter().map(|h| format!("− {h} ({since})")));
            }
            (None, why) => out.push(format!(
                "{head}: not resolved: {}",
                why.as_deref().unwrap_or("unknown")
            )),
        }
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
pub(crate) fn fence_safe(diff: &str) -> String {
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
    outcome_with(o, format, Paint::PLAIN)
}

/// [`outcome`]; its text coloured when `paint` says so (never its JSON).
pub fn outcome_with(
    o: &crate::deploy::StageOutcome,
    format: OutcomeFormat,
    paint: Paint,
) -> String {
    if format == OutcomeFormat::Json {
        let mut s = serde_json::to_string_pretty(o).expect("an outcome serialises");
        s.push('\n');
        return s;
    }
    use crate::core::verdict::StageVerdict;
    use crate::deploy::HostStatus;
    let mut out = String::new();
    let verdict = match crate::core::verdict::verdict(o) {
        StageVerdict::Passed => paint.on(hue::GOOD, "passed"),
        StageVerdict::Interrupted => paint.on(hue::BAD, "INTERRUPTED"),
        _ => paint.on(hue::BAD, "FAILED"),
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
        let _ = writeln!(
            out,
            "{}",
            paint.on(
                hue::ATTENTION,
                &format!("rolled back: {}", rolled_back.join(", "))
            )
        );
    }
    for h in o.hosts.iter().filter(|h| h.rollback_failure.is_some()) {
        let f = h.rollback_failure.as_ref().expect("filtered");
        let _ = writeln!(
            out,
            "{}",
            paint.on(
                hue::BAD,
                &format!(
                    "NOT rolled back: {} ({}: {}); it runs {}",
                    h.host,
                    f.step,
                    f.message.lines().next().unwrap_or_default(),
                    runs(h)
                )
            )
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
    out.push_str(&table_with(
        &["client", "host", "status", "runs", "time", "failure"],
        &rows,
        paint,
        |column, cell| match column {
            2 => status_hue(cell),
            5 => hue::REMOVED,
            _ => Style::new(),
        },
    ));
    let backups: Vec<String> = o
        .hosts
        .iter()
        .flat_map(|h| {
            h.backups
                .iter()
                .map(move |(app, b)| format!("{}/{app}@{} {}", h.client, h.host, b.id))
        })
        .collect();
    if !backups.is_empty() {
        let _ = writeln!(out, "backed up before the change: {}", backups.join(", "));
    }
    out.push_str(&logs_text(o, paint));
    for f in o.frozen() {
        let _ = writeln!(
            out,
            "{}",
            paint.on(
                hue::BAD,
                &format!(
                    "FROZEN: {f} stays on the failed release (rollback: freeze); a human must decide"
                )
            )
        );
    }
    for (apps, image, command) in o.restores() {
        let _ = writeln!(
            out,
            "RESTORE: snapshot {image} was taken before {apps} changed; to put the whole server back on it (approval as for production): {command}"
        );
    }
    for (app, id, command) in o.backup_restores() {
        let _ = writeln!(
            out,
            "RESTORE: backup {id} was taken before {app} changed; to put its data back (approval as for production): {command}"
        );
    }
    out
}

/// Lines of an app's logs the text report shows (JSON and the run record
/// have up to `core::outcome::LOG_LINES`).
pub const LOG_LINES_SHOWN: usize = 20;

/// The failed hosts' app logs: per host and app, its last
/// [`LOG_LINES_SHOWN`] lines, indented.
fn logs_text(o: &crate::deploy::StageOutcome, paint: Paint) -> String {
    let mut out = String::new();
    for h in &o.hosts {
        for (app, text) in &h.logs {
            let total = text.lines().count();
            let shown: Vec<&str> = text
                .lines()
                .skip(total.saturating_sub(LOG_LINES_SHOWN))
                .collect();
            let which = if shown.len() < total {
                format!(
                    "its last {} of {total} lines; `--format json` and the run record have them all",
                    shown.len()
                )
            } else {
                format!("{total} line{}", plural(total))
            };
            let _ = writeln!(
                out,
                "{}",
                paint.on(
                    hue::ATTENTION,
                    &format!("logs of {app} on {} ({which}):", h.host)
                )
            );
            for line in shown {
                let _ = writeln!(out, "    {line}");
            }
        }
    }
    out
}

/// The colour of a host's status, as the outcome table words it.
fn status_hue(status: &str) -> Style {
    match status {
        "deployed" | "unchanged" => hue::GOOD,
        "rolled back" => hue::ATTENTION,
        "not started" => hue::FAINT,
        _ => hue::BAD,
    }
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
    table_with(header, rows, Paint::PLAIN, |_, _| Style::new())
}

/// [`table`], each body cell in `hue(column, cell)` when `paint` colours
/// (padded by its plain width, so colour never shifts a column).
fn table_with(
    header: &[&str],
    rows: &[Vec<String>],
    paint: Paint,
    hue: impl Fn(usize, &str) -> Style,
) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>, style: &dyn Fn(usize, &str) -> Style| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            l.push_str(&paint.on(style(i, cell), cell));
            if i + 1 < cells.len() {
                let pad = w - cell.chars().count();
                l.push_str(&" ".repeat(pad + 2));
            }
        }
        l.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec(), &|_, _| self::hue::HEADING);
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect(), &hue));
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

/// One run as `fleetgate history` shows it: the record on a commit,
/// summarised. `--format json` prints a list of these (newest first).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RunSummary {
    /// The head commit the run rolled out (the note's commit).
    pub commit: String,
    /// Its subject line; null when this clone does not have the commit.
    pub subject: Option<String>,
    /// The commit it planned from; null for a run from nothing.
    pub base: Option<String>,
    pub plan_hash: Option<String>,
    /// RFC 3339: when the plan became what it is.
    pub planned_at: Option<String>,
    pub run_id: Option<String>,
    pub result: RunResult,
    /// Every client a stage deployed (or tried to), sorted.
    pub clients: Vec<String>,
    /// The stages that ran, in pipeline order.
    pub stages: Vec<StageSummary>,
    /// The stage waiting for an approval.
    pub waiting: Option<String>,
    pub scan: Option<ScanSummary>,
    pub approvals: Vec<ApprovalSummary>,
    pub revert: Option<crate::core::outcome::RevertOutcome>,
    /// Set when a signal stopped the run between stages or while it waited.
    pub interrupted: Option<crate::core::record::Interrupted>,
}

/// What a run came to, all stages and gates weighed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunResult {
    /// Every stage that ran passed, and none waits.
    Passed,
    /// A gate failed (health, a remote command): rolled back, reverted as
    /// configured.
    Failed,
    /// A `rollback: freeze` app was left on a failed release.
    Frozen,
    /// Hosts could not be reached or were lost during a change.
    InfraFailed,
    Interrupted,
    /// The image gate blocked before any stage.
    ScanBlocked,
    /// A stage waits for an approval.
    Waiting,
    /// Planned, and no stage deployed anything (nothing to do, or the run
    /// stopped before its first stage).
    NothingDeployed,
}

impl RunResult {
    fn words(self) -> &'static str {
        match self {
            RunResult::Passed => "passed",
            RunResult::Failed => "FAILED",
            RunResult::Frozen => "FROZEN",
            RunResult::InfraFailed => "hosts unreachable",
            RunResult::Interrupted => "INTERRUPTED",
            RunResult::ScanBlocked => "scan blocked",
            RunResult::Waiting => "waiting",
            RunResult::NothingDeployed => "nothing deployed",
        }
    }

    fn hue(self) -> Style {
        match self {
            RunResult::Passed => hue::GOOD,
            RunResult::Waiting => hue::ATTENTION,
            RunResult::NothingDeployed => hue::FAINT,
            _ => hue::BAD,
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StageSummary {
    pub stage: String,
    /// The stage's verdict: passed, failed, frozen, infra_failed, interrupted.
    pub result: RunResult,
    pub hosts: Vec<HostSummary>,
    pub failed_hosts: usize,
    pub rolled_back: bool,
    /// `<stage>/<client>/<app>:<check>` of the gate that failed.
    pub failed_gate: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HostSummary {
    pub client: String,
    pub host: String,
    pub status: crate::core::outcome::HostStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ScanSummary {
    pub passed: bool,
    pub images: usize,
    pub blocking: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ApprovalSummary {
    pub by: String,
    pub at: String,
    pub plan_hash: String,
    pub source: String,
    /// Given for the run's current plan (an approval of an earlier plan
    /// does not count).
    pub current_plan: bool,
}

/// The summary of `record`, the note on `commit` (whose subject line is
/// `subject`); its stages in `order` (the pipeline's; stages it does not
/// name follow in the record's order).
pub fn run_summary(
    commit: &str,
    record: &crate::core::record::RunRecord,
    subject: Option<&str>,
    order: &[String],
) -> RunSummary {
    use crate::core::verdict::{StageVerdict, verdict};
    let mut stages: Vec<&crate::deploy::StageOutcome> = record.stages.values().collect();
    stages.sort_by_key(|o| {
        order
            .iter()
            .position(|s| *s == o.stage)
            .unwrap_or(order.len())
    });
    let stages: Vec<StageSummary> = stages
        .into_iter()
        .map(|o| StageSummary {
            stage: o.stage.clone(),
            result: match verdict(o) {
                StageVerdict::Passed => RunResult::Passed,
                StageVerdict::ChangeFailed => RunResult::Failed,
                StageVerdict::Frozen => RunResult::Frozen,
                StageVerdict::InfraFailed => RunResult::InfraFailed,
                StageVerdict::Interrupted => RunResult::Interrupted,
            },
            hosts: o
                .hosts
                .iter()
                .map(|h| HostSummary {
                    client: h.client.clone(),
                    host: h.host.clone(),
                    status: h.status,
                })
                .collect(),
            failed_hosts: o.failed_hosts,
            rolled_back: o.rolled_back,
            failed_gate: crate::core::outcome::FailedGate::of(o).map(|g| g.trailer()),
        })
        .collect();
    let mut clients: Vec<String> = stages
        .iter()
        .flat_map(|s| s.hosts.iter().map(|h| h.client.clone()))
        .collect();
    clients.sort();
    clients.dedup();
    let scan = record.scan.as_ref().map(|s| ScanSummary {
        passed: s.passed,
        images: s.images.len(),
        blocking: s.blocking(),
    });
    // The worst stage decides; a waiting or scan-blocked run has not failed.
    let worst = [
        RunResult::Interrupted,
        RunResult::InfraFailed,
        RunResult::Frozen,
        RunResult::Failed,
    ]
    .into_iter()
    .find(|r| stages.iter().any(|s| s.result == *r));
    let result = if record.interrupted.is_some() {
        RunResult::Interrupted
    } else if let Some(worst) = worst {
        worst
    } else if scan.as_ref().is_some_and(|s| !s.passed) {
        RunResult::ScanBlocked
    } else if record.waiting.is_some() {
        RunResult::Waiting
    } else if stages.is_empty() {
        RunResult::NothingDeployed
    } else {
        RunResult::Passed
    };
    RunSummary {
        commit: commit.to_string(),
        subject: subject.map(str::to_string),
        base: record.base.clone(),
        plan_hash: record.plan_hash.clone(),
        planned_at: record.planned_at.clone(),
        run_id: record.run_id.clone(),
        result,
        clients,
        stages,
        waiting: record.waiting.clone(),
        scan,
        approvals: record
            .approvals
            .iter()
            .map(|a| ApprovalSummary {
                by: a.by.clone(),
                at: a.at.clone(),
                plan_hash: a.plan_hash.clone(),
                source: a.source.clone(),
                current_plan: record.plan_hash.as_deref() == Some(a.plan_hash.as_str()),
            })
            .collect(),
        revert: record.revert.clone(),
        interrupted: record.interrupted.clone(),
    }
}

/// `fleetgate history`: a row per run, newest first.
pub fn history(runs: &[RunSummary], format: OutcomeFormat, paint: Paint) -> String {
    use crate::core::outcome::RevertOutcome;
    if format == OutcomeFormat::Json {
        let mut s = serde_json::to_string_pretty(runs).expect("a history serialises");
        s.push('\n');
        return s;
    }
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            let mut stages: Vec<String> = r
                .stages
                .iter()
                .map(|s| format!("{}:{}", s.stage, s.result.words().replace(' ', "-")))
                .collect();
            if let Some(w) = &r.waiting {
                stages.push(format!("{w}:waiting"));
            }
            if let Some(scan) = r.scan.as_ref().filter(|s| !s.passed) {
                stages.insert(0, format!("scan:{}-blocking", scan.blocking));
            }
            let approvals: Vec<String> = r
                .approvals
                .iter()
                .map(|a| match a.current_plan {
                    true => a.by.clone(),
                    false => format!("{} (earlier plan)", a.by),
                })
                .collect();
            let revert = match &r.revert {
                None => "-".to_string(),
                Some(RevertOutcome::Pushed { commit, .. }) => format!("pushed {}", short(commit)),
                Some(RevertOutcome::Conflict { paths, .. }) => {
                    format!("CONFLICT ({} path{})", paths.len(), plural(paths.len()))
                }
                Some(RevertOutcome::NotOnBranch { .. }) => "not on branch".into(),
                Some(RevertOutcome::NothingToRevert { .. }) => "nothing to revert".into(),
            };
            let dash = |v: Vec<String>, sep: &str| match v.is_empty() {
                true => "-".to_string(),
                false => v.join(sep),
            };
            vec![
                short(&r.commit).to_string(),
                r.planned_at
                    .as_deref()
                    .map(|t| t.get(..16).unwrap_or(t).replace('T', " "))
                    .unwrap_or_else(|| "-".into()),
                r.plan_hash
                    .as_deref()
                    .map(|h| short(h).to_string())
                    .unwrap_or_else(|| "-".into()),
                r.result.words().to_string(),
                dash(stages, " "),
                dash(approvals, ", "),
                revert,
                r.subject
                    .clone()
                    .unwrap_or_else(|| "(not in this clone)".into()),
            ]
        })
        .collect();
    let results: Vec<RunResult> = runs.iter().map(|r| r.result).collect();
    let words: Vec<&str> = results.iter().map(|r| r.words()).collect();
    table_with(
        &[
            "commit",
            "planned",
            "plan",
            "result",
            "stages",
            "approvals",
            "revert",
            "subject",
        ],
        &rows,
        paint,
        |column, cell| match column {
            3 => words
                .iter()
                .position(|w| *w == cell)
                .map_or(Style::new(), |i| results[i].hue()),
            6 if cell != "-" => hue::ATTENTION,
            _ => Style::new(),
        },
    )
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
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
    use crate::deploy::{Failure, FailureKind, HostOutcome, HostStatus, Runs, StageOutcome};
    use crate::plan::{Action, AppPlan, ClientPlan, FileDiff, ImageChange, Plan};
    use serde_json::{Value, json};

    const IMG_A: &str = "registry.example.org/whoami:1.4.0@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const IMG_B: &str = "registry.example.org/whoami:1.5.0@sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn plan(clients: Vec<ClientPlan>, secrets_compared: bool) -> Plan {
        Plan {
            schema: 1,
            base: "1111111111111111111111111111111111111111".into(),
            head: "2222222222222222222222222222222222222222".into(),
            plan_hash: "3333333333333333333333333333333333333333333333333333333333333333".into(),
            secrets_compared,
            clients,
            unaffected: 7,
            inventory: Vec::new(),
        }
    }

    fn client(name: &str, stage: &str, reasons: &[&str], apps: Vec<AppPlan>) -> ClientPlan {
        ClientPlan {
            name: name.into(),
            stage: stage.into(),
            hosts: vec![format!("{name}-1")],
            hosts_added: Vec::new(),
            hosts_removed: Vec::new(),
            hosts_changed: Vec::new(),
            reasons: reasons.iter().map(|r| r.to_string()).collect(),
            apps,
        }
    }

    fn app(name: &str, action: Action) -> AppPlan {
        AppPlan {
            name: name.into(),
            action,
            files: Vec::new(),
            images: Vec::new(),
            secrets_changed: Vec::new(),
        }
    }

    /// A canary client with every kind of change, and a production client
    /// whose hosts alone change.
    fn busy_plan() -> Plan {
        let mut web = app("web", Action::Update);
        web.files.push(FileDiff {
            path: "app.env".into(),
            hosts: vec!["alpha-1".into()],
            diff: "--- a/app.env\n+++ b/app.env\n@@ -1 +1 @@\n-PORT=8080\n+PORT=8081\n+PW=••••0a0b0c0d\n```\n".into(),
        });
        web.images.push(ImageChange {
            name: "web".into(),
            from: Some(IMG_A.into()),
            to: Some(IMG_B.into()),
        });
        web.secrets_changed.push("admin_password".into());
        let mut db = app("db", Action::Add);
        db.images.push(ImageChange {
            name: "db".into(),
            from: None,
            to: Some(IMG_A.into()),
        });
        let mut alpha = client(
            "alpha",
            "canary",
            &["clients/alpha.yaml", "pipelines/apps/web|x"],
            vec![db, web],
        );
        alpha.hosts_added.push("alpha-2".into());
        let mut beta = client("beta", "production", &[], Vec::new());
        beta.hosts_removed.push("beta-0".into());
        beta.hosts_changed.push("beta-1".into());
        plan(vec![alpha, beta], false)
    }

    fn text(plan: &Plan) -> String {
        super::text_with(plan, super::Paint::PLAIN)
    }

    /// `render(input)` must be `expect`, exactly.
    fn check<T>(input: &T, render: impl Fn(&T) -> String, expect: &str) {
        let got = render(input);
        assert!(got == expect, "\nexpected:\n{expect}\ngot:\n{got}\n");
    }

    /// The JSON of `render(input)` must hold each `(pointer, value)`.
    fn check_json<T>(input: &T, render: impl Fn(&T) -> String, expect: &[(&str, Value)]) {
        let got: Value = serde_json::from_str(&render(input)).expect("JSON");
        for (pointer, want) in expect {
            assert_eq!(got.pointer(pointer), Some(want), "{pointer} in {got:#}");
        }
    }

    #[test]
    fn plan_as_text() {
        check(
            &plan(Vec::new(), true),
            text,
            "plan 111111111111..222222222222: 0 clients change, 7 unaffected (plan 333333333333)\n",
        );
        check(
            &busy_plan(),
            text,
            "\
plan 111111111111..222222222222: 2 clients change, 7 unaffected (plan 333333333333)
note: secret values were not compared (no decryption key in this job): listed keys may have changed

canary
  alpha (alpha-1)  because clients/alpha.yaml, pipelines/apps/web|x
    + host alpha-2
    + add db: image db: + 1.4.0@aaaaaaaaaaaa
    ~ update web: 1 file; image web: 1.4.0@aaaaaaaaaaaa → 1.5.0@bbbbbbbbbbbb; secrets: admin_password
      app.env [alpha-1]
        @@ -1 +1 @@
        -PORT=8080
        +PORT=8081
        +PW=••••0a0b0c0d
        ```

production
  beta (beta-1)  because its rendered state changed
    − host beta-0
    ~ host beta-1
",
        );
    }

    const BUSY_SUMMARY: &str = "\
### fleetgate plan `111111111111`..`222222222222`

| Client | Stage | Hosts | App | Action | Changes |
|---|---|---|---|---|---|
| alpha | canary | alpha-1<br>+ host alpha-2 | db | add | image db: + 1.4.0@aaaaaaaaaaaa |
|  |  |  | web | update | 1 file; image web: 1.4.0@aaaaaaaaaaaa → 1.5.0@bbbbbbbbbbbb; secrets: admin_password |
| beta | production | beta-1<br>− host beta-0<br>~ host beta-1 | | | hosts only |

2 clients change, 7 unaffected.

> **Note:** secret values were not compared (no decryption key in this job): listed keys may have changed.

";

    const BETA_DETAILS: &str = "\
<details><summary><b>beta</b> (production): </summary>

Because: its rendered state changed

</details>

";

    /// The summary table, then per client its diffs; a `|` cannot break a
    /// cell, a diff line with ``` cannot close the fence.
    #[test]
    fn plan_as_markdown() {
        check(
            &plan(Vec::new(), true),
            super::markdown,
            "\
### fleetgate plan `111111111111`..`222222222222`

No client changes. 7 clients unaffected.

Plan hash: `3333333333333333333333333333333333333333333333333333333333333333`
",
        );
        check(
            &busy_plan(),
            super::markdown,
            &format!(
                "{BUSY_SUMMARY}{}{BETA_DETAILS}{}",
                "\
<details><summary><b>alpha</b> (canary): add db, update web</summary>

Because: clients/alpha.yaml, pipelines/apps/web\\|x

`web/app.env` on alpha-1

```diff
--- a/app.env
+++ b/app.env
@@ -1 +1 @@
-PORT=8080
+PORT=8081
+PW=••••0a0b0c0d
`\u{200b}``
```

</details>

",
                "Plan hash: `3333333333333333333333333333333333333333333333333333333333333333`\n"
            ),
        );
    }

    /// Over the forge's limit, the largest client's diffs give way to a
    /// pointer at the job log; the summary table stays whole.
    #[test]
    fn plan_comment_fits_the_limit() {
        let comment = |limit| {
            move |p: &Plan| {
                super::plan_comment(
                    p,
                    None,
                    "<!-- fleetgate -->",
                    "After merge: canary.",
                    limit,
                    Some("https://ci.example.org/job/1"),
                )
            }
        };
        let hash_line =
            "Plan hash: `3333333333333333333333333333333333333333333333333333333333333333`";
        let tail = &format!("{hash_line}\n\nAfter merge: canary.");
        // Within the limit: the marker, the markdown plan, what merging does.
        let whole = format!(
            "<!-- fleetgate -->\n{}",
            super::markdown(&busy_plan()).replace(&format!("{hash_line}\n"), tail)
        );
        check(&busy_plan(), comment(100_000), &whole);
        check(
            &busy_plan(),
            comment(whole.chars().count() - 1),
            &format!(
                "<!-- fleetgate -->\n{BUSY_SUMMARY}{}{BETA_DETAILS}{tail}",
                "\
<details><summary><b>alpha</b> (canary): add db, update web</summary>

Because: clients/alpha.yaml, pipelines/apps/web\\|x

The diff (7 lines) is too long for a comment: see [the job log](https://ci.example.org/job/1).
</details>

"
            ),
        );
    }

    /// What `plan --format json` writes.
    fn json(plan: &Plan) -> String {
        let mut out = Vec::new();
        super::write_json(&mut out, plan).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn plan_as_json() {
        check(
            &plan(Vec::new(), true),
            json,
            r#"{
  "schema": 1,
  "base": "1111111111111111111111111111111111111111",
  "head": "2222222222222222222222222222222222222222",
  "plan_hash": "3333333333333333333333333333333333333333333333333333333333333333",
  "secrets_compared": true,
  "clients": [],
  "unaffected": 7
}
"#,
        );
        check_json(
            &busy_plan(),
            json,
            &[
                ("/schema", json!(1)),
                ("/secrets_compared", json!(false)),
                ("/clients/0/name", json!("alpha")),
                ("/clients/0/stage", json!("canary")),
                ("/clients/0/hosts", json!(["alpha-1"])),
                ("/clients/0/hosts_added", json!(["alpha-2"])),
                ("/clients/0/reasons/1", json!("pipelines/apps/web|x")),
                ("/clients/0/apps/0/action", json!("add")),
                ("/clients/0/apps/0/images/0/from", json!(null)),
                ("/clients/0/apps/0/images/0/to", json!(IMG_A)),
                ("/clients/0/apps/1/action", json!("update")),
                ("/clients/0/apps/1/files/0/path", json!("app.env")),
                ("/clients/0/apps/1/files/0/hosts", json!(["alpha-1"])),
                (
                    "/clients/0/apps/1/secrets_changed",
                    json!(["admin_password"]),
                ),
                ("/clients/1/hosts_removed", json!(["beta-0"])),
                ("/clients/1/hosts_changed", json!(["beta-1"])),
                ("/clients/1/apps", json!([])),
                ("/unaffected", json!(7)),
            ],
        );
        let got: Value = serde_json::from_str(&json(&busy_plan())).unwrap();
        // Empty host changes are left out, not written as [].
        assert_eq!(got.pointer("/clients/0/hosts_removed"), None);
    }

    /// One line of verdict, what was and was not rolled back, then a row
    /// per host: status, what it runs now, the first line of its failure.
    #[test]
    fn outcome_table() {
        check(
            &outcome(),
            |o| super::outcome(o, super::OutcomeFormat::Text),
            "\
stage canary @ 222222222222: FAILED (2 of 4 hosts failed, 0 tolerated)
rolled back: alpha-2
NOT rolled back: beta-1 (rollback: connection reset); it runs db=222222222222 web=as before
client  host     status       runs                           time   failure
alpha   alpha-1  deployed     222222222222                   1.23s
alpha   alpha-2  rolled back  as before                      1.23s  web health: GET http://x/health: 503
beta    beta-1   failed       db=222222222222 web=as before  1.23s  switch: exit 1
gamma   gamma-1  not started  -                              1.23s
",
        );
        let mut frozen = outcome();
        frozen.hosts.truncate(2);
        frozen.hosts[1].status = HostStatus::Failed;
        frozen.hosts[1].frozen = vec!["web".into()];
        frozen.failed_hosts = 1;
        frozen.max_failures = 1;
        check(
            &frozen,
            |o| super::outcome(o, super::OutcomeFormat::Text),
            "\
stage canary @ 222222222222: FAILED (1 of 2 hosts failed, 1 tolerated)
client  host     status    runs          time   failure
alpha   alpha-1  deployed  222222222222  1.23s
alpha   alpha-2  failed    as before     1.23s  web health: GET http://x/health: 503
FROZEN: alpha/web@alpha-2 stays on the failed release (rollback: freeze); a human must decide
",
        );
        frozen.hosts[1].snapshot = Some(4242);
        frozen.hosts[1].restore = Some(crate::core::outcome::restore_command(
            "alpha", "alpha-2", 4242,
        ));
        check(
            &frozen,
            |o| super::outcome(o, super::OutcomeFormat::Text),
            "\
stage canary @ 222222222222: FAILED (1 of 2 hosts failed, 1 tolerated)
client  host     status    runs          time   failure
alpha   alpha-1  deployed  222222222222  1.23s
alpha   alpha-2  failed    as before     1.23s  web health: GET http://x/health: 503
FROZEN: alpha/web@alpha-2 stays on the failed release (rollback: freeze); a human must decide
RESTORE: snapshot 4242 was taken before alpha/web@alpha-2 changed; to put the whole server back on it (approval as for production): fleetgate restore --client alpha --host alpha-2 --snapshot 4242
",
        );
        frozen.hosts[1].backups.insert(
            "web".into(),
            crate::core::outcome::Backup {
                id: "4f2a9c1e".into(),
                seconds: 0.5,
                restore: Some(crate::core::outcome::backup_restore_command(
                    "alpha", "web", "alpha-2", "4f2a9c1e",
                )),
            },
        );
        check(
            &frozen,
            |o| super::outcome(o, super::OutcomeFormat::Text),
            "\
stage canary @ 222222222222: FAILED (1 of 2 hosts failed, 1 tolerated)
client  host     status    runs          time   failure
alpha   alpha-1  deployed  222222222222  1.23s
alpha   alpha-2  failed    as before     1.23s  web health: GET http://x/health: 503
backed up before the change: alpha/web@alpha-2 4f2a9c1e
FROZEN: alpha/web@alpha-2 stays on the failed release (rollback: freeze); a human must decide
RESTORE: snapshot 4242 was taken before alpha/web@alpha-2 changed; to put the whole server back on it (approval as for production): fleetgate restore --client alpha --host alpha-2 --snapshot 4242
RESTORE: backup 4f2a9c1e was taken before alpha/web@alpha-2 changed; to put its data back (approval as for production): fleetgate restore --client alpha --app web --host alpha-2 --backup 4f2a9c1e
",
        );
        let json = super::outcome(&frozen, super::OutcomeFormat::Json);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["hosts"][1]["backups"]["web"]["id"], "4f2a9c1e", "{json}");
        assert!(v["hosts"][0].get("backups").is_none(), "{json}");
        let mut passed = outcome();
        passed.hosts.truncate(1);
        passed.passed = true;
        passed.failed_hosts = 0;
        check(
            &passed,
            |o| super::outcome(o, super::OutcomeFormat::Text),
            "\
stage canary @ 222222222222: passed (0 of 1 host failed, 0 tolerated)
client  host     status    runs          time   failure
alpha   alpha-1  deployed  222222222222  1.23s
",
        );
        check_json(
            &outcome(),
            |o| super::outcome(o, super::OutcomeFormat::Json),
            &[
                ("/stage", json!("canary")),
                ("/passed", json!(false)),
                ("/hosts/1/status", json!("rolled_back")),
                ("/hosts/1/failure/kind", json!("health")),
                ("/hosts/1/runs/web", json!("as_before")),
                (
                    "/hosts/2/runs/db/release",
                    json!("2222222222222222222222222222222222222222"),
                ),
                ("/hosts/2/rollback_failure/kind", json!("infra")),
                ("/hosts/3/status", json!("not_started")),
            ],
        );
    }

    /// A failed host's app logs under the table: the last 20 lines,
    /// indented, saying where the rest is; JSON has them whole.
    #[test]
    fn outcome_with_logs() {
        let mut o = outcome();
        o.hosts.truncate(2);
        o.failed_hosts = 1;
        o.hosts[1].logs = [
            (
                "web".to_string(),
                (1..=30)
                    .map(|i| format!("line {i}"))
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
            ("worker".to_string(), "ready\n\tcrashed".to_string()),
        ]
        .into();
        let last: String = (11..=30).map(|i| format!("    line {i}\n")).collect();
        check(
            &o,
            |o| super::outcome(o, super::OutcomeFormat::Text),
            &format!(
                "\
stage canary @ 222222222222: FAILED (1 of 2 hosts failed, 0 tolerated)
rolled back: alpha-2
client  host     status       runs          time   failure
alpha   alpha-1  deployed     222222222222  1.23s
alpha   alpha-2  rolled back  as before     1.23s  web health: GET http://x/health: 503
logs of web on alpha-2 (its last 20 of 30 lines; `--format json` and the run record have them all):
{last}logs of worker on alpha-2 (2 lines):
    ready
    \tcrashed
"
            ),
        );
        check_json(
            &o,
            |o| super::outcome(o, super::OutcomeFormat::Json),
            &[("/hosts/1/logs/worker", json!("ready\n\tcrashed"))],
        );
        let json = super::outcome(&o, super::OutcomeFormat::Json);
        assert!(!json.contains("\"logs\": {}"), "no empty logs: {json}");
    }

    fn host(client: &str, host: &str, status: HostStatus, runs: &[(&str, Runs)]) -> HostOutcome {
        let runs = runs
            .iter()
            .map(|(a, r)| (a.to_string(), r.clone()))
            .collect();
        HostOutcome {
            seconds: 1.234,
            ..HostOutcome::new(client, host, status, runs)
        }
    }

    fn failure(kind: FailureKind, app: Option<&str>, step: &str, message: &str) -> Option<Failure> {
        Some(Failure {
            kind,
            app: app.map(str::to_string),
            step: step.into(),
            message: message.into(),
        })
    }

    fn outcome() -> StageOutcome {
        let rev = "2222222222222222222222222222222222222222";
        let mut failed = host(
            "alpha",
            "alpha-2",
            HostStatus::RolledBack,
            &[("web", Runs::AsBefore)],
        );
        failed.failure = failure(
            FailureKind::Health,
            Some("web"),
            "health",
            "GET http://x/health: 503\nbody",
        );
        let mut stuck = host(
            "beta",
            "beta-1",
            HostStatus::Failed,
            &[("db", Runs::Release(rev.into())), ("web", Runs::AsBefore)],
        );
        stuck.failure = failure(FailureKind::Command, None, "switch", "exit 1");
        stuck.rollback_failure = failure(
            FailureKind::Infra,
            None,
            "rollback",
            "connection reset\nmore",
        );
        StageOutcome {
            stage: "canary".into(),
            rev: rev.into(),
            passed: false,
            interrupted: false,
            failed_hosts: 2,
            max_failures: 0,
            rolled_back: true,
            hosts: vec![
                host(
                    "alpha",
                    "alpha-1",
                    HostStatus::Deployed,
                    &[("web", Runs::Release(rev.into()))],
                ),
                failed,
                stuck,
                host("gamma", "gamma-1", HostStatus::NotStarted, &[]),
            ],
        }
    }

    /// Text without its ANSI styles.
    fn plain(text: &str) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(at) = rest.find('\u{1b}') {
            out.push_str(&rest[..at]);
            let end = rest[at..].find('m').expect("a style ends with m");
            rest = &rest[at + end + 1..];
        }
        out + rest
    }

    /// Colour adds styles and nothing else: without them the text is the
    /// plain text to the byte (no column moves); JSON never takes one.
    #[test]
    fn colour_only_styles() {
        let color = super::Paint { color: true };
        let plan = busy_plan();
        let coloured = super::text_with(&plan, color);
        assert_eq!(plain(&coloured), text(&plan));
        for line in [
            "\u{1b}[32m+PORT=8081\u{1b}[0m",
            "\u{1b}[31m-PORT=8080\u{1b}[0m",
            "\u{1b}[36m@@ -1 +1 @@\u{1b}[0m",
            "\u{1b}[32m+ add db\u{1b}[0m",
        ] {
            assert!(coloured.contains(line), "{line:?} in\n{coloured}");
        }
        let o = outcome();
        let coloured = super::outcome_with(&o, super::OutcomeFormat::Text, color);
        assert_eq!(
            plain(&coloured),
            super::outcome(&o, super::OutcomeFormat::Text)
        );
        assert!(
            coloured.contains("\u{1b}[1m\u{1b}[31mFAILED\u{1b}[0m"),
            "{coloured}"
        );
        assert!(
            coloured.contains("\u{1b}[33mrolled back\u{1b}[0m  as before"),
            "{coloured}"
        );
        assert!(!super::outcome_with(&o, super::OutcomeFormat::Json, color).contains('\u{1b}'));
        let runs = [super::run_summary(
            HEAD,
            &record_passed(),
            Some("web: v2"),
            &[],
        )];
        assert!(!super::history(&runs, super::OutcomeFormat::Json, color).contains('\u{1b}'));
        assert_eq!(
            plain(&super::history(&runs, super::OutcomeFormat::Text, color)),
            super::history(&runs, super::OutcomeFormat::Text, super::Paint::PLAIN)
        );
        assert_eq!(text(&plan), super::text_with(&plan, super::Paint::PLAIN));
        assert!(!text(&plan).contains('\u{1b}'));
    }

    use crate::core::outcome::RevertOutcome;
    use crate::core::record::{Approval, Interrupted as Stopped, RunRecord};

    const HEAD: &str = "4444444444444444444444444444444444444444";
    const HASH: &str = "5555555555555555555555555555555555555555555555555555555555555555";

    fn stage(name: &str, passed: bool) -> StageOutcome {
        let mut o = outcome();
        o.stage = name.into();
        o.hosts.truncate(if passed { 1 } else { 2 });
        o.passed = passed;
        o.failed_hosts = usize::from(!passed);
        o.rolled_back = !passed;
        o
    }

    fn approval(by: &str, plan_hash: &str) -> Approval {
        Approval {
            by: by.into(),
            at: "2026-03-01T10:00:00Z".into(),
            plan_hash: plan_hash.into(),
            source: "cli".into(),
        }
    }

    /// Canary, then production after alice's approval (bob's was for an
    /// earlier plan).
    fn record_passed() -> RunRecord {
        let mut r = RunRecord::new(HEAD);
        r.plan(
            Some("1111111111111111111111111111111111111111"),
            HASH,
            "run-1",
            "2026-03-01T09:58:07Z",
        );
        r.record_stage(&stage("production", true));
        r.record_stage(&stage("canary", true));
        r.add_approval(&approval("bob", "0000000000000000"));
        r.add_approval(&approval("alice", HASH));
        r
    }

    /// What each kind of record comes to.
    #[test]
    fn a_run_record_summarised() {
        use super::RunResult::*;
        let order = ["canary".to_string(), "production".to_string()];
        let waiting = {
            let mut r = RunRecord::new(HEAD);
            r.plan(None, HASH, "run-2", "t");
            r.record_stage(&stage("canary", true));
            r.waiting = Some("production".into());
            r
        };
        let failed = {
            let mut r = RunRecord::new(HEAD);
            r.record_stage(&stage("canary", false));
            r.revert = Some(RevertOutcome::Pushed {
                commit: "6666666666666666666666666666666666666666".into(),
                onto: HEAD.into(),
                reverts: vec![HEAD.into()],
                failed_gate: "canary/alpha/web:http://x/health".into(),
            });
            r
        };
        let interrupted = {
            let mut r = waiting.clone();
            r.interrupted = Some(Stopped {
                at: "t".into(),
                before_stage: "production".into(),
                run_id: "run-2".into(),
            });
            r
        };
        let mut lost = stage("canary", false);
        lost.hosts[1].runs = [("web".to_string(), Runs::Unknown)].into();
        let infra = {
            let mut r = RunRecord::new(HEAD);
            r.record_stage(&lost);
            r
        };
        for (record, want) in [
            (record_passed(), Passed),
            (waiting.clone(), Waiting),
            (failed.clone(), Failed),
            (interrupted, Interrupted),
            (infra, InfraFailed),
            (RunRecord::new(HEAD), NothingDeployed),
        ] {
            assert_eq!(
                super::run_summary(HEAD, &record, None, &order).result,
                want,
                "{record:?}"
            );
        }

        let passed = super::run_summary(HEAD, &record_passed(), Some("web: version 2"), &order);
        let stages: Vec<&str> = passed.stages.iter().map(|s| s.stage.as_str()).collect();
        assert_eq!(
            stages,
            ["canary", "production"],
            "pipeline order, not the record's"
        );
        assert_eq!(passed.clients, ["alpha"]);
        check(
            &vec![
                super::run_summary(HEAD, &failed, Some("web: broken"), &order),
                passed,
                super::run_summary(HEAD, &waiting, None, &order),
            ],
            |runs| super::history(runs, super::OutcomeFormat::Text, super::Paint::PLAIN),
            "\
commit        planned           plan          result   stages                            approvals                  revert               subject
444444444444  -                 -             FAILED   canary:FAILED                     -                          pushed 666666666666  web: broken
444444444444  2026-03-01 09:58  555555555555  passed   canary:passed production:passed   bob (earlier plan), alice  -                    web: version 2
444444444444  t                 555555555555  waiting  canary:passed production:waiting  -                          -                    (not in this clone)
",
        );
        check_json(
            &vec![super::run_summary(
                HEAD,
                &record_passed(),
                Some("web: version 2"),
                &order,
            )],
            |runs| super::history(runs, super::OutcomeFormat::Json, super::Paint::PLAIN),
            &[
                ("/0/commit", json!(HEAD)),
                ("/0/subject", json!("web: version 2")),
                ("/0/base", json!("1111111111111111111111111111111111111111")),
                ("/0/plan_hash", json!(HASH)),
                ("/0/result", json!("passed")),
                ("/0/stages/0/stage", json!("canary")),
                ("/0/stages/0/result", json!("passed")),
                (
                    "/0/stages/0/hosts/0",
                    json!({"client": "alpha", "host": "alpha-1", "status": "deployed"}),
                ),
                ("/0/stages/1/stage", json!("production")),
                ("/0/approvals/0/by", json!("bob")),
                ("/0/approvals/0/current_plan", json!(false)),
                ("/0/approvals/1/current_plan", json!(true)),
                ("/0/waiting", Value::Null),
                ("/0/revert", Value::Null),
            ],
        );
        check_json(
            &vec![super::run_summary(HEAD, &failed, None, &order)],
            |runs| super::history(runs, super::OutcomeFormat::Json, super::Paint::PLAIN),
            &[
                ("/0/result", json!("failed")),
                ("/0/stages/0/failed_gate", json!("canary/alpha/web:health")),
                ("/0/stages/0/rolled_back", json!(true)),
                ("/0/revert/result", json!("pushed")),
                (
                    "/0/revert/commit",
                    json!("6666666666666666666666666666666666666666"),
                ),
            ],
        );
        assert_eq!(
            super::history(&[], super::OutcomeFormat::Json, super::Paint::PLAIN),
            "[]\n"
        );
    }
}
