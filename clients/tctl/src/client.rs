//! Finding and calling the auth service: the admin identity on the auth host (`-c CONFIG`),
//! or `--auth-server ADDR -i IDENTITY_FILE` elsewhere.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use portcullis_config::settings::with_default_port;
use portcullis_config::{AuthSettings, CommonFlags, FileConfig, ports};
use portcullis_pki::Identity;
use portcullis_pki::x509::AUTH_SERVER_NAME;
use portcullis_proto::auth::auth_client::AuthClient;
use portcullis_proto::auth::{
    CreateTokenRequest, CreateTokenResponse, DeleteResourceRequest, GenerateUserCertsRequest,
    GetResourcesRequest, SetPasswordRequest, StatusRequest, StatusResponse, UpsertResourceRequest,
    UpsertResourceResponse, UserCerts,
};
use portcullis_rpc::{ClientTls, RpcError};
use portcullis_types::Kind;
use serde_json::Value;
use portcullis_rpc::Channel;
use tonic::{Code, Status};

use crate::cli::GlobalFlags;
use crate::error::TctlError;

/// Used when neither `-c` nor `--auth-server`/`-i` is given, if it exists.
pub const DEFAULT_CONFIG: &str = "/etc/portcullis.yaml";
/// The identity the auth service writes into its `data_dir` for `tctl` on the same host.
pub const ADMIN_IDENTITY_FILE: &str = "admin-identity.json";

const NO_TARGET_HELP: &str = "tctl does not know which auth service to use: on the auth host \
     pass -c/--config CONFIG_FILE (or set PORTCULLIS_CONFIG) to use the admin identity in its \
     data_dir; elsewhere pass --auth-server=HOST:3025 and -i IDENTITY_FILE (written by \
     'tctl auth sign')";

/// Where to connect and with which credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Auth servers, `host:port`; whichever answers is used.
    pub addrs: Vec<String>,
    pub identity_path: PathBuf,
    /// True when the identity is the auth host's admin identity from the config's data_dir.
    pub admin_identity: bool,
}

/// Works out the auth address and identity file from the flags and, when given (or found at
/// `default_config`), the auth service's configuration file.
pub fn resolve_target(g: &GlobalFlags, default_config: Option<&Path>) -> Result<Target, TctlError> {
    let config = g.config.clone().or_else(|| {
        // Only fall back to the default file when the user gave no explicit target at all.
        if g.auth_server.is_empty() && g.identity.is_none() {
            default_config.filter(|p| p.exists()).map(Path::to_path_buf)
        } else {
            None
        }
    });
    let settings = match &config {
        Some(path) => {
            let file = FileConfig::load(path)?;
            let flags = CommonFlags { config: Some(path.clone()), ..Default::default() };
            Some(AuthSettings::from_parts(&file, &flags)?)
        }
        None => None,
    };
    let addrs = match (flag_addrs(&g.auth_server)?, &settings) {
        (Some(a), _) => a,
        // The file's `teleport.auth_servers` when it lists any, else this host's auth.
        (None, Some(s)) if !s.common.auth_servers.is_empty() => s.common.auth_servers.clone(),
        (None, Some(s)) => vec![dialable(s.listen_addr).to_string()],
        (None, None) if g.identity.is_some() => {
            return Err(TctlError::usage(
                "-i IDENTITY_FILE needs --auth-server=HOST:3025 (the address of the auth service)",
            ));
        }
        (None, None) => return Err(TctlError::usage(NO_TARGET_HELP)),
    };
    let (identity_path, admin_identity) = match (&g.identity, &settings) {
        (Some(p), _) => (p.clone(), false),
        (None, Some(s)) => (s.common.data_dir.join(ADMIN_IDENTITY_FILE), true),
        (None, None) => {
            return Err(TctlError::usage(
                "--auth-server needs -i IDENTITY_FILE (written by 'tctl auth sign'), or use -c CONFIG_FILE on the auth host",
            ));
        }
    };
    Ok(Target { addrs, identity_path, admin_identity })
}

