//! Servers announcing themselves: nodes and proxies, kept with an expiry that heartbeats
//! push forward. Every write here is atomic across auth replicas sharing the backend (name
//! claims and heartbeats are compare-and-swap loops, sweeps compare-and-delete).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use portcullis_proto::auth::HeartbeatRequest;
use portcullis_storage::BackendExt;
use portcullis_types::{HostPort, Node};
use time::OffsetDateTime;

use crate::error::AuthError;
use crate::state::{AuthState, Change, atomic_update, now, to_json};

/// A node missing heartbeats for this long drops out of listings.
pub const SERVER_TTL: Duration = Duration::from_secs(60);
/// A proxy missing heartbeats (every 5 s) for this long drops out of the proxy set agents
/// are told about, so agents stop looking for a proxy that is gone.
pub const PROXY_TTL: Duration = Duration::from_secs(15);

/// Where a proxy's tunnel address is kept on its record.
const TUNNEL_ADDR_LABEL: &str = "portcullis.dev/tunnel_addr";

fn key(kind: &str, id: &str) -> String {
    format!("{kind}/{id}")
}

/// Which host holds a node name: `nodenames/<name>` holds the host id. Node names are
/// unique per cluster; the first live host to announce a name keeps it.
const NAME_PREFIX: &str = "nodenames/";

/// What storing a heartbeat did.
enum Stored {
    /// Written; the record it replaced, if any.
    Replaced(Option<Box<Node>>),
    /// Not written: the stored record is from a heartbeat received later (a delayed older
    /// one lost the race, here or on another auth replica).
    Stale,
}

/// What the auth service itself saw of a heartbeat's sender, as opposed to what the
/// request claims: these decide where the node is dialled and what it may be called.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// The IP address the call came from; `None` when the transport did not say.
    pub peer_ip: Option<IpAddr>,
    /// The names the caller's certificate was issued for (its DNS and IP SANs).
    pub cert_names: Vec<String>,
}

impl Observed {
    pub fn new(peer_ip: Option<IpAddr>, cert_names: Vec<String>) -> Self {
        Observed { peer_ip, cert_names }
    }
}

impl AuthState {
    /// Records a heartbeat from a node or proxy. A node's name must be the one its
    /// certificate was issued for and not held by another live host; its address is the one
    /// it connects from (see [`node_addr`]). Returns warnings for the node to log.
    pub fn heartbeat(&self, req: &HeartbeatRequest, seen: &Observed) -> Result<Vec<String>, AuthError> {
        self.heartbeat_at(req, seen, now())
    }

    /// [`Self::heartbeat`] received at `received`: the record's expiry counts from then, and
    /// a record from a heartbeat received later is never replaced by this one.
    pub fn heartbeat_at(
        &self,
        req: &HeartbeatRequest,
        seen: &Observed,
        received: OffsetDateTime,
    ) -> Result<Vec<String>, AuthError> {
        let prefix = match req.kind.as_str() {
            "node" => "nodes",
            "proxy" => "proxies",
            other => return Err(AuthError::bad(format!("unknown server kind {other:?}"))),
        };
        let mut warnings = Vec::new();
        let addr = if req.kind == "node" {
            check_node_name(&req.hostname, &req.host_id, &seen.cert_names)?;
            let peer = seen.peer_ip.ok_or_else(|| {
                AuthError::bad(format!(
                    "cannot tell which address host {} connects from, so it cannot be announced as a node",
                    req.host_id
                ))
            })?;
            let (addr, warning) = node_addr(&req.addr, peer, &system_resolver)?;
            if let Some(w) = warning {
                tracing::warn!(host_id = %req.host_id, node = %req.hostname, "{w}");
                warnings.push(w);
            }
            addr
        } else {
            req.addr.clone()
        };
        let labels: BTreeMap<String, String> = req.labels.clone().into_iter().collect();
        let mut node = Node::new(req.host_id.clone(), req.hostname.clone(), addr, labels);
        node.spec.version = req.version.clone();
        if req.kind == "proxy" {
            node.metadata.labels.insert(TUNNEL_ADDR_LABEL.into(), req.tunnel_addr.clone());
        }
        let ttl = if req.kind == "proxy" { PROXY_TTL } else { SERVER_TTL };
        node.metadata.expires = Some(received + time::Duration::try_from(ttl).unwrap_or(time::Duration::MINUTE));
        if req.kind == "node" {
            self.claim_node_name(&req.hostname, &req.host_id)?;
        }
        match self.store_newer(&key(prefix, &req.host_id), &node)? {
            // A renamed node frees the name it held before.
            Stored::Replaced(Some(old)) if req.kind == "node" && old.spec.hostname != req.hostname => {
                self.release_node_name(&old.spec.hostname, &req.host_id)?;
            }
            Stored::Replaced(_) => {}
            Stored::Stale => {
                tracing::debug!(host_id = %req.host_id, "a newer heartbeat is already recorded; this older one is dropped");
            }
        }
        Ok(warnings)
    }

