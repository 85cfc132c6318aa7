//! Join tokens: static ones from the config file and dynamic ones with a TTL, and the
//! join call that trades one for an identity.

use std::net::IpAddr;
use std::time::Duration;

use portcullis_pki::ssh::{self, HostCertRequest};
use portcullis_pki::x509::{self, TlsCertRequest};
use portcullis_pki::{random_hex, Secret};
use portcullis_proto::auth::{JoinRequest, JoinResponse};
use portcullis_storage::BackendExt;
use portcullis_types::{HostPort, Node, ProvisionToken, SystemRole};
use serde_json::json;

use crate::error::AuthError;
use crate::state::{AuthState, now};

/// Identities issued to services at join time last this long.
const SERVICE_CERT_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// Dynamic tokens without an explicit TTL expire after this.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(30 * 60);

pub(crate) fn token_key(value: &str) -> String {
    format!("tokens/{value}")
}

/// Constant-time comparison, so a token cannot be guessed byte by byte from timing.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// How long an expired token is kept so that joining with it says "expired".
const EXPIRED_TOKEN_KEPT: std::time::Duration = std::time::Duration::from_secs(10 * 60);

impl AuthState {
    /// Static tokens as resources (never expiring), for `tctl tokens ls`.
    pub fn static_token_resources(&self) -> Vec<ProvisionToken> {
        self.static_tokens
            .iter()
            .map(|t| {
                let roles = t.roles.iter().filter_map(|r| SystemRole::parse(r).ok()).collect();
                ProvisionToken::new(t.value.expose().clone(), roles, None)
            })
            .collect()
    }

    /// All tokens, static and dynamic, expired ones left out.
    pub fn list_tokens(&self) -> Result<Vec<ProvisionToken>, AuthError> {
        let now = now();
        let mut out = self.static_token_resources();
        out.extend(self.backend.list_json::<ProvisionToken>("tokens/")?.into_iter().filter(|t| !t.is_expired(now)));
        Ok(out)
    }

    /// Creates a dynamic token; a value is generated when none is given.
    pub fn create_token(
        &self,
        roles: Vec<SystemRole>,
        ttl: Option<Duration>,
        value: Option<String>,
        labels: std::collections::BTreeMap<String, String>,
    ) -> Result<ProvisionToken, AuthError> {
        if roles.is_empty() {
            return Err(AuthError::bad("a token needs at least one type (--type=node|proxy|trusted_cluster)"));
        }
        let value = match value.filter(|v| !v.trim().is_empty()) {
            Some(v) => v,
            None => random_hex::<16>()?,
        };
        let ttl = ttl.filter(|t| !t.is_zero()).unwrap_or(DEFAULT_TOKEN_TTL);
        let expires = now() + time::Duration::try_from(ttl).map_err(|e| AuthError::bad(e.to_string()))?;
        let mut token = ProvisionToken::new(value.clone(), roles, Some(expires));
        token.metadata.labels = labels;
        token.validate()?;
        self.put_token(&token)?;
        self.audit.emit(
            "join_token.create",
            json!({"roles": token.type_names(), "expires": expires.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(), "success": true}),
        );
        Ok(token)
    }

    /// Stores a token. One that expires is stored with a TTL a little past its expiry, so the
    /// backend drops it on every replica (the sweep is only a fallback) while a late joiner
    /// still hears "expired" rather than "not recognised" for a while.
    pub fn put_token(&self, token: &ProvisionToken) -> Result<(), AuthError> {
        let key = token_key(token.token());
        let bytes = crate::state::to_json(token)?;
        // An already expired one (`tctl create` of an old token) is stored as given: it
        // joins nothing, and the sweep removes it.
        match token.metadata.expires.map(|e| std::time::Duration::try_from(e - now())) {
            Some(Ok(ttl)) if !ttl.is_zero() => self.backend.put_ttl(&key, &bytes, ttl + EXPIRED_TOKEN_KEPT)?,
            _ => self.backend.put(&key, &bytes)?,
        }
        self.backend.flush()?;
        Ok(())
    }

    pub fn delete_token(&self, value: &str) -> Result<bool, AuthError> {
        if self.static_tokens.iter().any(|t| same(t.value.expose(), value)) {
            return Err(AuthError::bad("static tokens come from auth_service.tokens in the config file; remove them there"));
        }
        Ok(self.backend.delete(&token_key(value))?)
    }