/// `--auth-server` values (repeated or comma-separated), each with the default port when it
/// has none; `None` when the flag was not given.
fn flag_addrs(given: &[String]) -> Result<Option<Vec<String>>, TctlError> {
    if given.is_empty() {
        return Ok(None);
    }
    let mut out: Vec<String> = Vec::new();
    for a in given {
        let a = a.trim();
        if a.is_empty() || a.contains(char::is_whitespace) || a.contains('/') {
            return Err(TctlError::usage(format!("--auth-server: {a:?} is not a host:port address")));
        }
        let full = with_default_port(a, ports::AUTH);
        if !out.contains(&full) {
            out.push(full);
        }
    }
    Ok(Some(out))
}

/// A listen address as a client can dial it: the wildcard address becomes loopback.
fn dialable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port()),
        _ => addr,
    }
}

/// Reads the identity named by `target`, explaining the usual cause when the admin one is missing.
pub fn load_identity(target: &Target) -> Result<Identity, TctlError> {
    Identity::load(&target.identity_path).map_err(|e| {
        if target.admin_identity {
            TctlError::usage(format!(
                "{e} (the auth service writes this file when it starts: is it running on this host \
                 with this configuration, and may this user read its data_dir?)"
            ))
        } else {
            TctlError::Pki(e)
        }
    })
}

/// Turns a gRPC status into the message shown to the user; the auth service writes
/// user-facing messages, so they are shown as they are.
pub fn status_error(addr: &str, s: &Status) -> TctlError {
    let msg = if s.message().is_empty() { s.code().description().to_string() } else { s.message().to_string() };
    match s.code() {
        // Every auth server failed: the message names each address and why.
        Code::Unavailable if msg.starts_with(portcullis_rpc::failover::UNREACHABLE) => TctlError::AuthUnreachable(msg),
        Code::Unavailable => TctlError::Unreachable { addr: addr.to_string(), reason: msg },
        _ => TctlError::Api(msg),
    }
}

/// A connected client of the auth service, with the identity it uses.
pub struct AuthApi {
    client: AuthClient<Channel>,
    pub addr: String,
    pub identity: Identity,
}

/// Connects with the flags' target; fails early when the auth service is unreachable.
pub async fn connect(g: &GlobalFlags) -> Result<AuthApi, TctlError> {
    let target = resolve_target(g, Some(Path::new(DEFAULT_CONFIG)))?;
    let identity = load_identity(&target)?;
    let addr = target.addrs.join(",");
    tracing::debug!(addrs = %addr, identity = %target.identity_path.display(), "connecting to the auth service");
    let tls = ClientTls::from_identity(&identity, AUTH_SERVER_NAME);
    // Reaches one server now (so an unreachable auth is reported before anything else);
    // later calls fail over between all of them.
    let channel = portcullis_rpc::connect_auth(&target.addrs, &tls).await.map_err(|e| match e {
        RpcError::Unreachable(msg) => TctlError::AuthUnreachable(msg),
        RpcError::Connect { reason, .. } => TctlError::Unreachable { addr: addr.clone(), reason },
        other => TctlError::Unreachable { addr: addr.clone(), reason: other.to_string() },
    })?;
    Ok(AuthApi { client: AuthClient::new(channel), addr, identity })
}

impl AuthApi {
    pub(crate) fn err(&self, s: &Status) -> TctlError {
        status_error(&self.addr, s)
    }

    /// Resources of `kind` (one when `name` is given), as the JSON values auth sent.
    pub async fn get_resources(&mut self, kind: Kind, name: Option<&str>) -> Result<Vec<Value>, TctlError> {
        let req = GetResourcesRequest { kind: kind.as_str().into(), name: name.unwrap_or_default().into() };
        let resp = self.client.get_resources(req).await.map_err(|s| self.err(&s))?.into_inner();
        resp.resources_json
            .iter()
            .map(|j| serde_json::from_str(j).map_err(|e| TctlError::Protocol(format!("resource is not JSON: {e}"))))
            .collect()
    }

