//! The proxy's HTTPS web API (`/webapi/...`): every request and answer body, defined once for
//! the proxy that answers and for tsh and the leaf auth service that call it.
//!
//! Field order is the order on the wire. Bodies the proxy used to build with `json!` (whose
//! keys serde_json sorts) keep their fields sorted by name, so the bytes did not change.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `GET`: the cluster name, version and where the proxy's services are reached.
pub const PING_PATH: &str = "/webapi/ping";
/// `POST`: password login ([`LoginRequest`] → [`LoginResponse`]).
pub const LOGIN_PATH: &str = "/webapi/login";
/// `POST`: a leaf cluster asks to be trusted ([`ValidateRequest`] → [`ValidateResponse`]).
pub const VALIDATE_PATH: &str = "/webapi/trustedclusters/validate";
/// `GET`: this cluster and the leaves the user may see ([`SitesResponse`]).
pub const SITES_PATH: &str = "/webapi/sites";
/// `GET`: the nodes of one cluster ([`NodesResponse`]); `{cluster}` is one path segment.
pub const NODES_PATH: &str = "/webapi/sites/{cluster}/nodes";
/// `POST`: why an SSH login would be refused ([`AuthorizeRequest`] → [`AuthorizeResponse`]).
pub const AUTHORIZE_PATH: &str = "/webapi/ssh/authorize";

/// Secrets in bodies (a password, an invite token): the JSON is the plain string, `Debug`
/// and `Display` print `***`.
pub use crate::secret::Secret;

/// Every error answer (4xx/5xx): a message written for users.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// Answer of [`PING_PATH`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingResponse {
    pub cluster_name: String,
    #[serde(default)]
    pub proxy: PingProxy,
    #[serde(default)]
    pub server_version: String,
}

/// The proxy part of [`PingResponse`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingProxy {
    #[serde(default)]
    pub ssh: PingSsh,
    #[serde(default)]
    pub tls_routing_enabled: bool,
}

/// Where the proxy's web, SSH and reverse-tunnel listeners are reached.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingSsh {
    #[serde(default)]
    pub public_addr: String,
    #[serde(default)]
    pub ssh_public_addr: String,
    #[serde(default)]
    pub ssh_tunnel_public_addr: String,
}

/// Body of [`LOGIN_PATH`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginRequest {
    pub user: String,
    pub password: Secret<String>,
    /// authorized_keys line of the key the SSH certificate is for.
    #[serde(default)]
    pub ssh_pub_key: String,
    /// Base64 (standard) DER SubjectPublicKeyInfo.
    #[serde(default)]
    pub tls_pub_key: String,
    #[serde(default)]
    pub ttl_seconds: u64,
    /// Cluster the certificates route to; empty for the root.
    #[serde(default)]
    pub cluster: String,
}

/// A cluster's public CAs (also the JSON of the auth service's `CertAuthorities`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CertAuthorities {
    /// PEM X.509 CA certificates.
    pub tls_ca_pem: Vec<String>,
    /// authorized_keys lines of SSH user CAs.
    pub ssh_user_ca: Vec<String>,
    /// authorized_keys lines of SSH host CAs.
    pub ssh_host_ca: Vec<String>,
}

/// Answer of [`LOGIN_PATH`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginResponse {
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub cluster_name: String,
    pub ssh_cert: String,
    pub tls_cert_pem: String,
    /// This cluster's CAs (`ssh_host_ca` is its own only).
    #[serde(default)]
    pub cas: CertAuthorities,
    /// Each leaf's host CAs apart, so tsh trusts them for that leaf's hosts only.
    #[serde(default)]
    pub leaf_host_cas: Vec<LeafHostCas>,
}

/// One leaf's SSH host CAs in [`LoginResponse`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeafHostCas {
    pub cluster_name: String,
    #[serde(default)]
    pub ssh_host_ca: Vec<String>,
}

/// Body of [`VALIDATE_PATH`] (what a leaf's auth sends).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidateRequest {
    /// The invite token: the credential of this call.
    pub token: Secret<String>,
    pub cluster_name: String,
    /// The leaf's CAs.
    #[serde(default)]
    pub cas: CertAuthorities,
}

