//! `fleetgate deploy --stage NAME --rev REV [--clients a,b]`: one stage to real
//! servers, proven healthy, or put back as it was.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::Context;
use crate::config::{self, Selection};
use crate::deploy::{self, Connector, StageOutcome};
use crate::desired::{self, DecryptCache};
use crate::error::{Error, ExitCode, Result};
use crate::gates::http::ReqwestProber;
use crate::inventory::{self, Inventory};
use crate::origin::Origin;
use crate::record;
use crate::remote::RemoteError;
use crate::remote::ssh::{SshHost, SshOptions};
use crate::render::{DesiredClient, SecretView};
use crate::repo::{CommitId, Repo};
use crate::report;
use std::collections::BTreeMap;

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The stage of pipelines/pipeline.yaml to deploy.
    #[arg(long)]
    pub stage: String,
    /// The commit to deploy.
    #[arg(long, value_name = "REV")]
    pub rev: String,
    /// Only these clients of the stage (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "A,B")]
    pub clients: Vec<String>,
    /// Output format of the final report on stdout.
    #[arg(long, value_enum, default_value_t = report::OutcomeFormat::Text)]
    pub format: report::OutcomeFormat,
    /// The remote the records are pushed to, when the repository has it.
    #[arg(long, env = "FLEETGATE_REMOTE", default_value = "origin")]
    pub remote: String,
}

pub fn run(ctx: &Context, args: &DeployArgs) -> Result<ExitCode> {
    let repo = Repo::discover(ctx.repo.as_deref())?;
    let rev = repo.resolve(&args.rev)?;
    // SIGTERM/SIGINT as in `run`: no new host starts, the ones in flight
    // finish or roll back, the stage is recorded, exit 3.
    crate::interrupt::install();
    let origin = Origin::optional(&repo, &args.remote);
    if origin.is_none() {
        tracing::info!(
            "no remote `{}`: records stay in this repository",
            args.remote
        );
    }
    let records = record::Records::new(&repo, origin.as_ref());
    // A record that could not be written afterwards (corrupt) stops the
    // deploy before any host is touched, not after.
    records.read(rev)?;
    let outcome = deploy_stage(ctx, &repo, rev, &args.stage, &args.clients)?;
    for moved in record::record_stage(&records, rev, &outcome)?.0 {
        tracing::info!("{moved} → {}", rev.short());
    }
    print!("{}", report::outcome(&outcome, args.format));
    Ok(crate::pipeline::verdict(&outcome).exit_code())
}