    /// Checks `value` allows joining as one of `wanted`; the error says why not, without
    /// echoing the token.
    pub fn check_token(&self, value: &Secret<String>, wanted: &[SystemRole]) -> Result<Vec<SystemRole>, AuthError> {
        let v = value.expose();
        let roles: Vec<SystemRole> = if let Some(t) = self.static_tokens.iter().find(|t| same(t.value.expose(), v)) {
            t.roles.iter().filter_map(|r| SystemRole::parse(r).ok()).collect()
        } else {
            let t: ProvisionToken = self.backend.get_json(&token_key(v))?.ok_or_else(|| {
                AuthError::denied(format!("the join token is not recognised by cluster {:?}", self.cluster_name))
            })?;
            if t.is_expired(now()) {
                return Err(AuthError::denied("the join token has expired"));
            }
            t.spec.roles.clone()
        };
        if !wanted.iter().any(|w| roles.contains(w)) {
            let have: Vec<&str> = roles.iter().map(|r| r.type_name()).collect();
            let want: Vec<&str> = wanted.iter().map(|r| r.type_name()).collect();
            return Err(AuthError::denied(format!(
                "the join token is for {} and cannot be used to join as {}",
                have.join(","),
                want.join(" or ")
            )));
        }
        Ok(roles)
    }

    /// The join call: a token buys a TLS identity and an SSH host certificate.
    pub fn join(&self, req: &JoinRequest, remote_addr: &str) -> Result<JoinResponse, AuthError> {
        let (wanted, cert_role) = match req.role.as_str() {
            "node" => (vec![SystemRole::Node], SystemRole::Node),
            "proxy" => (vec![SystemRole::Proxy], SystemRole::Proxy),
            // The tunnel agent joins its own (leaf) cluster with a proxy token: it is the
            // leaf's side of the tunnel a proxy would run in Teleport.
            "agent" => (vec![SystemRole::Proxy, SystemRole::Agent], SystemRole::Agent),
            other => return Err(AuthError::bad(format!("cannot join as {other:?}: expected node, proxy or agent"))),
        };
        let token = Secret::new(req.token.clone());
        if let Err(e) = self.check_token(&token, &wanted) {
            self.audit.emit(
                "join",
                json!({"success": false, "role": req.role, "nodename": req.nodename, "error": e.to_string(), "remote_addr": remote_addr}),
            );
            return Err(e);
        }
        let host_id = if uuid::Uuid::parse_str(&req.host_id).is_ok() {
            req.host_id.to_ascii_lowercase()
        } else {
            uuid::Uuid::new_v4().to_string()
        };
        // The token buys the names this host may hold and nothing more (see `check_names`).
        let principals = match self.check_names(req, cert_role, &host_id, remote_addr) {
            Ok(p) => p,
            Err(e) => {
                self.audit.emit(
                    "join",
                    json!({"success": false, "role": req.role, "nodename": req.nodename, "error": e.to_string(), "remote_addr": remote_addr}),
                );
                return Err(e);
            }
        };
        let ssh_key = ssh::parse_public_key(&req.ssh_public_key)
            .map_err(|e| AuthError::bad(format!("bad SSH host key: {e}")))?;
        let host_cert = self.host_ca.sign_host_cert(&HostCertRequest {
            public_key: ssh_key,
            host_id: host_id.clone(),
            nodename: req.nodename.clone(),
            cluster_name: self.cluster_name.clone(),
            role: cert_role.to_string(),
            additional_principals: principals,
            ttl: SERVICE_CERT_TTL,
        })?;
        // The role's fixed names are added here, by auth, and never taken from the caller.
        let mut dns_names = vec![req.nodename.clone(), host_id.clone()];
        if cert_role == SystemRole::Proxy {
            dns_names.push(portcullis_pki::x509::PROXY_SERVER_NAME.into());
        }
        let tls_cert_pem = self.issue_tls(TlsCertRequest {
            public_key_der: req.tls_public_key.clone(),
            name: host_id.clone(),
            system_roles: vec![cert_role.to_string()],
            dns_names,
            ttl: SERVICE_CERT_TTL,
            ..Default::default()
        })?;
        self.audit.emit(
            "join",
            json!({"success": true, "role": req.role, "host_id": host_id, "nodename": req.nodename, "remote_addr": remote_addr}),
        );
        Ok(JoinResponse {
            cluster_name: self.cluster_name.clone(),
            host_id,
            tls_cert_pem,
            ssh_host_cert: host_cert.to_openssh().map_err(portcullis_pki::PkiError::from)?,
            cas: Some(self.cert_authorities()?),
        })
    }
}