    /// Upsert returning the raw status so callers can word `AlreadyExists` for their command.
    pub async fn upsert(&mut self, resource_json: String, create_only: bool) -> Result<UpsertResourceResponse, Status> {
        let req = UpsertResourceRequest { resource_json, create_only };
        self.client.upsert_resource(req).await.map(tonic::Response::into_inner)
    }

    pub async fn delete(&mut self, kind: Kind, name: &str) -> Result<(), TctlError> {
        let req = DeleteResourceRequest { kind: kind.as_str().into(), name: name.into() };
        self.client.delete_resource(req).await.map_err(|s| self.err(&s))?;
        Ok(())
    }

    pub async fn create_token(&mut self, req: CreateTokenRequest) -> Result<CreateTokenResponse, TctlError> {
        let r = self.client.create_token(req).await.map_err(|s| self.err(&s))?;
        Ok(r.into_inner())
    }

    pub async fn set_password(&mut self, username: &str, password: String) -> Result<(), TctlError> {
        let req = SetPasswordRequest { username: username.into(), password };
        self.client.set_password(req).await.map_err(|s| self.err(&s))?;
        Ok(())
    }

    pub async fn status(&mut self) -> Result<StatusResponse, TctlError> {
        let r = self.client.status(StatusRequest {}).await.map_err(|s| self.err(&s))?;
        Ok(r.into_inner())
    }

    pub async fn generate_user_certs(&mut self, req: GenerateUserCertsRequest) -> Result<UserCerts, TctlError> {
        let r = self.client.generate_user_certs(req).await.map_err(|s| self.err(&s))?;
        Ok(r.into_inner())
    }

    /// Users locked now after failed logins; none from an auth service too old to lock users.
    pub async fn list_user_locks(&mut self) -> Result<Vec<portcullis_proto::auth::UserLock>, TctlError> {
        match self.client.list_user_locks(portcullis_proto::auth::ListUserLocksRequest {}).await {
            Ok(r) => Ok(r.into_inner().locks),
            Err(s) if s.code() == Code::Unimplemented => Ok(Vec::new()),
            Err(s) => Err(self.err(&s)),
        }
    }

