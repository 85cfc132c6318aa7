//! The gRPC face of the auth service: checks who is calling, then hands over to
//! [`AuthState`]. Blocking work (argon2, sled flushes) runs off the async threads.

use portcullis_access::to_proto_node;
use std::sync::Arc;
use std::time::Duration;

use portcullis_pki::Secret;
use portcullis_pki::x509::{SystemRole, TlsIdentity};
use portcullis_proto::auth::auth_server::Auth;
use portcullis_proto::auth::*;
use portcullis_rpc::peer_identity;
use portcullis_types::rule::{ANY, resource, verb};
use portcullis_types::{AccessChecker, Kind, Permission};
use tonic::{Request, Response, Status};

use crate::access::Asker;
use crate::error::AuthError;
use crate::state::AuthState;
use crate::users::CertParams;

/// The tonic service.
#[derive(Clone)]
pub struct AuthService {
    state: Arc<AuthState>,
    /// Per peer address: `Join` is the one call anyone may make.
    join_limiter: Arc<portcullis_rpc::rate_limit::AddrRateLimiter>,
    /// The access snapshots every `WatchAccess` stream shares (one build per change burst).
    access_hub: Arc<crate::watch::AccessHub>,
}

impl AuthService {
    pub fn new(state: Arc<AuthState>) -> Self {
        let join_limiter = Arc::new(portcullis_rpc::rate_limit::AddrRateLimiter::new(state.logins.join_rate_limit));
        let access_hub = Arc::new(crate::watch::AccessHub::new(&state));
        AuthService { state, join_limiter, access_hub }
    }

    /// The shared `WatchAccess` feed (closed at shutdown so open streams end).
    pub fn access_hub(&self) -> Arc<crate::watch::AccessHub> {
        self.access_hub.clone()
    }

    /// The caller's identity, which must belong to this cluster and hold one of `roles`.
    fn require<T>(&self, req: &Request<T>, roles: &[SystemRole], call: &str) -> Result<TlsIdentity, Status> {
        let id = self.local_peer(req)?;
        if !roles.iter().any(|r| id.has_system_role(*r)) {
            return Err(not_allowed(&id, call));
        }
        Ok(id)
    }

    /// An admin call (`tctl`): the `Admin` identity and the system roles in `also` make it; a
    /// user makes it when the rules of its roles grant every permission in `needs` (a deny
    /// rule wins). The role definitions are read from the backend at call time, so an edited
    /// role counts at once; a role's name grants nothing by itself.
    async fn require_admin<T>(
        &self,
        req: &Request<T>,
        also: &[SystemRole],
        needs: &[Permission],
        call: &str,
    ) -> Result<TlsIdentity, Status> {
        let id = self.local_peer(req)?;
        if id.has_system_role(SystemRole::Admin) || also.iter().any(|r| id.has_system_role(*r)) {
            return Ok(id);
        }
        if !id.has_system_role(SystemRole::User) {
            return Err(not_allowed(&id, call));
        }
        let names = id.roles.clone();
        // Traits are not read: rules have no templates.
        let checker = self.blocking(move |s| Ok(AccessChecker::new(s.roles_named(&names)?, Default::default()))).await?;
        for p in needs {
            if let Err(e) = checker.check_permission(*p) {
                let roles = if id.roles.is_empty() { "no roles".to_string() } else { format!("roles {}", id.roles.join(",")) };
                tracing::info!(user = %id.name, %call, permission = %p, "admin call refused: {}", e.message);
                return Err(Status::permission_denied(format!("user {:?} ({roles}) {}", id.name, e.message)));
            }
        }
        Ok(id)
    }

    /// The verified peer identity, which must be of this cluster.
    fn local_peer<T>(&self, req: &Request<T>) -> Result<TlsIdentity, Status> {
        let id = peer_identity(req)?;
        if id.cluster != self.state.cluster_name {
            return Err(Status::permission_denied(format!(
                "certificate of cluster {:?} is not valid in cluster {:?}",
                id.cluster, self.state.cluster_name
            )));
        }
        Ok(id)
    }

    /// Runs blocking state work on the blocking pool.
    async fn blocking<R: Send + 'static>(
        &self,
        f: impl FnOnce(&AuthState) -> Result<R, AuthError> + Send + 'static,
    ) -> Result<R, Status> {
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || f(&state))
            .await
            .map_err(|e| Status::internal(format!("auth worker failed: {e}")))?
            .map_err(Status::from)
    }
}

