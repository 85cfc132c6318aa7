//! The two auth service calls a node's SSH sessions need, behind a trait so the SSH server
//! can be exercised without a cluster.

use futures::future::BoxFuture;
use portcullis_proto::auth::auth_client::AuthClient;
use portcullis_proto::auth::{AuditEventRequest, AuthorizeSshRequest, AuthorizeSshResponse};
use tonic::Status;
use portcullis_rpc::Channel;

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
