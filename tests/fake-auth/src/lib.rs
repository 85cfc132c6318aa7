//! One configurable fake of the auth gRPC service for tests and benchmarks: a test sets the
//! answers it needs per call, reads back what was asked, and feeds `WatchAccess` snapshots.
//!
//! ```ignore
//! let fake = FakeAuth::new()
//!     .list_nodes(|r| Ok(ListNodesResponse { nodes: nodes_for(r.get_ref()) }))
//!     .ping(reply(PingResponse::default()))
//!     .watch_access(access_rx)
//!     .tls(ServerTls::issue(&ca, &client_cas)?);
//! let running = fake.start().await?;
//! // ... point the code under test at running.addr ...
//! assert_eq!(running.calls().count(Rpc::ListNodes), 1);
//! ```
//!
//! A call nobody configured answers `Unimplemented` ("fake auth: <Rpc> not configured").
#![forbid(unsafe_code)]

mod calls;
mod serve;

pub use calls::Calls;
pub use serve::{FakeAuthError, KillOnDrop, Running, ServerTls, issue_cert};

use portcullis_proto::auth::auth_server::Auth;
use portcullis_proto::auth::*;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

/// A configured answer: the request in, the reply or the error out.
type Handler<Req, Resp> = Box<dyn Fn(Request<Req>) -> Result<Resp, Status> + Send + Sync>;

/// An answer that is always `value`, for calls whose reply does not depend on the request.
pub fn reply<Req, Resp>(value: Resp) -> impl Fn(Request<Req>) -> Result<Resp, Status> + Send + Sync + 'static
where
    Resp: Clone + Send + Sync + 'static,
{
    move |_| Ok(value.clone())
}

/// The `WatchAccess` message for `snapshot`, as auth streams it.
pub fn access_message(snapshot: &portcullis_access::AccessSnapshot) -> Result<AccessSnapshotMessage, FakeAuthError> {
    Ok(AccessSnapshotMessage { snapshot_json: snapshot.to_json()?, revision: snapshot.revision })
}

/// Declares, from one list of the unary calls: the [`Rpc`] names, the handler table, one
/// builder method per call (named as the trait method), and the `Auth` implementation.
macro_rules! unary_calls {
    ($($method:ident / $rpc:ident ($req:ty) -> $resp:ty;)*) => {
        /// A call of the auth API, as [`Calls`] counts it.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Rpc {
            $($rpc,)*
            WatchAccess,
        }

        impl Rpc {
            /// The call's gRPC method name.
            pub fn name(self) -> &'static str {
                match self {
                    $(Rpc::$rpc => stringify!($rpc),)*
                    Rpc::WatchAccess => "WatchAccess",
                }
            }
        }

        #[derive(Default)]
        struct Handlers {
            $($method: Option<Handler<$req, $resp>>,)*
        }

        impl FakeAuth {
            $(
                #[doc = concat!("Answers `", stringify!($rpc), "` with `answer`.")]
                pub fn $method(
                    mut self,
                    answer: impl Fn(Request<$req>) -> Result<$resp, Status> + Send + Sync + 'static,
                ) -> Self {
                    self.handlers.$method = Some(Box::new(answer));
                    self
                }
            )*
        }

        #[tonic::async_trait]
        impl Auth for Service {
            $(
                async fn $method(&self, r: Request<$req>) -> Result<Response<$resp>, Status> {
                    self.answer(Rpc::$rpc, self.handlers.$method.as_ref(), r)
                }
            )*

            async fn watch_access(
                &self,
                r: Request<WatchAccessRequest>,
            ) -> Result<Response<tonic::codegen::BoxStream<AccessSnapshotMessage>>, Status> {
                self.calls.record(Rpc::WatchAccess, r.get_ref());
                let Some(access) = &self.access else {
                    return Err(not_configured(Rpc::WatchAccess));
                };
                Ok(Response::new(access_stream(access.clone())))
            }
        }
    };
}