    /// Writes a server record unless the stored one expires no earlier (it came from a
    /// heartbeat received later), atomically: of two heartbeats handled at once, here or on
    /// another auth replica, the newer one always ends up stored.
    fn store_newer(&self, key: &str, node: &Node) -> Result<Stored, AuthError> {
        let bytes = to_json(node)?;
        atomic_update(self.backend.as_ref(), key, |current| {
            let old = current.and_then(|c| serde_json::from_slice::<Node>(c).ok());
            let newer_stored = old
                .as_ref()
                .and_then(|o| o.metadata.expires)
                .is_some_and(|stored| node.metadata.expires.is_none_or(|new| stored >= new));
            Ok(if newer_stored { Change::Keep(Stored::Stale) } else { Change::Put(bytes.clone(), Stored::Replaced(old.map(Box::new))) })
        })
    }

    /// Takes `name` for `host_id` unless another live host holds it, atomically: of many
    /// hosts claiming one free name at once, on any auth replicas, exactly one gets it.
    fn claim_node_name(&self, name: &str, host_id: &str) -> Result<(), AuthError> {
        // A name held by a node id (another host's uuid) is that host's too.
        if name != host_id && self.is_live_node(name)? {
            return Err(AuthError::AlreadyExists(format!(
                "node name {name:?} is the id of another live host; host {host_id} may not announce it"
            )));
        }
        let name_key = format!("{NAME_PREFIX}{name}");
        atomic_update(self.backend.as_ref(), &name_key, |current| {
            match current.map(|v| String::from_utf8_lossy(v).into_owned()) {
                Some(h) if h == host_id => Ok(Change::Keep(())),
                Some(h) if self.holds_names(&h)? => Err(AuthError::AlreadyExists(format!(
                    "node name {name:?} is already held by host {h}; host {host_id} may not announce it \
                     (stop the other host, or join this one under another name)"
                ))),
                _ => Ok(Change::Put(host_id.as_bytes().to_vec(), ())),
            }
        })
    }

    /// Whether a name claimed by `holder` stays its: while its heartbeats are current, and
    /// while it has no record yet (its first heartbeat claimed the name and is writing the
    /// record now; a claim its host never followed up is freed by the sweep).
    fn holds_names(&self, holder: &str) -> Result<bool, AuthError> {
        let now = now();
        Ok(self.get_node(holder)?.is_none_or(|n| n.metadata.expires.is_none_or(|e| e > now)))
    }

    /// Frees `name` if `host_id` holds it.
    fn release_node_name(&self, name: &str, host_id: &str) -> Result<(), AuthError> {
        self.backend.compare_and_delete(&format!("{NAME_PREFIX}{name}"), host_id.as_bytes())?;
        Ok(())
    }

    fn is_live_node(&self, id: &str) -> Result<bool, AuthError> {
        let now = now();
        Ok(self.get_node(id)?.is_some_and(|n| n.metadata.expires.is_none_or(|e| e > now)))
    }

