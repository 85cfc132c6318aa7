//! Trusted clusters. Root side: validating a leaf's join, remote-cluster records, leaf CAs,
//! tunnel status. Leaf side: the trusted_cluster resource and the root's CAs.

use std::collections::BTreeMap;
use std::time::Duration;

use portcullis_proto::auth::{
    CertAuthorities, ClusterCa, ClusterHostCas, ListRemoteClustersResponse, RemoteCluster as PbRemoteCluster,
    TrustedClusterTarget, ValidateTrustedClusterRequest, ValidateTrustedClusterResponse,
};
use portcullis_storage::BackendExt;
use portcullis_types::{AccessChecker, RemoteCluster, SystemRole, TrustedCluster};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::AuthError;
use crate::state::{AuthState, Change, atomic_update, create_json, now, to_json};

/// The exact text a leaf sees when its token is refused (Teleport's, which guides quote).
pub const TOKEN_REJECTED: &str = "access denied: the cluster token has been rejected";

/// The public CAs of another cluster, as stored.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ClusterCas {
    pub tls: Vec<String>,
    pub ssh_user: Vec<String>,
    pub ssh_host: Vec<String>,
    /// Leaf side: false while the trusted_cluster is disabled.
    #[serde(default = "yes")]
    pub active: bool,
}

fn yes() -> bool {
    true
}

impl ClusterCas {
    pub fn from_proto(c: &CertAuthorities) -> Self {
        ClusterCas { tls: c.tls_ca_pem.clone(), ssh_user: c.ssh_user_ca.clone(), ssh_host: c.ssh_host_ca.clone(), active: true }
    }
}

/// One proxy's report of the tunnels it holds from a leaf.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TunnelReport {
    count: u32,
    at: time::OffsetDateTime,
}

/// Which leaf cluster an invite token was used by: a token registers one name only.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TokenUse {
    cluster: String,
}

/// Keyed by a hash of the token, so the database never holds the token itself here.
fn trust_token_key(token: &portcullis_pki::Secret<String>) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.expose().as_bytes());
    format!("trust_token_uses/{}", hex::encode(digest.as_ref()))
}

/// Whether one cluster name lies inside the other's DNS namespace (`x.b` and `b`).
fn nested(a: &str, b: &str) -> bool {
    a.strip_suffix(b).is_some_and(|p| p.ends_with('.')) || b.strip_suffix(a).is_some_and(|p| p.ends_with('.'))
}

fn rc_key(leaf: &str) -> String {
    format!("remote_clusters/{leaf}")
}
fn remote_cas_key(leaf: &str) -> String {
    format!("remote_cas/{leaf}")
}
fn tunnels_prefix(leaf: &str) -> String {
    format!("tunnels/{leaf}/")
}
fn tc_key(root: &str) -> String {
    format!("trusted_clusters/{root}")
}
pub(crate) fn trusted_cas_key(root: &str) -> String {
    format!("trusted_cas/{root}")
}

impl AuthState {
    // ---------------------------------------------------------------- root side