    /// Locks a user (until unlocked, or for `ttl`).
    pub async fn lock_user(&mut self, username: &str, ttl: Option<std::time::Duration>, message: &str) -> Result<(), TctlError> {
        let req = portcullis_proto::auth::LockUserRequest {
            username: username.into(),
            ttl_seconds: ttl.map(|t| t.as_secs()).unwrap_or(0),
            message: message.into(),
        };
        match self.client.lock_user(req).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::Unimplemented => {
                Err(TctlError::Api("this auth service cannot lock users (it is older than tctl); upgrade it".into()))
            }
            Err(s) => Err(self.err(&s)),
        }
    }

    /// Lifts a user's lock; true when it was locked.
    pub async fn unlock_user(&mut self, username: &str) -> Result<bool, TctlError> {
        let req = portcullis_proto::auth::UnlockUserRequest { username: username.into() };
        let r = self.client.unlock_user(req).await.map_err(|s| self.err(&s))?;
        Ok(r.into_inner().was_locked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> GlobalFlags {
        GlobalFlags::default()
    }

    #[test]
    fn config_gives_loopback_address_and_admin_identity() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("p.yaml");
        let data = dir.path().join("data");
        std::fs::write(
            &cfg,
            format!("teleport:\n  data_dir: {}\nauth_service:\n  cluster_name: c\n  listen_addr: 0.0.0.0:4025\n", data.display()),
        )
        .unwrap();
        let g = GlobalFlags { config: Some(cfg.clone()), ..flags() };
        let t = resolve_target(&g, None).unwrap();
        assert_eq!(t.addrs, vec!["127.0.0.1:4025"]);
        assert_eq!(t.identity_path, data.join(ADMIN_IDENTITY_FILE));
        assert!(t.admin_identity);
        // The default config is used only when nothing else is given.
        let t = resolve_target(&flags(), Some(&cfg)).unwrap();
        assert_eq!(t.addrs, vec!["127.0.0.1:4025"]);
        // --auth-server overrides the file's address.
        let g = GlobalFlags { config: Some(cfg), auth_server: vec!["auth.example.com".into()], ..flags() };
        assert_eq!(resolve_target(&g, None).unwrap().addrs, vec!["auth.example.com:3025"]);
        let e = load_identity(&resolve_target(&g, None).unwrap()).unwrap_err().to_string();
        assert!(e.contains("admin-identity.json") && e.contains("is it running"), "{e}");
    }

    #[test]
    fn config_auth_servers_are_used_when_listed() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("p.yaml");
        std::fs::write(
            &cfg,
            format!(
                "teleport:\n  data_dir: {}\n  auth_servers: [auth-a:3025, auth-b]\nauth_service:\n  cluster_name: c\n",
                dir.path().display()
            ),
        )
        .unwrap();
        let t = resolve_target(&GlobalFlags { config: Some(cfg), ..flags() }, None).unwrap();
        assert_eq!(t.addrs, vec!["auth-a:3025", "auth-b:3025"]);
    }

    #[test]
    fn identity_file_elsewhere() {
        let g = GlobalFlags { auth_server: vec!["10.0.0.1:3025".into()], identity: Some("id.json".into()), ..flags() };
        let t = resolve_target(&g, Some(Path::new("/nonexistent/p.yaml"))).unwrap();
        assert_eq!(t, Target { addrs: vec!["10.0.0.1:3025".into()], identity_path: "id.json".into(), admin_identity: false });
        // Several auth servers, each with the default port when it has none; repeats count once.
        let g = GlobalFlags {
            auth_server: vec!["a".into(), "b:4025".into(), "a:3025".into()],
            identity: Some("id.json".into()),
            ..flags()
        };
        assert_eq!(resolve_target(&g, None).unwrap().addrs, vec!["a:3025", "b:4025"]);
        let g = GlobalFlags { auth_server: vec!["a".into(), "".into()], identity: Some("id.json".into()), ..flags() };
        let e = resolve_target(&g, None).unwrap_err().to_string();
        assert!(e.contains("--auth-server: \"\" is not a host:port address"), "{e}");
    }

    #[test]
    fn missing_target_is_explained() {
        let e = resolve_target(&flags(), Some(Path::new("/nonexistent/p.yaml"))).unwrap_err().to_string();
        assert!(e.contains("-c") && e.contains("--auth-server") && e.contains("-i"), "{e}");
        let g = GlobalFlags { auth_server: vec!["h".into()], ..flags() };
        assert!(resolve_target(&g, None).unwrap_err().to_string().contains("-i IDENTITY_FILE"));
        let g = GlobalFlags { identity: Some("x".into()), ..flags() };
        assert!(resolve_target(&g, None).unwrap_err().to_string().contains("--auth-server"));
        let g = GlobalFlags { config: Some("/nonexistent/p.yaml".into()), ..flags() };
        assert!(resolve_target(&g, None).unwrap_err().to_string().contains("/nonexistent/p.yaml"));
    }

    #[test]
    fn status_messages() {
        let e = status_error("a:1", &Status::permission_denied("access denied: nope")).to_string();
        assert_eq!(e, "access denied: nope");
        let e = status_error("a:1", &Status::unavailable("connection refused")).to_string();
        assert_eq!(e, "cannot reach the auth service at a:1: connection refused");
        // The failover channel's message already names every address: shown as it is.
        let m = "the auth service is unreachable: tried a:1 (connection refused), b:2 (timed out after 1s)";
        assert_eq!(status_error("a:1,b:2", &Status::unavailable(m)).to_string(), m);
        let e = status_error("a:1", &Status::new(Code::NotFound, "")).to_string();
        assert!(!e.is_empty());
    }
}