/// What to do about a refused node name.
const HINT: &str = " (set teleport.nodename or --nodename to this host's own name)";

/// A live host's record, as far as the names it holds go.
struct Holder {
    /// `node` or `proxy`.
    kind: &'static str,
    host_id: String,
    nodename: String,
    /// The host part of the address it announced (or auth observed).
    addr_host: String,
}

impl Holder {
    /// What to call it in an error.
    fn describe(&self) -> String {
        format!("{} {:?} (host id {})", self.kind, self.nodename, self.host_id)
    }
}

/// Why a name may not be used, or `None` when it is a DNS-label-ish name: dot-separated
/// labels of letters, digits, `-` and `_`, 1 to 63 characters each and 253 in all, not
/// starting or ending with `-`, and not all digits (which some resolvers read as an address).
fn malformed(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("it is empty");
    }
    if name.len() > 253 {
        return Some("it is longer than 253 characters");
    }
    let labels: Vec<&str> = name.split('.').collect();
    for l in &labels {
        if l.is_empty() {
            return Some("it has an empty label (a leading, trailing or double dot)");
        }
        if l.len() > 63 {
            return Some("a label is longer than 63 characters");
        }
        if !l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Some("only letters, digits, '-', '_' and '.' are allowed");
        }
        if l.starts_with('-') || l.ends_with('-') {
            return Some("a label may not start or end with '-'");
        }
    }
    if labels.iter().all(|l| l.chars().all(|c| c.is_ascii_digit())) {
        return Some("it looks like an IP address");
    }
    None
}