    /// A leaf asks to be trusted. The token must be a live `trusted_cluster` token; the
    /// name must be neither ours nor another leaf's.
    pub fn validate_trusted_cluster(
        &self,
        req: &ValidateTrustedClusterRequest,
    ) -> Result<ValidateTrustedClusterResponse, AuthError> {
        let leaf = req.leaf_cluster_name.trim().to_string();
        let refuse = |reason: String| {
            // The troubleshooting guides start from this line on the root.
            tracing::warn!(leaf = %leaf, remote = %req.remote_addr, "refused to trust cluster: {reason}");
            self.audit.emit(
                "trusted_cluster.create",
                json!({"success": false, "cluster": leaf, "error": reason, "remote_addr": req.remote_addr}),
            );
        };
        let token = portcullis_pki::Secret::new(req.token.clone());
        if let Err(e) = self.check_token(&token, &[SystemRole::TrustedCluster]) {
            refuse(e.to_string());
            return Err(AuthError::denied(TOKEN_REJECTED));
        }
        let cas = req.leaf_cas.clone().unwrap_or_default();
        // The name scopes the leaf's host CA (`*.<leaf>` in tsh's known_hosts) and keys its
        // records: only DNS names, never the root's or a name nested in another cluster's.
        if let Err(e) = portcullis_types::validate_cluster_name(&leaf) {
            refuse(e.to_string());
            return Err(AuthError::bad(e.to_string()));
        }
        if leaf == self.cluster_name {
            let reason = format!("a leaf cluster cannot be named {leaf:?}: that is the root cluster's name");
            refuse(reason.clone());
            return Err(AuthError::denied(format!("access denied: {reason}")));
        }
        if cas.tls_ca_pem.is_empty() || cas.ssh_user_ca.is_empty() || cas.ssh_host_ca.is_empty() {
            return Err(AuthError::bad("the leaf must send its TLS, SSH user and SSH host CAs"));
        }
        let new = ClusterCas::from_proto(&cas);
        // No lock: several auth replicas may validate at once. Each record below is created
        // only if absent, and the loser of a race re-reads what won (two leaves racing for
        // one name, or one token, on any replicas: exactly one wins).
        let token_key = trust_token_key(&token);
        let token_used_by_other = |used: &TokenUse| {
            let reason = format!(
                "this invite token was already used by leaf cluster {:?}; a token registers one cluster name, not {leaf:?} (tctl tokens add --type=trusted_cluster for another)",
                used.cluster
            );
            refuse(reason.clone());
            AuthError::denied(format!("access denied: {reason}"))
        };
        let other_keys = || {
            let reason = format!("a cluster named {leaf:?} is already trusted with other keys; remove it first (tctl rm rc/{leaf})");
            refuse(reason.clone());
            AuthError::denied(format!("access denied: {reason}"))
        };
        let same_keys = |c: &ClusterCas| c.tls == new.tls && c.ssh_host == new.ssh_host && c.ssh_user == new.ssh_user;
        if let Some(used) = self.backend.get_json::<TokenUse>(&token_key)?
            && used.cluster != leaf
        {
            return Err(token_used_by_other(&used));
        }
        let existing = self.backend.get_json::<ClusterCas>(&remote_cas_key(&leaf))?;
        match &existing {
            Some(existing) => {
                if !same_keys(existing) {
                    return Err(other_keys());
                }
            }
            None => {
                // A name inside another cluster's (`a.leaf` next to `leaf`, or the other way
                // round) would let one CA's `*.<name>` pattern cover the other's hosts.
                if let Some(other) = self.overlapping(&leaf)? {
                    let reason = format!(
                        "a leaf cluster cannot be named {leaf:?}: it overlaps cluster {other:?} (one name ends with '.' + the other), so their host CAs' scopes would overlap"
                    );
                    refuse(reason.clone());
                    return Err(AuthError::denied(format!("access denied: {reason}")));
                }
                // Likewise a live host of this cluster named under the leaf's name: the leaf's
                // CA would be trusted for it.
                let suffix = format!(".{leaf}");
                if let Some(node) = self.list_nodes()?.into_iter().find(|n| {
                    let h = n.spec.hostname.to_ascii_lowercase();
                    h == leaf || h.ends_with(&suffix)
                }) {
                    let reason = format!(
                        "a leaf cluster cannot be named {leaf:?}: node {:?} of cluster {:?} is named under it, and the leaf's host CA would be trusted for it",
                        node.spec.hostname, self.cluster_name
                    );
                    refuse(reason.clone());
                    return Err(AuthError::denied(format!("access denied: {reason}")));
                }
            }
        }
        // The name: created if absent, else it must hold these very keys (the same leaf
        // asking again, or winning a race against itself).
        let cas_key = remote_cas_key(&leaf);
        let new_bytes = to_json(&new)?;
        let created = self.backend.create(&cas_key, &new_bytes)?;
        if !created && !self.backend.get_json::<ClusterCas>(&cas_key)?.is_some_and(|c| same_keys(&c)) {
            return Err(other_keys());
        }
        // Undoes this call's claim of the name when a later step refuses it.
        let give_back = || -> Result<(), AuthError> {
            if created {
                self.backend.compare_and_delete(&cas_key, &new_bytes)?;
            }
            Ok(())
        };
        if created && let Some(other) = self.overlapping(&leaf)? {
            // An overlapping name was claimed at the same moment: both step back (a retry
            // then finds the one that stayed), never both trusted.
            give_back()?;
            let reason = format!(
                "a leaf cluster cannot be named {leaf:?}: it overlaps cluster {other:?} (one name ends with '.' + the other), so their host CAs' scopes would overlap"
            );
            refuse(reason.clone());
            return Err(AuthError::denied(format!("access denied: {reason}")));
        }
        // The token: it registers this name, unless another name took it first.
        if !create_json(self.backend.as_ref(), &token_key, &TokenUse { cluster: leaf.clone() })?
            && let Some(used) = self.backend.get_json::<TokenUse>(&token_key)?
            && used.cluster != leaf
        {
            give_back()?;
            return Err(token_used_by_other(&used));
        }
        // Its status record, kept when it exists (tunnel heartbeats, labels).
        create_json(self.backend.as_ref(), &rc_key(&leaf), &RemoteCluster::new(leaf.clone()))?;
        self.backend.flush()?;
        self.audit.emit(
            "trusted_cluster.create",
            json!({"success": true, "cluster": leaf, "remote_addr": req.remote_addr}),
        );
        Ok(ValidateTrustedClusterResponse { root_cluster_name: self.cluster_name.clone(), root_cas: Some(self.own_cas()?) })
    }