/// Answer of [`VALIDATE_PATH`]: the root's name and CAs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidateResponse {
    pub cas: CertAuthorities,
    pub cluster_name: String,
}

/// Answer of [`NODES_PATH`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodesResponse {
    #[serde(default)]
    pub nodes: Vec<NodeInfo>,
}

/// A node as the web API lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    #[serde(default)]
    pub addr: String,
    #[serde(default)]
    pub hostname: String,
    pub id: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Reached through a reverse tunnel (a leaf's node), not at `addr`.
    #[serde(default)]
    pub tunnel: bool,
}

/// Answer of [`SITES_PATH`]: this cluster first, then the leaves.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SitesResponse {
    #[serde(default)]
    pub sites: Vec<SiteInfo>,
}

/// A cluster in [`SitesResponse`]. Reading also takes Teleport's field names
/// (`connection`, `cluster_type`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteInfo {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// RFC 3339, empty when never seen; leaves only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<String>,
    pub name: String,
    /// `online` or `offline`.
    #[serde(default, alias = "connection")]
    pub status: String,
    /// `root` or `leaf`.
    #[serde(default, rename = "type", alias = "cluster_type")]
    pub cluster_type: String,
}

/// Body of [`AUTHORIZE_PATH`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizeRequest {
    /// The SSH certificate (OpenSSH line) asked about.
    pub ssh_cert: String,
    pub login: String,
    #[serde(default)]
    pub node: String,
    /// Empty for the proxy's own cluster.
    #[serde(default)]
    pub cluster: String,
}