/// Loopback names and addresses: they name the machine a client runs on, so every host
/// may list them (a node bound to loopback does) without speaking for any other host.
fn is_loopback_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n == "localhost" || n.ends_with(".localhost") || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl AuthState {
    /// Live nodes and proxies: the hosts whose names a joining host may not take.
    fn live_holders(&self) -> Result<Vec<Holder>, AuthError> {
        let now = now();
        let mut out = Vec::new();
        for (prefix, kind) in [("nodes/", "node"), ("proxies/", "proxy")] {
            for n in self.backend.list_json::<Node>(prefix)? {
                if n.metadata.expires.is_none_or(|e| e > now) {
                    out.push(Holder {
                        kind,
                        host_id: n.metadata.name.clone(),
                        nodename: n.spec.hostname.clone(),
                        addr_host: addr_host(&n.spec.addr),
                    });
                }
            }
        }
        Ok(out)
    }

    /// Checks the names a join asks for and returns the extra SSH principals to sign.
    ///
    /// The node name must be a DNS-label-ish name, not an IP address, not `localhost`, not a
    /// fixed server name or under their domain, not the cluster name, and not a name or id
    /// another live host holds. Additional principals follow the same rules, except that
    /// IP addresses are allowed (a host's own address) and loopback names too; an address a
    /// live node is dialled at only when the joining host connects from it as well (the same
    /// machine, or hosts behind one NAT address), and the cluster's name for a proxy. The
    /// host id may be one a live host holds only when it is that host joining again (same
    /// role and node name).
    fn check_names(
        &self,
        req: &JoinRequest,
        cert_role: SystemRole,
        host_id: &str,
        remote_addr: &str,
    ) -> Result<Vec<String>, AuthError> {
        let cluster = self.cluster_name.to_ascii_lowercase();
        let refuse = |what: &str, name: &str, why: &str| {
            AuthError::denied(format!("cannot join as {what} {name:?}: {why}"))
        };
        // A proxy is the cluster's front door: users often reach it by the cluster's name, so
        // it may carry that name as a principal; no other host may.
        let cluster_name_ok = |principal: bool| principal && cert_role == SystemRole::Proxy;
        // Users trust each leaf's host CA for `*.<leaf>` (tsh's known_hosts): a host of this
        // cluster named under a leaf's name could be vouched for by that leaf's CA.
        let leaves: Vec<String> =
            self.list_remote_clusters()?.into_iter().map(|rc| rc.metadata.name.to_ascii_lowercase()).collect();
        let reserved = |name: &str, principal: bool| -> Option<String> {
            let n = name.trim_end_matches('.').to_ascii_lowercase();
            if let Some(leaf) = leaves.iter().find(|l| n == **l || n.ends_with(&format!(".{l}"))) {
                return Some(format!(
                    "it lies under the name of leaf cluster {leaf:?}, whose host CA users trust for *.{leaf}"
                ));
            }
            if x509::is_reserved_server_name(&n) {
                Some(format!(
                    "names under {} are reserved for the cluster's own services ({} is the auth service's name)",
                    x509::RESERVED_DOMAIN,
                    x509::AUTH_SERVER_NAME
                ))
            } else if n == cluster && !cluster_name_ok(principal) {
                Some("it is the cluster's name".into())
            } else {
                None
            }
        };

        let nodename = req.nodename.as_str();
        let what = "node name";
        if nodename.is_empty() {
            return Err(refuse(what, nodename, &format!("it is empty{HINT}")));
        }
        if nodename.parse::<IpAddr>().is_ok() {
            return Err(refuse(what, nodename, &format!("an IP address cannot be a node name{HINT}")));
        }
        if let Some(why) = malformed(nodename) {
            return Err(refuse(what, nodename, &format!("it is not a valid host name: {why}{HINT}")));
        }
        if is_loopback_name(nodename) {
            return Err(refuse(what, nodename, &format!("localhost names every machine, so it cannot name one host{HINT}")));
        }
        if let Some(why) = reserved(nodename, false) {
            return Err(refuse(what, nodename, &format!("{why}{HINT}")));
        }

        let holders = self.live_holders()?;
        // Re-join of a live host id: allowed only as that same host.
        let kind = if cert_role == SystemRole::Proxy { "proxy" } else { "node" };
        if let Some(h) = holders.iter().find(|h| h.host_id.eq_ignore_ascii_case(host_id))
            && (cert_role == SystemRole::Agent || h.kind != kind || !h.nodename.eq_ignore_ascii_case(nodename))
        {
            return Err(refuse(
                "host id",
                host_id,
                &format!("it belongs to live {}; a new host joins with a new id", h.describe()),
            ));
        }
        // Every name a host is known by: its id and node name, bare and under the cluster's
        // name (the SSH host certificate carries both forms).
        let forms = |n: &str| [n.to_ascii_lowercase(), format!("{}.{cluster}", n.to_ascii_lowercase())];
        let from: Option<IpAddr> = addr_host(remote_addr).parse::<IpAddr>().ok().map(|ip| ip.to_canonical());
        let held_by = |name: &str| -> Option<&Holder> {
            let n = name.trim_end_matches('.').to_ascii_lowercase();
            let ip = n.parse::<IpAddr>().ok().map(|ip| ip.to_canonical());
            // An agent may share its host (and so its host name) with a proxy: both join with
            // proxy tokens, and the agent serves nothing under that name.
            let peers = |h: &&Holder| cert_role == SystemRole::Agent && h.kind == "proxy";
            holders.iter().filter(|h| !h.host_id.eq_ignore_ascii_case(host_id) && !peers(h)).find(|h| {
                forms(&h.host_id).contains(&n)
                    || (!h.nodename.is_empty() && forms(&h.nodename).contains(&n))
                    || (h.kind == "node"
                        && ip.is_some()
                        && ip != from
                        && h.addr_host.parse::<IpAddr>().ok().map(|a| a.to_canonical()) == ip)
            })
        };
        for n in forms(nodename) {
            if let Some(h) = held_by(&n) {
                return Err(refuse(
                    what,
                    nodename,
                    &format!("it is held by live {}; choose another name or stop that host first", h.describe()),
                ));
            }
        }

        let mut principals = Vec::new();
        let what = "additional principal";
        for p in &req.additional_principals {
            let p = p.trim();
            if p.is_empty() {
                continue;
            }
            match p.parse::<IpAddr>() {
                Ok(ip) if ip.is_unspecified() || ip.is_multicast() => {
                    return Err(refuse(what, p, "it is not the address of any one host"));
                }
                Ok(_) => {}
                Err(_) => {
                    if let Some(why) = malformed(p) {
                        return Err(refuse(what, p, &format!("it is not a valid host name or IP address: {why}")));
                    }
                    if let Some(why) = reserved(p, true) {
                        return Err(refuse(what, p, &why));
                    }
                }
            }
            if !is_loopback_name(p)
                && let Some(h) = held_by(p)
            {
                return Err(refuse(what, p, &format!("it names live {}, not this host", h.describe())));
            }
            if !principals.iter().any(|q: &String| q.eq_ignore_ascii_case(p)) {
                principals.push(p.to_string());
            }
        }
        Ok(principals)
    }
}

/// The host part of `host:port` (or of a bare host), brackets removed; empty when `addr` is
/// not an address (it is only compared with IP addresses).
fn addr_host(addr: &str) -> String {
    addr.parse::<HostPort>().map(|a| a.host().to_string()).unwrap_or_default()
}