    /// Another trusted leaf, or this cluster, whose name `leaf` lies inside or around.
    fn overlapping(&self, leaf: &str) -> Result<Option<String>, AuthError> {
        let others = self.remote_cas()?.into_iter().map(|(n, _)| n).chain([self.cluster_name.clone()]);
        Ok(others.into_iter().find(|o| o != leaf && nested(leaf, o)))
    }

    /// Records how many tunnels a proxy holds per leaf.
    pub fn report_tunnels(&self, proxy_id: &str, tunnels: &BTreeMap<String, u32>) -> Result<(), AuthError> {
        self.report_tunnels_at(proxy_id, tunnels, now())
    }

    /// [`Self::report_tunnels`] received at `at`. Several proxies report through several auth
    /// replicas at once: each proxy has its own report record, and the leaf's
    /// `last_heartbeat` is moved forward atomically, never backwards, without losing a
    /// concurrent label change.
    pub fn report_tunnels_at(
        &self,
        proxy_id: &str,
        tunnels: &BTreeMap<String, u32>,
        at: time::OffsetDateTime,
    ) -> Result<(), AuthError> {
        for (leaf, count) in tunnels {
            if self.backend.get(&rc_key(leaf))?.is_none() {
                continue;
            }
            self.backend.put_json(&format!("{}{proxy_id}", tunnels_prefix(leaf)), &TunnelReport { count: *count, at })?;
            if *count > 0 {
                atomic_update(self.backend.as_ref(), &rc_key(leaf), |current| {
                    // Gone meanwhile (tctl rm rc/...): nothing to bring back.
                    let Some(mut rc) = current.and_then(|c| serde_json::from_slice::<RemoteCluster>(c).ok()) else {
                        return Ok(Change::Keep(()));
                    };
                    if rc.status.last_heartbeat.is_some_and(|h| h >= at) {
                        return Ok(Change::Keep(()));
                    }
                    rc.status.last_heartbeat = Some(at);
                    Ok(Change::Put(to_json(&rc)?, ()))
                })?;
            }
        }
        Ok(())
    }

    /// A remote cluster with its connection status worked out now: online while some proxy
    /// reported a live tunnel within `offline_after`.
    fn with_status(&self, mut rc: RemoteCluster) -> Result<RemoteCluster, AuthError> {
        let cutoff = now() - time::Duration::try_from(self.offline_after).unwrap_or(time::Duration::seconds(30));
        let online = self
            .backend
            .list_json::<TunnelReport>(&tunnels_prefix(&rc.metadata.name))?
            .iter()
            .any(|r| r.count > 0 && r.at > cutoff);
        rc.status.connection = if online { "online" } else { "offline" }.into();
        Ok(rc)
    }

    pub fn get_remote_cluster(&self, leaf: &str) -> Result<Option<RemoteCluster>, AuthError> {
        match self.backend.get_json::<RemoteCluster>(&rc_key(leaf))? {
            Some(rc) => Ok(Some(self.with_status(rc)?)),
            None => Ok(None),
        }
    }