unary_calls! {
    join / Join(JoinRequest) -> JoinResponse;
    ping / Ping(PingRequest) -> PingResponse;
    authenticate_user / AuthenticateUser(AuthenticateUserRequest) -> UserCerts;
    generate_user_certs / GenerateUserCerts(GenerateUserCertsRequest) -> UserCerts;
    set_password / SetPassword(SetPasswordRequest) -> Empty;
    upsert_resource / UpsertResource(UpsertResourceRequest) -> UpsertResourceResponse;
    get_resources / GetResources(GetResourcesRequest) -> GetResourcesResponse;
    delete_resource / DeleteResource(DeleteResourceRequest) -> Empty;
    create_token / CreateToken(CreateTokenRequest) -> CreateTokenResponse;
    heartbeat / Heartbeat(HeartbeatRequest) -> HeartbeatResponse;
    list_nodes / ListNodes(ListNodesRequest) -> ListNodesResponse;
    resolve_node / ResolveNode(ResolveNodeRequest) -> ResolveNodeResponse;
    authorize_ssh / AuthorizeSsh(AuthorizeSshRequest) -> AuthorizeSshResponse;
    emit_audit_event / EmitAuditEvent(AuditEventRequest) -> Empty;
    search_audit_events / SearchAuditEvents(SearchAuditEventsRequest) -> SearchAuditEventsResponse;
    status / Status(StatusRequest) -> StatusResponse;
    validate_trusted_cluster / ValidateTrustedCluster(ValidateTrustedClusterRequest) -> ValidateTrustedClusterResponse;
    report_tunnels / ReportTunnels(ReportTunnelsRequest) -> Empty;
    list_remote_clusters / ListRemoteClusters(ListRemoteClustersRequest) -> ListRemoteClustersResponse;
    list_trusted_clusters / ListTrustedClusters(ListTrustedClustersRequest) -> ListTrustedClustersResponse;
    list_user_locks / ListUserLocks(ListUserLocksRequest) -> ListUserLocksResponse;
    unlock_user / UnlockUser(UnlockUserRequest) -> UnlockUserResponse;
    lock_user / LockUser(LockUserRequest) -> Empty;
}

/// A fake auth service being configured; [`FakeAuth::start`] serves it.
#[derive(Default)]
pub struct FakeAuth {
    handlers: Handlers,
    access: Option<watch::Receiver<Option<AccessSnapshotMessage>>>,
    calls: Calls,
    /// Applied when serving, so that it holds whatever log [`FakeAuth::calls_into`] set.
    count_only: bool,
    tls: Option<ServerTls>,
}

impl FakeAuth {
    /// A fake that answers nothing yet: every call is `Unimplemented` until configured.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `WatchAccess`: each stream sends the current message of `access` (once there is
    /// one), then every message set after it, until the sender is dropped.
    pub fn watch_access(mut self, access: watch::Receiver<Option<AccessSnapshotMessage>>) -> Self {
        self.access = Some(access);
        self
    }

    /// Records into `calls` (e.g. one a test fixture made before the fake) instead of a new log.
    pub fn calls_into(mut self, calls: Calls) -> Self {
        self.calls = calls;
        self
    }

    /// Counts calls without keeping the requests, for long runs with many callers.
    pub fn count_only(mut self) -> Self {
        self.count_only = true;
        self
    }

    /// Serves over mutual TLS with `tls` (plain gRPC without it).
    pub fn tls(mut self, tls: ServerTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// What the fake records; the same log [`Running::calls`] gives.
    pub fn calls(&self) -> &Calls {
        &self.calls
    }
}

fn not_configured(rpc: Rpc) -> Status {
    Status::unimplemented(format!("fake auth: {} not configured", rpc.name()))
}

/// The configured fake as a gRPC service.
struct Service {
    handlers: Handlers,
    access: Option<watch::Receiver<Option<AccessSnapshotMessage>>>,
    calls: Calls,
}

impl Service {
    fn answer<Req: Clone + Send + 'static, Resp>(
        &self,
        rpc: Rpc,
        handler: Option<&Handler<Req, Resp>>,
        r: Request<Req>,
    ) -> Result<Response<Resp>, Status> {
        self.calls.record(rpc, r.get_ref());
        match handler {
            Some(answer) => answer(r).map(Response::new),
            None => Err(not_configured(rpc)),
        }
    }
}

/// The current message of `access` (when set), then each later one.
fn access_stream(
    access: watch::Receiver<Option<AccessSnapshotMessage>>,
) -> tonic::codegen::BoxStream<AccessSnapshotMessage> {
    use tokio_stream::StreamExt as _;
    Box::pin(tokio_stream::wrappers::WatchStream::new(access).filter_map(|m| m.map(Ok)))
}
