//! An auth service run in process on port 0 for the integration tests, and its stop.
// Each test file uses part of it.
#![allow(dead_code)]

use std::time::Duration;

use portcullis_config::{AuthSettings, CommonFlags, FileConfig};

pub struct Running {
    pub addr: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), portcullis_auth::AuthError>>,
    pub data_dir: std::path::PathBuf,
}

impl Running {
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.await.unwrap().unwrap();
    }
}

/// The settings of an auth for `cluster` with the given static tokens (`"node:value"`,
/// ...) in `dir`, plus `extra` lines under `auth_service:`.
pub fn settings(dir: &std::path::Path, cluster: &str, tokens: &[&str], extra: &str) -> AuthSettings {
    let tokens: Vec<String> = tokens.iter().map(|t| format!("{t:?}")).collect();
    let yaml = format!(
        "teleport:\n  data_dir: {}\nauth_service:\n  cluster_name: {cluster}\n  tokens: [{}]\n{extra}",
        dir.display(),
        tokens.join(", ")
    );
    AuthSettings::from_parts(&FileConfig::from_yaml(&yaml).unwrap(), &CommonFlags::default()).unwrap()
}

/// Starts auth for `cluster` with the given static tokens (`"node:value"`, ...) in `dir`,
/// and waits until it has written the admin identity.
pub async fn start(dir: &std::path::Path, cluster: &str, tokens: &[&str]) -> Running {
    portcullis_rpc::install_crypto_provider();
    let settings = settings(dir, cluster, tokens, "");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(portcullis_auth::run(settings, listener, async move {
        let _ = rx.await;
    }));
    wait_for_admin(dir, addr, tx, task).await
}

/// Starts auth with `settings` (its own backend, as `teleport.storage` says), and waits
/// until it has written the admin identity.
pub async fn start_settings(settings: AuthSettings) -> Running {
    portcullis_rpc::install_crypto_provider();
    let dir = settings.common.data_dir.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(portcullis_auth::run(settings, listener, async move {
        let _ = rx.await;
    }));
    wait_for_admin(&dir, addr, tx, task).await
}

/// Starts one auth replica in `dir` on a `backend` other replicas share. Replicas of one
/// cluster share its key-encryption key: `kek` is that file.
pub async fn start_replica(
    dir: &std::path::Path,
    cluster: &str,
    tokens: &[&str],
    backend: std::sync::Arc<dyn portcullis_storage::Backend>,
    kek: &std::path::Path,
) -> Running {
    portcullis_rpc::install_crypto_provider();
    let settings = settings(dir, cluster, tokens, &format!("  ca_key_encryption_key_file: {}\n", kek.display()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(portcullis_auth::run_on_backend(settings, backend, listener, async move {
        let _ = rx.await;
    }));
    wait_for_admin(dir, addr, tx, task).await
}

async fn wait_for_admin(
    dir: &std::path::Path,
    addr: String,
    tx: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), portcullis_auth::AuthError>>,
) -> Running {
    let path = portcullis_auth::admin_identity_path(dir);
    for _ in 0..200 {
        if path.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Running { addr, stop: Some(tx), task, data_dir: dir.to_path_buf() }
}
