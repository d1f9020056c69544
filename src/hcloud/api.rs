//! The Hetzner Cloud API's shapes fleetgate reads, and only the fields it
//! needs: serde ignores the rest, and a value Hetzner adds later (a new
//! server status, say) is a plain string, never a failed list. Also how a
//! server's address for a client is chosen (pure).

use std::collections::BTreeMap;
use std::net::Ipv6Addr;

use serde::Deserialize;

use crate::config::Network;

/// `GET /servers`: one page.
#[derive(Debug, Clone, Deserialize)]
pub struct ServersPage {
    pub servers: Vec<Server>,
    #[serde(default)]
    pub meta: Option<Meta>,
}

/// `GET /networks`: one page.
#[derive(Debug, Clone, Deserialize)]
pub struct NetworksPage {
    pub networks: Vec<NetworkRef>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Meta {
    #[serde(default)]
    pub pagination: Option<Pagination>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Pagination {
    #[serde(default)]
    pub next_page: Option<u32>,
}

impl Meta {
    pub fn next_page(meta: &Option<Meta>) -> Option<u32> {
        meta.as_ref()?.pagination.as_ref()?.next_page
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct NetworkRef {
    pub id: u64,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Server {
    pub id: u64,
    pub name: String,
    /// `running`, `off`, … kept as text: a status Hetzner adds later must
    /// not fail the whole list.
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub public_net: PublicNet,
    #[serde(default)]
    pub private_net: Vec<PrivateNet>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct PublicNet {
    #[serde(default)]
    pub ipv4: Option<Ip>,
    #[serde(default)]
    pub ipv6: Option<Ip>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Ip {
    pub ip: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PrivateNet {
    pub network: u64,
    pub ip: String,
}

/// An action (`GET /actions/{id}`, and what a server action starts).
#[derive(Debug, Clone, Deserialize)]
pub struct Action {
    pub id: u64,
    /// `running`, `success` or `error`; kept as text.
    pub status: String,
    #[serde(default)]
    pub error: Option<ErrorDetail>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ActionEnvelope {
    pub action: Action,
}

/// `POST /servers/{id}/actions/create_image`.
#[derive(Debug, Clone, Deserialize)]
pub struct CreatedImage {
    pub image: Image,
    pub action: Action,
}

/// `GET /images`: one page.
#[derive(Debug, Clone, Deserialize)]
pub struct ImagesPage {
    pub images: Vec<Image>,
    #[serde(default)]
    pub meta: Option<Meta>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Image {
    pub id: u64,
    /// RFC 3339, as Hetzner writes it.
    #[serde(default)]
    pub created: String,
    #[serde(default)]
    pub created_from: Option<CreatedFrom>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CreatedFrom {
    pub id: u64,
}

/// The error body Hetzner answers with: `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ErrorDetail {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
}

/// The address to connect to `server` on, as `network` asks: its public
/// IPv4, the first address of its public IPv6 /64 (Hetzner routes the
/// whole /64 to the server and configures `::1`), or its address on the
/// private network whose id is `private_id`. Err says what it lacks.
pub fn address(
    server: &Server,
    network: &Network,
    private_id: Option<u64>,
) -> Result<String, String> {
    match network {
        Network::PublicIpv4 => server
            .public_net
            .ipv4
            .as_ref()
            .map(|ip| ip.ip.clone())
            .ok_or_else(|| "it has no public IPv4 address".to_string()),
        Network::PublicIpv6 => {
            let net = server
                .public_net
                .ipv6
                .as_ref()
                .ok_or_else(|| "it has no public IPv6 network".to_string())?;
            first_of(&net.ip)
        }
        Network::Private(name) => {
            let id =
                private_id.ok_or_else(|| format!("the private network `{name}` does not exist"))?;
            server
                .private_net
                .iter()
                .find(|p| p.network == id)
                .map(|p| p.ip.clone())
                .ok_or_else(|| format!("it is not attached to the private network `{name}`"))
        }
    }
}

/// `2001:db8:1:2::/64` → `2001:db8:1:2::1`.
fn first_of(net: &str) -> Result<String, String> {
    let (prefix, len) = net.split_once('/').unwrap_or((net, "64"));
    let base: Ipv6Addr = prefix
        .parse()
        .map_err(|_| format!("its IPv6 network `{net}` is not an IPv6 network"))?;
    let len: u32 = len
        .parse()
        .ok()
        .filter(|l| *l <= 127)
        .ok_or_else(|| format!("its IPv6 network `{net}` has no usable prefix length"))?;
    let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
    Ok(Ipv6Addr::from((u128::from(base) & mask) | 1).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(json: &str) -> Server {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_server_with_fields_and_values_this_version_does_not_know_still_reads() {
        let s = server(
            r#"{"id": 7, "name": "alpha-1", "status": "hibernating", "labels": {"client": "alpha"},
                "public_net": {"ipv4": {"ip": "192.0.2.7", "blocked": false}, "ipv6": null, "floating_ips": []},
                "private_net": [{"network": 4, "ip": "10.0.0.2", "alias_ips": []}],
                "server_type": {"name": "cx22"}, "brand_new_field": {"x": 1}}"#,
        );
        assert_eq!(s.status, "hibernating");
        assert_eq!(s.public_net.ipv4.as_ref().unwrap().ip, "192.0.2.7");
    }

    #[test]
    fn the_address_each_network_choice_gives() {
        let s = server(
            r#"{"id": 1, "name": "a", "public_net": {"ipv4": {"ip": "192.0.2.1"}, "ipv6": {"ip": "2001:db8:5:6::/64"}},
                "private_net": [{"network": 9, "ip": "10.1.0.5"}]}"#,
        );
        let bare = server(r#"{"id": 2, "name": "b", "public_net": {}}"#);
        let private = Network::Private("backend".into());
        for (srv, network, id, expect) in [
            (&s, &Network::PublicIpv4, None, Ok("192.0.2.1")),
            (&s, &Network::PublicIpv6, None, Ok("2001:db8:5:6::1")),
            (&s, &private, Some(9), Ok("10.1.0.5")),
            (
                &s,
                &private,
                Some(3),
                Err("not attached to the private network `backend`"),
            ),
            (
                &s,
                &private,
                None,
                Err("the private network `backend` does not exist"),
            ),
            (
                &bare,
                &Network::PublicIpv4,
                None,
                Err("no public IPv4 address"),
            ),
            (
                &bare,
                &Network::PublicIpv6,
                None,
                Err("no public IPv6 network"),
            ),
        ] {
            let got = address(srv, network, id);
            match expect {
                Ok(want) => assert_eq!(got.as_deref(), Ok(want), "{network:?}"),
                Err(want) => assert!(got.as_ref().unwrap_err().contains(want), "{got:?}"),
            }
        }
    }

    #[test]
    fn the_first_address_of_a_network() {
        assert_eq!(first_of("2001:db8::/64").unwrap(), "2001:db8::1");
        assert_eq!(
            first_of("2001:db8:0:1:ffff::/64").unwrap(),
            "2001:db8:0:1::1"
        );
        assert!(first_of("nonsense/64").is_err());
    }
}