/// Renders `rev`, builds the stage's plan and carries it out over SSH.
pub fn deploy_stage(
    ctx: &Context,
    repo: &Repo,
    rev: CommitId,
    stage_name: &str,
    only: &[String],
) -> Result<StageOutcome> {
    let snap = repo.snapshot(rev)?;
    let files = config::load(&snap, Selection::All)?;
    let invalid = |problems| Error::Invalid {
        at: snap.label(),
        problems,
    };
    let cache = DecryptCache::default();
    let rev_s = rev.to_string();
    // Validated, templates compiled and shared secrets decrypted once; then
    // only the stage's clients are rendered, masked and real.
    let (prepared, problems) = desired::prepare(&files, &ctx.keyring, &cache);
    if !problems.is_empty() {
        return Err(invalid(desired::collapse_repeats(problems)));
    }
    let fleet = &prepared.fleet;
    let stage = fleet
        .pipeline
        .stages
        .iter()
        .find(|s| s.name == stage_name)
        .ok_or_else(|| {
            let names: Vec<&str> = fleet
                .pipeline
                .stages
                .iter()
                .map(|s| s.name.as_str())
                .collect();
            Error::Usage(format!(
                "stage `{stage_name}` is not in {}\n  hint: stages are: {}",
                config::PIPELINE,
                names.join(", ")
            ))
        })?;
    for c in only {
        if !fleet.clients.contains_key(c) {
            return Err(Error::Usage(format!(
                "client `{c}` does not exist at {}",
                snap.label()
            )));
        }
    }
    let clients: Vec<String> = fleet
        .clients
        .values()
        .filter(|c| c.group == stage.group && (only.is_empty() || only.contains(&c.name)))
        .map(|c| c.name.clone())
        .collect();
    for c in &clients {
        inventory::Static
            .hosts(&fleet.clients[c])
            .map_err(Error::Usage)?;
    }
    let uses_secrets = clients.iter().any(|c| {
        fleet.clients[c]
            .apps
            .iter()
            .any(|a| !fleet.apps[a].secrets.is_empty())
    });
    if uses_secrets && !ctx.keyring.can_decrypt() {
        return Err(Error::Usage(
            "deploying needs the secrets' values, and no age identity is configured\n  hint: set SOPS_AGE_KEY_FILE (or SOPS_AGE_KEY) to the CI key".into(),
        ));
    }
    let render = |view| -> Result<BTreeMap<String, DesiredClient>> {
        let mut out = BTreeMap::new();
        for c in &clients {
            let d = prepared
                .render(c, view, &rev_s)
                .expect("a client of this fleet")
                .map_err(|p| invalid(desired::collapse_repeats(p)))?;
            out.insert(c.clone(), d);
        }
        Ok(out)
    };
    let (masked, real) = (render(SecretView::Masked)?, render(SecretView::Real)?);
    let plan = deploy::build_stage_plan(fleet, stage, &real, &masked, &clients, &rev_s);
    let hosts: usize = plan.targets.len();
    tracing::info!(
        "deploy {} to stage {}: {} client(s), {} host(s), {} at a time, {} failure(s) tolerated",
        rev.short(),
        stage.name,
        clients.len(),
        hosts,
        plan.parallelism,
        plan.max_failures
    );
    let known_hosts = super::known_hosts(&snap)?;
    let connector = SshConnector::new(&known_hosts, &fleet.pipeline.ssh_options)?;
    let runtime = super::runtime()?;
    Ok(runtime.block_on(deploy::run_stage(
        &plan,
        &connector,
        &ReqwestProber::default(),
        stage.soak,
    )))
}

/// Connects with the system OpenSSH, strict host keys from the commit's
/// `pipelines/known_hosts`.
pub struct SshConnector {
    _dir: tempfile::TempDir,
    opts: SshOptions,
}

impl SshConnector {
    pub fn new(
        known_hosts: &[u8],
        options: &std::collections::BTreeMap<String, String>,
    ) -> Result<SshConnector> {
        let io = |path: &str, source| Error::Io {
            path: path.to_string(),
            source,
        };
        // What a killed fleetgate left: its masters and their directories.
        crate::remote::ssh::remove_stale_control_dirs(std::path::Path::new("/tmp"));
        // Short: control sockets live here, and Unix socket paths stop at ~108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("fg")
            .tempdir_in("/tmp")
            .map_err(|e| io("/tmp", e))?;
        crate::remote::ssh::mark_control_dir(dir.path()).map_err(|e| io("/tmp", e))?;
        let known = dir.path().join("known_hosts");
        std::fs::write(&known, known_hosts).map_err(|e| io("known_hosts", e))?;
        let config = dir.path().join("ssh_config");
        let mut text = String::from(
            "# written by fleetgate from pipelines/pipeline.yaml `ssh.options`;\n# the runner's ~/.ssh/config does not apply\n",
        );
        for (k, v) in options {
            text.push_str(&format!("{k} {v}\n"));
        }
        std::fs::write(&config, text).map_err(|e| io("ssh_config", e))?;
        let key = std::env::var_os("FLEETGATE_SSH_KEY")
            .filter(|k| !k.is_empty())
            .map(PathBuf::from);
        let opts = SshOptions {
            known_hosts: known,
            key,
            control_dir: dir.path().to_path_buf(),
            config_file: config,
            connect_timeout: (!options.contains_key("ConnectTimeout"))
                .then_some(Duration::from_secs(10)),
            server_alive_interval: (!options.contains_key("ServerAliveInterval"))
                .then_some(Duration::from_secs(15)),
            command_timeout: Duration::from_secs(600),
        };
        Ok(SshConnector { _dir: dir, opts })
    }
}

impl Connector for SshConnector {
    type Host = SshHost;

    async fn connect(&self, host: &config::Host) -> std::result::Result<SshHost, RemoteError> {
        SshHost::connect(host, &self.opts).await
    }

    async fn close(&self, host: SshHost) {
        host.close().await;
    }
}
