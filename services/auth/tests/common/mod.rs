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

/// Starts auth for `cluster` with the given static tokens (`"node:value"`, ...) in `dir`,
/// and waits until it has written the admin identity.
pub async fn start(dir: &std::path::Path, cluster: &str, tokens: &[&str]) -> Running {
    portcullis_rpc::install_crypto_provider();
    let tokens: Vec<String> = tokens.iter().map(|t| format!("{t:?}")).collect();
    let yaml = format!(
        "teleport:\n  data_dir: {}\nauth_service:\n  cluster_name: {cluster}\n  tokens: [{}]\n",
        dir.display(),
        tokens.join(", ")
    );
    let settings = AuthSettings::from_parts(&FileConfig::from_yaml(&yaml).unwrap(), &CommonFlags::default()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(portcullis_auth::run(settings, listener, async move {
        let _ = rx.await;
    }));
    let path = portcullis_auth::admin_identity_path(dir);
    for _ in 0..200 {
        if path.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Running { addr, stop: Some(tx), task, data_dir: dir.to_path_buf() }
}