/// Answer of [`AUTHORIZE_PATH`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizeResponse {
    #[serde(default)]
    pub allowed: bool,
    #[serde(default)]
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `value` serializes to exactly `json` and `json` reads back as `value`.
    fn pinned<T>(value: &T, json: &str)
    where
        T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        assert_eq!(serde_json::to_string(value).unwrap(), json);
        assert_eq!(&serde_json::from_str::<T>(json).unwrap(), value);
    }

    fn cas() -> CertAuthorities {
        CertAuthorities { tls_ca_pem: vec!["tls".into()], ssh_user_ca: vec!["user".into()], ssh_host_ca: vec!["host".into()] }
    }

    const CAS: &str = r#"{"tls_ca_pem":["tls"],"ssh_user_ca":["user"],"ssh_host_ca":["host"]}"#;

    #[test]
    fn error_and_ping() {
        pinned(&ErrorBody { error: "nope".into() }, r#"{"error":"nope"}"#);
        let ping = PingResponse {
            cluster_name: "root".into(),
            proxy: PingProxy {
                ssh: PingSsh {
                    public_addr: "p:3080".into(),
                    ssh_public_addr: "p:3023".into(),
                    ssh_tunnel_public_addr: "p:3024".into(),
                },
                tls_routing_enabled: false,
            },
            server_version: "0.1.0".into(),
        };
        pinned(
            &ping,
            r#"{"cluster_name":"root","proxy":{"ssh":{"public_addr":"p:3080","ssh_public_addr":"p:3023","ssh_tunnel_public_addr":"p:3024"},"tls_routing_enabled":false},"server_version":"0.1.0"}"#,
        );
        let bare: PingResponse = serde_json::from_str(r#"{"cluster_name":"root"}"#).unwrap();
        assert_eq!(bare, PingResponse { cluster_name: "root".into(), ..Default::default() });
    }

    #[test]
    fn login() {
        let req = LoginRequest {
            user: "alice".into(),
            password: Secret::new("hunter2".into()),
            ssh_pub_key: "ssh-ed25519 AAAA".into(),
            tls_pub_key: "AQID".into(),
            ttl_seconds: 3600,
            cluster: String::new(),
        };
        pinned(
            &req,
            r#"{"user":"alice","password":"hunter2","ssh_pub_key":"ssh-ed25519 AAAA","tls_pub_key":"AQID","ttl_seconds":3600,"cluster":""}"#,
        );
        assert!(!format!("{req:?}").contains("hunter2"), "{req:?}");
        let short: LoginRequest = serde_json::from_str(r#"{"user":"a","password":"p"}"#).unwrap();
        assert_eq!((short.ttl_seconds, short.tls_pub_key.as_str()), (0, ""));
        let e = serde_json::from_str::<LoginRequest>(r#"{"password":"x"}"#).unwrap_err().to_string();
        assert!(e.contains("missing field `user`"), "{e}");

        let resp = LoginResponse {
            username: "alice".into(),
            cluster_name: "root".into(),
            ssh_cert: "ssh-cert".into(),
            tls_cert_pem: "tls-cert".into(),
            cas: cas(),
            leaf_host_cas: vec![LeafHostCas { cluster_name: "leaf".into(), ssh_host_ca: vec!["leaf-host".into()] }],
        };
        pinned(
            &resp,
            &format!(
                r#"{{"username":"alice","cluster_name":"root","ssh_cert":"ssh-cert","tls_cert_pem":"tls-cert","cas":{CAS},"leaf_host_cas":[{{"cluster_name":"leaf","ssh_host_ca":["leaf-host"]}}]}}"#
            ),
        );
    }

    #[test]
    fn trusted_cluster_validation() {
        let req = ValidateRequest { token: Secret::new("tok".into()), cluster_name: "leaf".into(), cas: cas() };
        pinned(&req, &format!(r#"{{"token":"tok","cluster_name":"leaf","cas":{CAS}}}"#));
        assert!(!format!("{req:?}").contains("tok\""), "{req:?}");
        let no_cas: ValidateRequest = serde_json::from_str(r#"{"token":"t","cluster_name":"leaf"}"#).unwrap();
        assert_eq!(no_cas.cas, CertAuthorities::default());
        let partial: CertAuthorities = serde_json::from_str(r#"{"tls_ca_pem":["x"]}"#).unwrap();
        assert!(partial.ssh_user_ca.is_empty() && partial.ssh_host_ca.is_empty());

        let resp = ValidateResponse { cas: cas(), cluster_name: "root".into() };
        pinned(&resp, &format!(r#"{{"cas":{CAS},"cluster_name":"root"}}"#));
    }

    #[test]
    fn nodes_and_sites() {
        let nodes = NodesResponse {
            nodes: vec![NodeInfo {
                addr: "127.0.0.1:3022".into(),
                hostname: "node-1".into(),
                id: "id-1".into(),
                labels: BTreeMap::from([("env".into(), "test".into())]),
                tunnel: false,
            }],
        };
        pinned(&nodes, r#"{"nodes":[{"addr":"127.0.0.1:3022","hostname":"node-1","id":"id-1","labels":{"env":"test"},"tunnel":false}]}"#);

        let sites = SitesResponse {
            sites: vec![
                SiteInfo { name: "root".into(), status: "online".into(), cluster_type: "root".into(), ..Default::default() },
                SiteInfo {
                    labels: BTreeMap::from([("env".into(), "demo".into())]),
                    last_heartbeat: Some("2026-01-02T03:04:05Z".into()),
                    name: "leaf".into(),
                    status: "offline".into(),
                    cluster_type: "leaf".into(),
                },
            ],
        };
        pinned(
            &sites,
            r#"{"sites":[{"labels":{},"name":"root","status":"online","type":"root"},{"labels":{"env":"demo"},"last_heartbeat":"2026-01-02T03:04:05Z","name":"leaf","status":"offline","type":"leaf"}]}"#,
        );
        // Teleport's names read too.
        let teleport: SiteInfo = serde_json::from_str(r#"{"name":"leaf","connection":"online","cluster_type":"leaf"}"#).unwrap();
        assert_eq!((teleport.status.as_str(), teleport.cluster_type.as_str()), ("online", "leaf"));
    }

    #[test]
    fn authorize() {
        let req = AuthorizeRequest {
            ssh_cert: "cert".into(),
            login: "root".into(),
            node: "node-1".into(),
            cluster: "leaf".into(),
        };
        pinned(&req, r#"{"ssh_cert":"cert","login":"root","node":"node-1","cluster":"leaf"}"#);
        let resp = AuthorizeResponse { allowed: false, reason: "no".into() };
        pinned(&resp, r#"{"allowed":false,"reason":"no"}"#);
    }
}
