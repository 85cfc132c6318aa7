//! The two auth service calls a node's SSH sessions need, behind a trait so the SSH server
//! can be exercised without a cluster; [`CachedAuth`] answers logins from the access cache.

use futures::future::BoxFuture;
use portcullis_access::{AccessCache, AccessSnapshot};
use portcullis_proto::auth::auth_client::AuthClient;
use portcullis_proto::auth::{AuditEventRequest, AuthorizeSshRequest, AuthorizeSshResponse};
use portcullis_rpc::Channel;
use portcullis_types::Node;
use tonic::Status;

/// Login decisions and the audit log, as the auth service provides them.
pub trait AuthBackend: Send + Sync + 'static {
    /// `AuthorizeSsh`: may this certificate log in as this login on this node?
    fn authorize_ssh(&self, req: AuthorizeSshRequest) -> BoxFuture<'static, Result<AuthorizeSshResponse, Status>>;
    /// `EmitAuditEvent`: appends one JSON event to the cluster's audit log.
    fn emit_audit_event(&self, event_json: String) -> BoxFuture<'static, Result<(), Status>>;
    /// The SSH user CAs the cluster trusts right now (its own and active trusted roots').
    /// Used to refresh the node's copy at once when trust changes between heartbeats.
    fn user_cas(&self) -> BoxFuture<'static, Result<Vec<String>, Status>> {
        Box::pin(async { Err(Status::unimplemented("this backend cannot list CAs")) })
    }
    /// Decides a login from local state (the access cache) when it can: `None` means ask auth
    /// ([`AuthBackend::authorize_ssh`]); `Err` is a request that cannot be decided (an
    /// unreadable certificate). Refusals decided here are the node's to audit.
    fn decide_locally(&self, _req: &AuthorizeSshRequest) -> Option<Result<AuthorizeSshResponse, String>> {
        None
    }
    /// What the local state is, said when no local decision was possible and auth failed.
    fn local_state(&self) -> Option<String> {
        None
    }
}

// The inherent methods take `&mut self`, the trait's `&self`: spelled out to pick the former.
impl AuthBackend for AuthClient<Channel> {
    fn authorize_ssh(&self, req: AuthorizeSshRequest) -> BoxFuture<'static, Result<AuthorizeSshResponse, Status>> {
        let mut client = self.clone();
        Box::pin(async move { AuthClient::authorize_ssh(&mut client, req).await.map(|r| r.into_inner()) })
    }

    fn emit_audit_event(&self, event_json: String) -> BoxFuture<'static, Result<(), Status>> {
        let mut client = self.clone();
        Box::pin(async move { AuthClient::emit_audit_event(&mut client, AuditEventRequest { event_json }).await.map(|_| ()) })
    }

    fn user_cas(&self) -> BoxFuture<'static, Result<Vec<String>, Status>> {
        let mut client = self.clone();
        Box::pin(async move {
            let resp = AuthClient::ping(&mut client, portcullis_proto::auth::PingRequest {}).await?.into_inner();
            Ok(resp.cas.map(|c| c.ssh_user_ca).unwrap_or_default())
        })
    }
}

/// The node's login decisions from the access cache (`portcullis_access`), so logins keep
/// working while no auth server answers; auth is asked only while the cache holds nothing
/// (never reached auth and no cache file). Audit events still go to auth.
pub struct CachedAuth {
    remote: AuthClient<Channel>,
    cache: AccessCache,
    /// This node as the decision needs it (name and labels its roles are matched against).
    node: Node,
}

impl CachedAuth {
    pub fn new(remote: AuthClient<Channel>, cache: AccessCache, node: Node) -> Self {
        CachedAuth { remote, cache, node }
    }
}

impl AuthBackend for CachedAuth {
    fn authorize_ssh(&self, req: AuthorizeSshRequest) -> BoxFuture<'static, Result<AuthorizeSshResponse, Status>> {
        AuthBackend::authorize_ssh(&self.remote, req)
    }

    fn emit_audit_event(&self, event_json: String) -> BoxFuture<'static, Result<(), Status>> {
        AuthBackend::emit_audit_event(&self.remote, event_json)
    }

    fn user_cas(&self) -> BoxFuture<'static, Result<Vec<String>, Status>> {
        match self.cache.current() {
            Some(snap) => {
                let cas = trusted_user_cas(&snap);
                Box::pin(async move { Ok(cas) })
            }
            None => AuthBackend::user_cas(&self.remote),
        }
    }

    fn decide_locally(&self, req: &AuthorizeSshRequest) -> Option<Result<AuthorizeSshResponse, String>> {
        let snap = self.cache.current()?;
        Some(portcullis_access::authorize_ssh(&snap, req, Some(&self.node)).map_err(|e| e.to_string()))
    }

    fn local_state(&self) -> Option<String> {
        Some(format!("the access cache is {}", self.cache.status()))
    }
}

/// The SSH user CAs a snapshot trusts: the cluster's own, then those of enabled trusted roots
/// (what auth's heartbeat answers list).
pub fn trusted_user_cas(snap: &AccessSnapshot) -> Vec<String> {
    let roots = snap.trusted_roots.iter().filter(|r| r.active).flat_map(|r| r.ssh_user_cas.iter());
    snap.user_cas.iter().chain(roots).cloned().collect()
}
