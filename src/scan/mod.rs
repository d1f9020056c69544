//! The image gate: pinning policy (pure). The trivy adapter lands with the scan issue.

pub mod pin;
