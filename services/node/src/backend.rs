//! The two auth service calls a node's SSH sessions need, behind a trait so the SSH server
//! can be exercised without a cluster.

use futures::future::BoxFuture;
use portcullis_proto::auth::auth_client::AuthClient;
use portcullis_proto::auth::{AuditEventRequest, AuthorizeSshRequest, AuthorizeSshResponse};
use tonic::Status;
use tonic::transport::Channel;

/// Login decisions and the audit log, as the auth service provides them.
pub trait AuthBackend: Send + Sync + 'static {
    /// `AuthorizeSsh`: may this certificate log in as this login on this node?
    fn authorize_ssh(&self, req: AuthorizeSshRequest) -> BoxFuture<'static, Result<AuthorizeSshResponse, Status>>;
    /// `EmitAuditEvent`: appends one JSON event to the cluster's audit log.
    fn emit_audit_event(&self, event_json: String) -> BoxFuture<'static, Result<(), Status>>;
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
}