fn remote<T>(req: &Request<T>) -> String {
    req.remote_addr().map(|a| a.to_string()).unwrap_or_default()
}

fn ttl(secs: u64) -> Option<Duration> {
    (secs > 0).then(|| Duration::from_secs(secs))
}

fn not_allowed(id: &TlsIdentity, call: &str) -> Status {
    Status::permission_denied(format!("{} ({}) may not call {call}", id.name, id.system_roles.join(",")))
}

fn perm(kind: Kind, verb: &'static str) -> Permission {
    Permission::new(kind.as_str(), verb)
}

/// Listing a kind, as `tctl get KIND` does: Teleport asks for both verbs.
const fn list_read(resource: &'static str) -> [Permission; 2] {
    [Permission::new(resource, verb::LIST), Permission::new(resource, verb::READ)]
}

/// The kind of resource a request names; one that does not parse needs the broad permission
/// (the call then fails on the kind anyway).
fn kind_resource(kind: Option<Kind>) -> &'static str {
    kind.map_or(ANY, Kind::as_str)
}

/// `UpsertResource`: creating needs `create`; overwriting (`tctl create -f`) also `update`.
fn upsert_needs(resource_json: &str, create_only: bool) -> Vec<Permission> {
    let kind = serde_json::from_str::<serde_json::Value>(resource_json)
        .ok()
        .and_then(|v| v.get("kind").and_then(|k| k.as_str()).and_then(|k| Kind::parse(k).ok()));
    let resource = kind_resource(kind);
    let mut needs = vec![Permission::new(resource, verb::CREATE)];
    if !create_only {
        needs.push(Permission::new(resource, verb::UPDATE));
    }
    needs
}