    pub fn list_remote_clusters(&self) -> Result<Vec<RemoteCluster>, AuthError> {
        self.backend.list_json::<RemoteCluster>("remote_clusters/")?.into_iter().map(|rc| self.with_status(rc)).collect()
    }

    /// Only labels of a remote cluster can be changed by hand.
    pub fn update_remote_cluster(&self, rc: &RemoteCluster) -> Result<(), AuthError> {
        let name = &rc.metadata.name;
        // Atomic: a tunnel heartbeat stored meanwhile by another replica is kept.
        atomic_update(self.backend.as_ref(), &rc_key(name), |current| {
            let mut stored = current
                .map(serde_json::from_slice::<RemoteCluster>)
                .transpose()
                .map_err(|e| portcullis_storage::StorageError::Corrupt { key: rc_key(name), reason: e.to_string() })?
                .ok_or_else(|| {
                    AuthError::NotFound(format!(
                        "remote cluster {name:?} does not exist; it appears when a leaf establishes trust"
                    ))
                })?;
            stored.metadata.labels = rc.metadata.labels.clone();
            Ok(Change::Put(to_json(&stored)?, ()))
        })
    }

    /// `tctl rm rc/<leaf>`: forget the leaf and its CAs; its tunnels are dropped by the
    /// proxies at their next refresh.
    pub fn delete_remote_cluster(&self, leaf: &str) -> Result<bool, AuthError> {
        let existed = self.backend.delete(&rc_key(leaf))?;
        self.backend.delete(&remote_cas_key(leaf))?;
        for (k, _) in self.backend.list(&tunnels_prefix(leaf))? {
            self.backend.delete(&k)?;
        }
        if existed {
            self.audit.emit("trusted_cluster.delete", json!({"success": true, "cluster": leaf, "side": "root"}));
        }
        Ok(existed)
    }

    /// TLS CAs of every trusted leaf (for proxies verifying tunnel agents).
    pub fn leaf_tls_cas(&self) -> Result<Vec<ClusterCa>, AuthError> {
        Ok(self
            .backend
            .list("remote_cas/")?
            .into_iter()
            .filter_map(|(k, v)| {
                let cas: ClusterCas = serde_json::from_slice(&v).ok()?;
                Some(ClusterCa { cluster_name: k.trim_start_matches("remote_cas/").to_string(), tls_ca_pem: cas.tls })
            })
            .collect())
    }

    fn remote_cas(&self) -> Result<Vec<(String, ClusterCas)>, AuthError> {
        Ok(self
            .backend
            .list("remote_cas/")?
            .into_iter()
            .filter_map(|(k, v)| Some((k.trim_start_matches("remote_cas/").to_string(), serde_json::from_slice(&v).ok()?)))
            .collect())
    }

    /// Leaf clusters the user may see, by `cluster_labels`.
    pub fn remote_clusters_for(
        &self,
        checker: Option<&AccessChecker>,
        only: &str,
    ) -> Result<ListRemoteClustersResponse, AuthError> {
        // One leaf is looked up directly: routing checks must not scan every leaf.
        let all = if only.is_empty() { self.list_remote_clusters()? } else { self.get_remote_cluster(only)?.into_iter().collect() };
        let clusters = all
            .into_iter()
            .filter(|rc| checker.is_none_or(|c| c.can_see_cluster(&rc.metadata.labels)))
            .map(|rc| PbRemoteCluster {
                name: rc.metadata.name.clone(),
                connection: rc.status.connection.clone(),
                labels: rc.metadata.labels.clone().into_iter().collect(),
                last_heartbeat: rc
                    .status
                    .last_heartbeat
                    .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
                    .unwrap_or_default(),
            })
            .collect();
        Ok(ListRemoteClustersResponse { clusters })
    }

    // ---------------------------------------------------------------- leaf side

    pub fn get_trusted_cluster(&self, root: &str) -> Result<Option<TrustedCluster>, AuthError> {
        Ok(self.backend.get_json(&tc_key(root))?)
    }

    pub fn list_trusted_clusters(&self) -> Result<Vec<TrustedCluster>, AuthError> {
        Ok(self.backend.list_json("trusted_clusters/")?)
    }

