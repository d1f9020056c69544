//! STUB (replaced by the real module from the proxy-mod branch).
#![allow(dead_code, unused_variables)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Caddy,
    Nginx,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    Auto,
    Off,
}
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub kind: Kind,
    pub http_port: u16,
    pub https_port: u16,
    pub tls: Tls,
    pub start: Option<String>,
    pub reload: Option<String>,
}
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    pub app: String,
    pub hosts: Vec<String>,
    pub path: Option<String>,
    pub upstream_port: u16,
}
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyDir {
    pub deploy_root: String,
    pub client: String,
}
impl ProxyDir {
    pub fn path(&self) -> String {
        format!("{}/{}/.proxy", self.deploy_root, self.client)
    }
    pub fn config(&self, kind: Kind) -> String {
        format!("{}/{}", self.path(), file_name(kind))
    }
}
pub fn file_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Caddy => "Caddyfile",
        Kind::Nginx => "nginx.conf",
    }
}
pub fn render(settings: &Settings, dir: &ProxyDir, routes: &[Route]) -> String {
    todo!()
}
pub fn check_script(settings: &Settings, dir: &ProxyDir, content: &str) -> String {
    todo!()
}
pub fn apply_script(settings: &Settings, dir: &ProxyDir) -> String {
    todo!()
}
pub fn restore_script(settings: &Settings, dir: &ProxyDir) -> String {
    todo!()
}
pub fn inspect_script(settings: &Settings, dir: &ProxyDir) -> String {
    todo!()
}
pub fn parse_inspect(line: &str) -> Option<(Option<String>, bool)> {
    todo!()
}