/// `GetResources`: one by name needs `read`, all of a kind `list` and `read`.
fn get_needs(kind: &str, name: &str) -> Vec<Permission> {
    let resource = kind_resource(Kind::parse(kind).ok());
    if name.is_empty() { list_read(resource).to_vec() } else { vec![Permission::new(resource, verb::READ)] }
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        if let Some(ip) = req.remote_addr().map(|a| a.ip())
            && let Err((wait, log)) = self.join_limiter.check_logged(ip)
        {
            if log {
                tracing::warn!(%ip, "join refused: rate limit (logged once a minute per address)");
            }
            return Err(AuthError::TooManyRequests {
                message: format!(
                    "too many join requests from {ip}; try again in {}s",
                    portcullis_rpc::rate_limit::retry_after_secs(wait)
                ),
                retry_after: wait,
            }
            .into());
        }
        let addr = remote(&req);
        let r = req.into_inner();
        tracing::info!(role = %r.role, nodename = %r.nodename, %addr, "join request");
        let resp = self.blocking(move |s| s.join(&r, &addr)).await.inspect_err(|e| {
            tracing::warn!(reason = %e.message(), "join refused");
        })?;
        Ok(Response::new(resp))
    }

    async fn ping(&self, _req: Request<PingRequest>) -> Result<Response<PingResponse>, Status> {
        Ok(Response::new(PingResponse {
            cluster_name: self.state.cluster_name.clone(),
            server_version: env!("CARGO_PKG_VERSION").into(),
            cas: Some(self.state.cert_authorities()?),
        }))
    }

    async fn authenticate_user(&self, req: Request<AuthenticateUserRequest>) -> Result<Response<UserCerts>, Status> {
        self.require(&req, &[SystemRole::Proxy], "AuthenticateUser")?;
        let r = req.into_inner();
        let certs = self
            .blocking(move |s| {
                let password = Secret::new(r.password.clone());
                s.login(
                    &r.username,
                    &password,
                    CertParams {
                        username: &r.username,
                        ssh_public_key: &r.ssh_public_key,
                        tls_public_key: &r.tls_public_key,
                        ttl: ttl(r.ttl_seconds),
                        route_to_cluster: &r.route_to_cluster,
                    },
                    &r.remote_addr,
                )
            })
            .await?;
        Ok(Response::new(certs))
    }

    async fn generate_user_certs(&self, req: Request<GenerateUserCertsRequest>) -> Result<Response<UserCerts>, Status> {
        // Signing for any user is as strong as (re)creating that user.
        let needs = [perm(Kind::User, verb::CREATE), perm(Kind::User, verb::UPDATE)];
        self.require_admin(&req, &[], &needs, "GenerateUserCerts").await?;
        let r = req.into_inner();
        let certs = self
            .blocking(move |s| {
                let user = s
                    .get_user(&r.username)?
                    .ok_or_else(|| AuthError::NotFound(format!("user {:?} does not exist", r.username)))?;
                s.user_certs(
                    &user,
                    CertParams {
                        username: &r.username,
                        ssh_public_key: &r.ssh_public_key,
                        tls_public_key: &r.tls_public_key,
                        ttl: ttl(r.ttl_seconds),
                        route_to_cluster: &r.route_to_cluster,
                    },
                )
            })
            .await?;
        Ok(Response::new(certs))
    }

    async fn set_password(&self, req: Request<SetPasswordRequest>) -> Result<Response<Empty>, Status> {
        self.require_admin(&req, &[], &[perm(Kind::User, verb::UPDATE)], "SetPassword").await?;
        let r = req.into_inner();
        self.blocking(move |s| s.set_password(&r.username, &Secret::new(r.password.clone()))).await?;
        Ok(Response::new(Empty {}))
    }

    async fn upsert_resource(&self, req: Request<UpsertResourceRequest>) -> Result<Response<UpsertResourceResponse>, Status> {
        let needs = upsert_needs(&req.get_ref().resource_json, req.get_ref().create_only);
        self.require_admin(&req, &[], &needs, "UpsertResource").await?;
        let r = req.into_inner();
        // A trusted_cluster needs the network (validation with the root), so it is async.
        if let Ok(value) = serde_json::from_str::<serde_json::Value>(&r.resource_json) {
            if value.get("kind").and_then(|k| k.as_str()).map(portcullis_types::Kind::parse).and_then(Result::ok)
                == Some(portcullis_types::Kind::TrustedCluster)
            {
                let tc = match portcullis_types::Resource::from_json_value(value).map_err(AuthError::from)? {
                    portcullis_types::Resource::TrustedCluster(tc) => tc,
                    _ => return Err(Status::invalid_argument("not a trusted_cluster")),
                };
                let name = tc.metadata.name.clone();
                let created = self.state.upsert_trusted_cluster(tc, r.create_only).await.inspect_err(|e| {
                    tracing::warn!(cluster = %name, error = %e, "establishing trust failed");
                })?;
                return Ok(Response::new(UpsertResourceResponse { kind: "trusted_cluster".into(), name, created }));
            }
        }
        let (kind, name, created) = self.blocking(move |s| s.upsert_resource(&r.resource_json, r.create_only)).await?;
        Ok(Response::new(UpsertResourceResponse { kind: kind.as_str().into(), name, created }))
    }

    async fn get_resources(&self, req: Request<GetResourcesRequest>) -> Result<Response<GetResourcesResponse>, Status> {
        let needs = get_needs(&req.get_ref().kind, &req.get_ref().name);
        let caller = self.require_admin(&req, &[], &needs, "GetResources").await?;
        let r = req.into_inner();
        let values = self
            .blocking(move |s| {
                let values = s.get_resources(&r.kind, &r.name)?;
                // A user sees only the leaf clusters its roles allow (cluster_labels), whatever its rules.
                let is_rc = portcullis_types::Kind::parse(&r.kind).ok() == Some(portcullis_types::Kind::RemoteCluster);
                if is_rc && !caller.has_system_role(SystemRole::Admin) {
                    let checker = s.user_checker(&caller)?;
                    return Ok(values
                        .into_iter()
                        .filter(|v| {
                            let labels: std::collections::BTreeMap<String, String> =
                                serde_json::from_value(v["metadata"]["labels"].clone()).unwrap_or_default();
                            checker.can_see_cluster(&labels)
                        })
                        .collect());
                }
                Ok(values)
            })
            .await?;
        Ok(Response::new(GetResourcesResponse { resources_json: values.iter().map(|v| v.to_string()).collect() }))
    }

    async fn delete_resource(&self, req: Request<DeleteResourceRequest>) -> Result<Response<Empty>, Status> {
        let needs = [Permission::new(kind_resource(Kind::parse(&req.get_ref().kind).ok()), verb::DELETE)];
        self.require_admin(&req, &[], &needs, "DeleteResource").await?;
        let r = req.into_inner();
        self.blocking(move |s| s.delete_resource(&r.kind, &r.name).map(|_| ())).await?;
        Ok(Response::new(Empty {}))
    }

    async fn create_token(&self, req: Request<CreateTokenRequest>) -> Result<Response<CreateTokenResponse>, Status> {
        self.require_admin(&req, &[], &[perm(Kind::Token, verb::CREATE)], "CreateToken").await?;
        let r = req.into_inner();
        let roles = r
            .roles
            .iter()
            .map(|s| SystemRole::parse(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let token = self
            .blocking(move |s| {
                s.create_token(roles, ttl(r.ttl_seconds), Some(r.value.clone()), r.labels.clone().into_iter().collect())
            })
            .await?;
        Ok(Response::new(CreateTokenResponse {
            token: token.token().to_string(),
            expires_unix: token.metadata.expires.map(|e| e.unix_timestamp()).unwrap_or(0),
        }))
    }

    async fn heartbeat(&self, req: Request<HeartbeatRequest>) -> Result<Response<HeartbeatResponse>, Status> {
        let id = self.require(&req, &[SystemRole::Node, SystemRole::Proxy], "Heartbeat")?;
        // Where the node is dialled and what it may be called come from the connection and
        // the certificate, never from the request alone (see nodes.rs).
        let seen = crate::nodes::Observed::new(req.remote_addr().map(|a| a.ip()), id.dns_names.clone());
        let r = req.into_inner();
        if id.name != r.host_id {
            return Err(Status::permission_denied(format!(
                "host {} may not heartbeat for host {}",
                id.name, r.host_id
            )));
        }
        let wants_kind = if id.has_system_role(SystemRole::Proxy) { "proxy" } else { "node" };
        if r.kind != wants_kind {
            return Err(Status::permission_denied(format!("a {wants_kind} may not announce itself as a {}", r.kind)));
        }
        let is_proxy = r.kind == "proxy";
        let warnings = self.blocking(move |s| s.heartbeat(&r, &seen)).await?;
        let mut resp = HeartbeatResponse { cas: Some(self.state.cert_authorities()?), warnings, ..Default::default() };
        if is_proxy {
            resp.leaf_cas = self.state.leaf_tls_cas()?;
            resp.proxies = self.state.live_proxies()?;
        }
        Ok(Response::new(resp))
    }

    async fn list_nodes(&self, req: Request<ListNodesRequest>) -> Result<Response<ListNodesResponse>, Status> {
        let (also, needs) = ([SystemRole::Proxy, SystemRole::Agent], list_read(Kind::Node.as_str()));
        self.require_admin(&req, &also, &needs, "ListNodes").await?;
        let r = req.into_inner();
        let user = self.state.verify_user_tls(&r.user_tls_cert)?;
        let want: std::collections::BTreeMap<String, String> = r.labels.into_iter().collect();
        let nodes = self.blocking(move |s| s.nodes_visible_to(&user)).await?;
        let cluster = self.state.cluster_name.clone();
        let nodes = nodes
            .into_iter()
            .filter(|n| want.iter().all(|(k, v)| n.metadata.labels.get(k) == Some(v)))
            .map(|n| to_proto_node(n, &cluster))
            .collect();
        Ok(Response::new(ListNodesResponse { nodes }))
    }

    async fn resolve_node(&self, req: Request<ResolveNodeRequest>) -> Result<Response<ResolveNodeResponse>, Status> {
        self.require(&req, &[SystemRole::Proxy, SystemRole::Agent], "ResolveNode")?;
        let r = req.into_inner();
        let node = self.blocking(move |s| s.resolve_node(&r.host, r.port)).await?;
        Ok(Response::new(ResolveNodeResponse { node: Some(to_proto_node(node, &self.state.cluster_name)) }))
    }

    async fn authorize_ssh(&self, req: Request<AuthorizeSshRequest>) -> Result<Response<AuthorizeSshResponse>, Status> {
        // Agents ask on behalf of the root proxy, to explain a refusal (never for themselves).
        let id = self.require(&req, &[SystemRole::Node, SystemRole::Proxy, SystemRole::Agent], "AuthorizeSsh")?;
        let r = req.into_inner();
        let resp = self
            .blocking(move |s| {
                if id.has_system_role(SystemRole::Node) {
                    s.authorize_ssh(&r, Asker::Node { host_id: &id.name })
                } else {
                    s.authorize_ssh(&r, Asker::Proxy)
                }
            })
            .await?;
        let refused = !resp.allowed;
        let mut resp = Response::new(resp);
        if refused {
            // Counted as a denied request although the call itself succeeded.
            resp.extensions_mut().insert(crate::metrics::Refused);
        }
        Ok(resp)
    }

    async fn emit_audit_event(&self, req: Request<AuditEventRequest>) -> Result<Response<Empty>, Status> {
        let id = self.require(&req, &[SystemRole::Node, SystemRole::Proxy, SystemRole::Agent], "EmitAuditEvent")?;
        let r = req.into_inner();
        let mut v: serde_json::Value = serde_json::from_str(&r.event_json)
            .map_err(|e| Status::invalid_argument(format!("audit event is not JSON: {e}")))?;
        let obj = v.as_object_mut().ok_or_else(|| Status::invalid_argument("audit event must be a JSON object"))?;
        let event = obj
            .remove("event")
            .and_then(|e| e.as_str().map(str::to_string))
            .ok_or_else(|| Status::invalid_argument("audit event needs an \"event\" field"))?;
        // A host writes only its own kinds of event, stamped with who it is.
        if let Err(e) = crate::audit_policy::check_and_stamp(&id, &event, obj) {
            tracing::warn!(sender = %id.name, event = %event, "audit event refused: {e}");
            return Err(e.into());
        }
        // Answered once stored in the backend, so a sender keeps an event it spooled until
        // then; a resend with the same `id` is stored once.
        self.blocking(move |s| s.audit.record(&event, v)).await?;
        Ok(Response::new(Empty {}))
    }

    async fn search_audit_events(&self, req: Request<SearchAuditEventsRequest>) -> Result<Response<SearchAuditEventsResponse>, Status> {
        self.require_admin(&req, &[], &list_read(resource::EVENT), "SearchAuditEvents").await?;
        let r = req.into_inner();
        let events = self.blocking(move |s| s.audit.search(&r.event_type, r.limit as usize)).await?;
        Ok(Response::new(SearchAuditEventsResponse { events_json: events.iter().map(|e| e.to_string()).collect() }))
    }

    async fn status(&self, req: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        // A summary of everything (CAs, node and user counts): the broad permission.
        self.require_admin(&req, &[], &[Permission::new(ANY, verb::READ)], "Status").await?;
        let s = &self.state;
        let pin = portcullis_pki::x509::ca_pin(s.tls_ca.cert_pem()).map_err(AuthError::from)?;
        let nodes = s.list_nodes()?.len() as u32;
        let users = s.list_users()?.len() as u32;
        Ok(Response::new(StatusResponse {
            cluster_name: s.cluster_name.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            ca_fingerprints: vec![
                format!("user SSH CA {}", portcullis_pki::ssh::fingerprint(s.user_ca.public_key())),
                format!("host SSH CA {}", portcullis_pki::ssh::fingerprint(s.host_ca.public_key())),
                format!("TLS CA {pin}"),
            ],
            nodes,
            users,
            ca_pin: pin,
        }))
    }

    async fn validate_trusted_cluster(
        &self,
        req: Request<ValidateTrustedClusterRequest>,
    ) -> Result<Response<ValidateTrustedClusterResponse>, Status> {
        self.require(&req, &[SystemRole::Proxy], "ValidateTrustedCluster")?;
        let r = req.into_inner();
        tracing::info!(leaf = %r.leaf_cluster_name, remote = %r.remote_addr, "trusted cluster validation request");
        let resp = self.blocking(move |s| s.validate_trusted_cluster(&r)).await?;
        Ok(Response::new(resp))
    }

    async fn report_tunnels(&self, req: Request<ReportTunnelsRequest>) -> Result<Response<Empty>, Status> {
        let id = self.require(&req, &[SystemRole::Proxy], "ReportTunnels")?;
        let r = req.into_inner();
        if r.proxy_id != id.name {
            return Err(Status::permission_denied(format!("proxy {} may not report for {}", id.name, r.proxy_id)));
        }
        let tunnels: std::collections::BTreeMap<String, u32> = r.tunnels.into_iter().collect();
        self.blocking(move |s| s.report_tunnels(&r.proxy_id, &tunnels)).await?;
        Ok(Response::new(Empty {}))
    }

    async fn list_remote_clusters(
        &self,
        req: Request<ListRemoteClustersRequest>,
    ) -> Result<Response<ListRemoteClustersResponse>, Status> {
        let needs = list_read(Kind::RemoteCluster.as_str());
        let caller = self.require_admin(&req, &[SystemRole::Proxy], &needs, "ListRemoteClusters").await?;
        let r = req.into_inner();
        let resp = self
            .blocking(move |s| {
                if !r.user_ssh_cert.is_empty() {
                    let checker = s.ssh_user_checker(&r.user_ssh_cert)?;
                    return s.remote_clusters_for(Some(&checker), &r.name);
                }
                if r.user_tls_cert.is_empty() {
                    if !caller.has_system_role(SystemRole::Admin) {
                        return Err(AuthError::bad("a proxy must name the user (user_tls_cert)"));
                    }
                    return s.remote_clusters_for(None, &r.name);
                }
                let user = s.verify_user_tls(&r.user_tls_cert)?;
                let checker = s.user_checker(&user)?;
                s.remote_clusters_for(Some(&checker), &r.name)
            })
            .await?;
        Ok(Response::new(resp))
    }

    async fn list_user_locks(&self, req: Request<ListUserLocksRequest>) -> Result<Response<ListUserLocksResponse>, Status> {
        self.require_admin(&req, &[], &list_read(resource::LOCK), "ListUserLocks").await?;
        let (locks, admin) = self.blocking(|s| Ok((s.list_user_locks()?, s.admin_locks()?))).await?;
        let locks = locks
            .into_iter()
            .map(|l| UserLock {
                username: l.username,
                locked_until_unix: l.locked_until.unix_timestamp(),
                failures: l.failures,
                kind: "failed_logins".into(),
                message: String::new(),
            })
            .chain(admin.into_iter().map(|l| UserLock {
                username: l.user,
                locked_until_unix: l.until.unwrap_or(0),
                failures: 0,
                kind: "admin".into(),
                message: l.message,
            }))
            .collect();
        Ok(Response::new(ListUserLocksResponse { locks }))
    }

    async fn unlock_user(&self, req: Request<UnlockUserRequest>) -> Result<Response<UnlockUserResponse>, Status> {
        let needs = [Permission::new(resource::LOCK, verb::DELETE)];
        let caller = self.require_admin(&req, &[], &needs, "UnlockUser").await?;
        let r = req.into_inner();
        if r.username.trim().is_empty() {
            return Err(Status::invalid_argument("the user name is empty"));
        }
        let was_locked = self.blocking(move |s| s.unlock_user_fully(&r.username, &caller.name)).await?;
        Ok(Response::new(UnlockUserResponse { was_locked }))
    }

    async fn lock_user(&self, req: Request<LockUserRequest>) -> Result<Response<Empty>, Status> {
        let needs = [Permission::new(resource::LOCK, verb::CREATE), Permission::new(resource::LOCK, verb::UPDATE)];
        let caller = self.require_admin(&req, &[], &needs, "LockUser").await?;
        let r = req.into_inner();
        self.blocking(move |s| s.lock_user(&r.username, ttl(r.ttl_seconds), &r.message, &caller.name)).await?;
        Ok(Response::new(Empty {}))
    }

    async fn watch_access(
        &self,
        req: Request<WatchAccessRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<AccessSnapshotMessage>>, Status> {
        let id = self.require(&req, &[SystemRole::Node, SystemRole::Proxy, SystemRole::Agent], "WatchAccess")?;
        // Nodes decide only about themselves: they get no node list.
        let with_nodes = id.has_system_role(SystemRole::Proxy) || id.has_system_role(SystemRole::Agent);
        Ok(Response::new(Box::pin(self.access_hub.stream(with_nodes))))
    }

    async fn list_trusted_clusters(
        &self,
        req: Request<ListTrustedClustersRequest>,
    ) -> Result<Response<ListTrustedClustersResponse>, Status> {
        let needs = list_read(Kind::TrustedCluster.as_str());
        self.require_admin(&req, &[SystemRole::Agent], &needs, "ListTrustedClusters").await?;
        let clusters = self.blocking(|s| s.trusted_cluster_targets()).await?;
        Ok(Response::new(ListTrustedClustersResponse { clusters }))
    }
}