    /// The CAs of the root cluster `root`, if trust with it is established.
    pub fn trusted_cas(&self, root: &str) -> Result<Option<ClusterCas>, AuthError> {
        Ok(self.backend.get_json(&trusted_cas_key(root))?)
    }

    /// All established trusts: (root name, CAs).
    pub fn all_trusted_cas(&self) -> Result<Vec<(String, ClusterCas)>, AuthError> {
        Ok(self
            .backend
            .list("trusted_cas/")?
            .into_iter()
            .filter_map(|(k, v)| Some((k.trim_start_matches("trusted_cas/").to_string(), serde_json::from_slice(&v).ok()?)))
            .collect())
    }

    /// Stores a trusted_cluster whose root CAs are known. The token is not kept: it is
    /// needed only for the first contact.
    pub fn store_trusted_cluster(&self, tc: &TrustedCluster, root_cas: Option<ClusterCas>) -> Result<(), AuthError> {
        let mut stored = tc.clone();
        stored.spec.token = String::new();
        let name = &tc.metadata.name;
        let mut cas = match root_cas {
            Some(c) => c,
            None => self
                .trusted_cas(name)?
                .ok_or_else(|| AuthError::Internal(format!("no CAs for trusted cluster {name:?}")))?,
        };
        cas.active = tc.spec.enabled;
        self.backend.put_json(&trusted_cas_key(name), &cas)?;
        self.backend.put_json(&tc_key(name), &stored)?;
        self.backend.flush()?;
        Ok(())
    }

    /// `tctl rm tc/<root>`: forget the root and its CAs.
    pub fn delete_trusted_cluster(&self, root: &str) -> Result<bool, AuthError> {
        let existed = self.backend.delete(&tc_key(root))?;
        self.backend.delete(&trusted_cas_key(root))?;
        if existed {
            self.audit.emit("trusted_cluster.delete", json!({"success": true, "cluster": root, "side": "leaf"}));
        }
        Ok(existed)
    }

    /// What the tunnel agent must connect to.
    pub fn trusted_cluster_targets(&self) -> Result<Vec<TrustedClusterTarget>, AuthError> {
        let mut out = Vec::new();
        for tc in self.list_trusted_clusters()? {
            let cas = self.trusted_cas(&tc.metadata.name)?.unwrap_or_default();
            out.push(TrustedClusterTarget {
                name: tc.metadata.name.clone(),
                enabled: tc.spec.enabled && cas.active,
                tunnel_addr: tc.tunnel_addr(),
                root_tls_ca_pem: cas.tls,
            });
        }
        Ok(out)
    }

    /// Our own CAs only.
    pub fn own_cas(&self) -> Result<CertAuthorities, AuthError> {
        Ok(CertAuthorities {
            tls_ca_pem: vec![self.tls_ca.cert_pem().to_string()],
            ssh_user_ca: vec![self.user_ca.public_line()?],
            ssh_host_ca: vec![self.host_ca.public_line()?],
        })
    }

    /// The SSH host CAs of each trusted leaf, by leaf name.
    pub fn leaf_host_cas(&self) -> Result<Vec<ClusterHostCas>, AuthError> {
        let mut out: Vec<ClusterHostCas> = self
            .remote_cas()?
            .into_iter()
            .map(|(cluster_name, cas)| ClusterHostCas { cluster_name, ssh_host_ca: cas.ssh_host })
            .collect();
        out.sort_by(|a, b| a.cluster_name.cmp(&b.cluster_name));
        Ok(out)
    }

    /// Our CAs plus the user CAs of roots we actively trust (so our nodes accept root
    /// users). A leaf's user CA is never added: leaf certificates are never root identities.
    /// Nor are leaves' host CAs: they vouch only for their own leaf's hosts, so they are
    /// handed out per leaf ([`Self::leaf_host_cas`]), never in this unscoped set.
    pub fn cert_authorities(&self) -> Result<CertAuthorities, AuthError> {
        let mut cas = self.own_cas()?;
        for (_, root) in self.all_trusted_cas()? {
            if root.active {
                cas.ssh_user_ca.extend(root.ssh_user);
            }
        }
        Ok(cas)
    }
}

/// How long after its last tunnel report a leaf counts as offline, unless configured.
pub const DEFAULT_OFFLINE_AFTER: Duration = Duration::from_secs(15);