    /// Who holds each node name.
    fn name_holders(&self) -> Result<HashMap<String, String>, AuthError> {
        Ok(self
            .backend
            .list(NAME_PREFIX)?
            .into_iter()
            .map(|(k, v)| {
                let name = k.strip_prefix(NAME_PREFIX).unwrap_or(&k).to_string();
                (name, String::from_utf8_lossy(&v).into_owned())
            })
            .collect())
    }

    /// Nodes whose heartbeats are current. A node announcing a name another live host
    /// holds (records from before names were claimed) is left out, so it can never shadow
    /// the real one.
    pub fn list_nodes(&self) -> Result<Vec<Node>, AuthError> {
        let now = now();
        let live: Vec<Node> = self
            .backend
            .list_json::<Node>("nodes/")?
            .into_iter()
            .filter(|n| n.metadata.expires.is_none_or(|e| e > now))
            .collect();
        let holders = self.name_holders()?;
        let live_ids: std::collections::HashSet<String> = live.iter().map(|n| n.metadata.name.clone()).collect();
        Ok(live
            .into_iter()
            .filter(|n| {
                holders
                    .get(&n.spec.hostname)
                    .is_none_or(|h| *h == n.metadata.name || !live_ids.contains(h))
            })
            .collect())
    }

    /// A node record, live or not (a node asking about itself is alive even if its last
    /// heartbeat was missed).
    pub fn get_node(&self, id: &str) -> Result<Option<Node>, AuthError> {
        Ok(self.backend.get_json(&key("nodes", id))?)
    }

    pub fn put_node(&self, node: &Node) -> Result<(), AuthError> {
        Ok(self.backend.put_json(&key("nodes", &node.metadata.name), node)?)
    }

    pub fn delete_node(&self, id: &str) -> Result<bool, AuthError> {
        let existed = self.backend.delete(&key("nodes", id))?;
        // Every name this host holds (normally one; a renamed host's old one too).
        for (k, v) in self.backend.list(NAME_PREFIX)? {
            if v == id.as_bytes() {
                self.backend.compare_and_delete(&k, &v)?;
            }
        }
        Ok(existed)
    }

    /// Finds the node `host` names: its id, its name, or its address. Only registered
    /// nodes are ever returned, so a proxy cannot be made to dial anything else.
    pub fn resolve_node(&self, host: &str, port: u32) -> Result<Node, AuthError> {
        Ok(portcullis_access::resolve_node(&self.list_nodes()?, &self.cluster_name, host, port)?)
    }

    /// Proxies whose heartbeats are current, with the tunnel address agents should dial.
    pub fn live_proxies(&self) -> Result<Vec<portcullis_proto::auth::Proxy>, AuthError> {
        let now = now();
        Ok(self
            .backend
            .list_json::<Node>("proxies/")?
            .into_iter()
            .filter(|n| n.metadata.expires.is_none_or(|e| e > now))
            .map(|n| portcullis_proto::auth::Proxy {
                tunnel_addr: n.metadata.labels.get(TUNNEL_ADDR_LABEL).cloned().unwrap_or_default(),
                id: n.metadata.name,
            })
            .collect())
    }

    /// Drops expired nodes, proxies and tokens, and name claims no host followed up. Each
    /// record goes only if it is still the expired one read (compare-and-delete): a
    /// heartbeat that refreshed it meanwhile, through any auth replica, keeps it.
    pub fn sweep_expired(&self) -> Result<usize, AuthError> {
        let now = now();
        let mut removed = 0;
        for prefix in ["nodes/", "proxies/"] {
            for (k, v) in self.backend.list(prefix)? {
                if let Ok(n) = serde_json::from_slice::<Node>(&v) {
                    // Keep a grace period so a briefly partitioned node is not forgotten.
                    if n.metadata.expires.is_some_and(|e| e + time::Duration::minutes(10) < now)
                        && self.backend.compare_and_delete(&k, &v)?
                    {
                        if prefix == "nodes/" {
                            self.release_node_name(&n.spec.hostname, &n.metadata.name)?;
                        }
                        removed += 1;
                    }
                }
            }
        }
        for (k, v) in self.backend.list(NAME_PREFIX)? {
            let holder = String::from_utf8_lossy(&v).into_owned();
            if self.get_node(&holder)?.is_none() && self.backend.compare_and_delete(&k, &v)? {
                removed += 1;
            }
        }
        for (k, v) in self.backend.list("tokens/")? {
            let expired = serde_json::from_slice::<portcullis_types::ProvisionToken>(&v).is_ok_and(|t| t.is_expired(now));
            if expired && self.backend.compare_and_delete(&k, &v)? {
                removed += 1;
            }
        }
        // Failed-login records of any name a guesser tried (lockout.rs).
        removed += self.sweep_login_attempts()?;
        Ok(removed)
    }
}

