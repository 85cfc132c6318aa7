//! Announces the node to the auth service every few seconds and picks up the current set
//! of trusted user CAs from each answer and from the access cache (trusted clusters come and go).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use portcullis_pki::ssh::{fingerprint, parse_public_key};
use portcullis_proto::auth::HeartbeatRequest;
use portcullis_proto::auth::auth_client::AuthClient;
use russh::keys::PublicKey;
use portcullis_rpc::Channel;

/// Time between heartbeats.
pub const INTERVAL: Duration = Duration::from_secs(10);
const CALL_TIMEOUT: Duration = Duration::from_secs(8);

/// The trusted user CA keys, shared by the heartbeat (writer) and every connection (readers).
pub type UserCas = Arc<RwLock<Vec<PublicKey>>>;

/// What the node announces.
#[derive(Debug, Clone)]
pub struct Announcement {
    pub host_id: String,
    pub hostname: String,
    pub addr: String,
    pub labels: BTreeMap<String, String>,
    pub version: String,
}

/// Parses authorized_keys lines, skipping (and logging) the unreadable ones.
pub fn parse_cas(lines: &[String]) -> Vec<PublicKey> {
    lines
        .iter()
        .filter_map(|l| match parse_public_key(l) {
            Ok(k) => Some(k),
            Err(e) => {
                tracing::warn!("ignoring an unreadable user CA key: {e}");
                None
            }
        })
        .collect()
}

/// Runs the heartbeat loop forever: the first beat at once, then every [`INTERVAL`]. Each
/// outcome goes to `beats` (readiness and the heartbeat age).
pub async fn run(client: AuthClient<Channel>, info: Announcement, cas: UserCas, beats: portcullis_diag::Heartbeat) {
    let mut ticker = tokio::time::interval(INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let labels: HashMap<String, String> = info.labels.clone().into_iter().collect();
    // What auth last said it changed in the announcement; said again only when it changes.
    let mut warned: Vec<String> = Vec::new();
    loop {
        ticker.tick().await;
        let req = HeartbeatRequest {
            kind: "node".into(),
            host_id: info.host_id.clone(),
            hostname: info.hostname.clone(),
            addr: info.addr.clone(),
            labels: labels.clone(),
            version: info.version.clone(),
            tunnel_addr: String::new(),
        };
        let mut c = client.clone();
        match tokio::time::timeout(CALL_TIMEOUT, c.heartbeat(req)).await {
            Ok(Ok(resp)) => {
                tracing::debug!("heartbeat sent");
                beats.succeeded();
                let resp = resp.into_inner();
                if resp.warnings != warned {
                    for w in &resp.warnings {
                        tracing::warn!("the auth service changed this node's announcement: {w}");
                    }
                    warned = resp.warnings;
                }
                if let Some(authorities) = resp.cas {
                    update_cas(&cas, &authorities.ssh_user_ca);
                }
            }
            Ok(Err(status)) => {
                // A refused name or address is said here (e.g. the name is held by another host).
                tracing::warn!("heartbeat to the auth service failed: {}", status.message());
                beats.failed();
            }
            Err(_) => {
                tracing::warn!("heartbeat to the auth service failed: no answer in {CALL_TIMEOUT:?}");
                beats.failed();
            }
        }
    }
}

/// Keeps the trusted user CAs in step with the access cache (the cluster's own and those of
/// enabled trusted roots), so trust changes apply at once and a restart with auth down
/// trusts what the kept snapshot says. Runs until the cache goes away.
pub async fn follow_cache(cache: portcullis_access::AccessCache, cas: UserCas) {
    let mut rx = cache.changed();
    loop {
        let snap = rx.borrow_and_update().clone();
        if let Some(snap) = snap {
            update_cas(&cas, &crate::backend::trusted_user_cas(&snap));
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Replaces the trusted set. An empty answer keeps the old set: it can only come from a
/// broken auth service, and trusting nothing would lock every user out.
fn update_cas(cas: &UserCas, lines: &[String]) {
    let new = parse_cas(lines);
    if new.is_empty() {
        return;
    }
    let fps = |keys: &[PublicKey]| keys.iter().map(fingerprint).collect::<Vec<_>>();
    let mut current = cas.write().unwrap_or_else(PoisonError::into_inner);
    if fps(&current) != fps(&new) {
        tracing::info!(cas = ?fps(&new), "trusted user CAs changed");
        *current = new;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_pki::ssh::SshCa;

    #[test]
    fn answers_replace_the_trusted_set_but_never_empty_it() {
        let (a, b) = (SshCa::generate().unwrap(), SshCa::generate().unwrap());
        let cas: UserCas = Arc::new(RwLock::new(parse_cas(&[a.public_line().unwrap()])));
        update_cas(&cas, &[b.public_line().unwrap(), "garbage".into()]);
        assert_eq!(cas.read().unwrap().iter().map(fingerprint).collect::<Vec<_>>(), vec![fingerprint(b.public_key())]);
        update_cas(&cas, &[]);
        assert_eq!(cas.read().unwrap().len(), 1);
    }
}
