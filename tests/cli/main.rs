//! Integration tests: the real `fleetgate` binary on real Git repositories,
//! with real `sops`-encrypted secrets. One binary, one module per command.

mod backup;
mod bootstrap;
mod check;
mod common;
mod deploy;
mod docker;
mod faults;
mod forge;
mod forge_server;
mod hcloud;
mod hcloud_server;
mod hcloud_snapshots;
mod history;
mod hosts;
mod hosts_cmd;
mod http_stub;
mod leakscan;
mod load;
mod lock;
mod logs;
mod notify;
mod operator;
mod plan;
mod proxy;
mod proxy_bench;
mod release;
mod removal;
mod restart;
mod run;
mod scan;
mod secrets;
mod status;
mod tls;
mod validation;
mod workflows;