/// Refuses a node name the host's certificate was not issued for: the join put the node
/// name (and the host id) in the certificate, so a host cannot announce another's name.
fn check_node_name(name: &str, host_id: &str, cert_names: &[String]) -> Result<(), AuthError> {
    if name.is_empty() {
        return Err(AuthError::bad(format!("host {host_id} announced an empty node name")));
    }
    if cert_names.iter().any(|n| n == name) {
        return Ok(());
    }
    let held: Vec<&str> = cert_names.iter().map(String::as_str).filter(|n| *n != host_id).collect();
    Err(AuthError::denied(format!(
        "node name {name:?} is not the name host {host_id} joined with ({}); announce that name, \
         or join again with a new token to take another",
        if held.is_empty() { "its certificate names none".to_string() } else { format!("its certificate says {}", held.join(", ")) }
    )))
}

/// Looks a host name up in the system resolver.
fn system_resolver(host: &str, port: u16) -> Vec<IpAddr> {
    (host, port).to_socket_addrs().map(|a| a.map(|s| s.ip()).collect()).unwrap_or_default()
}

/// The address a node is dialled at: `peer` (where its heartbeat came from) with the port it
/// announces. An announced host (its `ssh_service.public_addr`) is kept only when it is, or
/// resolves to, `peer`; otherwise it is ignored with a warning (so a node behind NAT stays
/// reachable), never believed: a node must not choose what the proxy or agent dials.
pub fn node_addr(
    announced: &str,
    peer: IpAddr,
    resolve: &dyn Fn(&str, u16) -> Vec<IpAddr>,
) -> Result<(String, Option<String>), AuthError> {
    let peer = peer.to_canonical();
    let parsed = announced.parse::<HostPort>().ok();
    let host_port = parsed.as_ref().and_then(|a| a.port().filter(|p| *p != 0).map(|p| (a.host(), p)));
    let (host, port) = host_port.ok_or_else(|| {
        AuthError::bad(format!("node address {announced:?} is not HOST:PORT with a port from 1 to 65535"))
    })?;
    let observed = SocketAddr::new(peer, port).to_string();
    let ignored = |why: &str| {
        format!(
            "public address {announced:?} was ignored: {why}, not {peer}, the address this node connects \
             to the auth service from; it is dialled at {observed} (set ssh_service.public_addr to a name \
             or address of this host)"
        )
    };
    match host.parse::<IpAddr>() {
        Ok(ip) if ip.to_canonical() == peer => Ok((observed, None)),
        // What a node announces when it has no public_addr (wildcard or loopback bind).
        Ok(ip) if ip.is_unspecified() || ip.is_loopback() => Ok((observed, None)),
        Ok(_) => {
            let warning = ignored("it is another address");
            Ok((observed, Some(warning)))
        }
        Err(_) => {
            let ips = resolve(host, port);
            if ips.iter().any(|ip| ip.to_canonical() == peer) {
                return Ok((announced.to_string(), None));
            }
            let warning = if ips.is_empty() {
                ignored(&format!("{host} does not resolve"))
            } else {
                ignored(&format!("{host} resolves elsewhere"))
            };
            Ok((observed, Some(warning)))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::sync::Arc;

    use super::*;

    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn state(dir: &std::path::Path) -> AuthState {
        let yaml = format!("teleport:\n  data_dir: {}\nauth_service:\n  cluster_name: leaf\n", dir.join("auth").display());
        let file = portcullis_config::FileConfig::from_yaml(&yaml).unwrap();
        let settings = portcullis_config::AuthSettings::from_parts(&file, &Default::default()).unwrap();
        AuthState::open(&settings, Arc::new(portcullis_storage::MemoryBackend::new())).unwrap()
    }

    fn beat(host_id: &str, hostname: &str, addr: &str) -> HeartbeatRequest {
        HeartbeatRequest {
            kind: "node".into(),
            host_id: host_id.into(),
            hostname: hostname.into(),
            addr: addr.into(),
            ..Default::default()
        }
    }

    /// A host whose certificate was issued for node name `name`, calling from `ip`.
    fn seen(ip: IpAddr, name: &str, host_id: &str) -> Observed {
        Observed::new(Some(ip), vec![name.to_string(), host_id.to_string()])
    }

    fn no_dns(_: &str, _: u16) -> Vec<IpAddr> {
        Vec::new()
    }

    #[test]
    fn the_observed_address_wins_over_the_announced_one() {
        let dir = tempfile::tempdir().unwrap();
        let s = state(dir.path());
        let peer: IpAddr = "10.1.2.3".parse().unwrap();
        // An internal service announced as the node's address: dialled at the node's own IP.
        let warnings = s.heartbeat(&beat("h1", "evil-node", "127.0.0.1:3025"), &seen(peer, "evil-node", "h1")).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(s.get_node("h1").unwrap().unwrap().spec.addr, "10.1.2.3:3025");
        let warnings = s.heartbeat(&beat("h1", "evil-node", "192.168.7.7:8080"), &seen(peer, "evil-node", "h1")).unwrap();
        assert_eq!(s.get_node("h1").unwrap().unwrap().spec.addr, "10.1.2.3:8080");
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("public address \"192.168.7.7:8080\" was ignored"), "{}", warnings[0]);
        assert!(warnings[0].contains("dialled at 10.1.2.3:8080"), "{}", warnings[0]);
        // The node's own address stays as it is; IPv4-mapped peers count as IPv4.
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert!(s.heartbeat(&beat("h1", "evil-node", "10.1.2.3:3022"), &seen(mapped, "evil-node", "h1")).unwrap().is_empty());
        assert_eq!(s.resolve_node("evil-node", 0).unwrap().spec.addr, "10.1.2.3:3022");
        // Where it came from must be known.
        let blind = Observed::new(None, vec!["evil-node".into()]);
        let e = s.heartbeat(&beat("h1", "evil-node", "10.1.2.3:3022"), &blind).unwrap_err().to_string();
        assert!(e.contains("cannot tell which address host h1 connects from"), "{e}");
    }

    #[test]
    fn a_public_addr_is_kept_only_when_it_leads_to_the_node() {
        let peer: IpAddr = "10.1.2.3".parse().unwrap();
        let resolves_to_peer = |_: &str, _: u16| vec![IpAddr::from([10, 1, 2, 3])];
        let resolves_elsewhere = |_: &str, _: u16| vec![IpAddr::from([10, 9, 9, 9])];
        assert_eq!(node_addr("db.example.com:3022", peer, &resolves_to_peer).unwrap(), ("db.example.com:3022".into(), None));
        let (addr, warning) = node_addr("auth.internal:3025", peer, &resolves_elsewhere).unwrap();
        assert_eq!(addr, "10.1.2.3:3025");
        let warning = warning.unwrap();
        assert!(
            warning.starts_with("public address \"auth.internal:3025\" was ignored: auth.internal resolves elsewhere, not 10.1.2.3"),
            "{warning}"
        );
        let (addr, warning) = node_addr("nowhere.invalid:3022", peer, &no_dns).unwrap();
        assert_eq!(addr, "10.1.2.3:3022");
        assert!(warning.unwrap().contains("nowhere.invalid does not resolve"));
        assert_eq!(node_addr("[::1]:3022", "::1".parse().unwrap(), &no_dns).unwrap().0, "[::1]:3022");
        for bad in ["", "host", "host:0", "host:x", "1:2:3", ":22"] {
            let e = node_addr(bad, peer, &no_dns).unwrap_err().to_string();
            assert!(e.contains("is not HOST:PORT"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_node_name_is_the_one_the_certificate_was_issued_for() {
        let dir = tempfile::tempdir().unwrap();
        let s = state(dir.path());
        let e = s.heartbeat(&beat("h2", "db-1", "127.0.0.1:3022"), &seen(LOCAL, "web-7", "h2")).unwrap_err();
        assert!(matches!(e, AuthError::AccessDenied(_)));
        assert_eq!(
            e.to_string(),
            "node name \"db-1\" is not the name host h2 joined with (its certificate says web-7); announce that \
             name, or join again with a new token to take another"
        );
        assert!(s.get_node("h2").unwrap().is_none());
        // Its own name, or its host id, is fine.
        s.heartbeat(&beat("h2", "web-7", "127.0.0.1:3022"), &seen(LOCAL, "web-7", "h2")).unwrap();
        s.heartbeat(&beat("h2", "h2", "127.0.0.1:3022"), &seen(LOCAL, "web-7", "h2")).unwrap();
    }

    #[test]
    fn a_second_host_cannot_take_a_live_nodes_name() {
        let dir = tempfile::tempdir().unwrap();
        let s = state(dir.path());
        s.heartbeat(&beat("real", "db-1", "127.0.0.1:3022"), &seen(LOCAL, "db-1", "real")).unwrap();
        let e = s.heartbeat(&beat("evil", "db-1", "127.0.0.1:4022"), &seen(LOCAL, "db-1", "evil")).unwrap_err();
        assert!(matches!(e, AuthError::AlreadyExists(_)));
        assert!(e.to_string().starts_with("node name \"db-1\" is already held by host real; host evil may not announce it"), "{e}");
        // The real node stays the one routed to, and alone in listings.
        assert_eq!(s.resolve_node("db-1", 0).unwrap().metadata.name, "real");
        assert_eq!(s.list_nodes().unwrap().len(), 1);
        // Nor may a host take another live host's id as its name.
        let e = s.heartbeat(&beat("evil", "real", "127.0.0.1:4022"), &seen(LOCAL, "real", "evil")).unwrap_err();
        assert!(e.to_string().contains("is the id of another live host"), "{e}");

        // A record written before names were claimed cannot shadow the holder either.
        let mut legacy = s.get_node("real").unwrap().unwrap();
        legacy.metadata.name = "legacy".into();
        legacy.spec.addr = "127.0.0.1:5022".into();
        s.put_node(&legacy).unwrap();
        assert_eq!(s.resolve_node("db-1", 0).unwrap().metadata.name, "real");
        assert_eq!(s.list_nodes().unwrap().iter().map(|n| n.metadata.name.as_str()).collect::<Vec<_>>(), ["real"]);

        // Once the holder is gone (expired, or removed), the name is free again.
        let mut gone = s.get_node("real").unwrap().unwrap();
        gone.metadata.expires = Some(now() - time::Duration::minutes(1));
        s.put_node(&gone).unwrap();
        s.delete_node("legacy").unwrap();
        s.heartbeat(&beat("new", "db-1", "127.0.0.1:4022"), &seen(LOCAL, "db-1", "new")).unwrap();
        assert_eq!(s.resolve_node("db-1", 0).unwrap().metadata.name, "new");
        // A renamed node frees its old name.
        s.heartbeat(&beat("new", "new", "127.0.0.1:4022"), &seen(LOCAL, "db-1", "new")).unwrap();
        s.delete_node("real").unwrap();
        s.heartbeat(&beat("third", "db-1", "127.0.0.1:6022"), &seen(LOCAL, "db-1", "third")).unwrap();
    }
}
