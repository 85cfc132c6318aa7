//! Commented sample configuration files printed by each service's `configure` command.

const HEAD: &str = r#"# Portcullis configuration (teleport.yaml style). Flags given to `start` override it.
version: v3
teleport:
  nodename: HOSTNAME          # default: the host name
  data_dir: /var/lib/portcullis
"#;

const JOIN: &str = r#"  auth_server: auth.example.com:3025
  auth_token: /path/to/token-file   # or the token itself
  # ca_pin: "sha256:..."          # pin of the cluster CA for the first join (tctl status prints it)
"#;

const STORAGE: &str = r#"  # Where auth keeps its state. Default: an embedded sled database under data_dir (one auth
  # process per data_dir). With postgresql, any number of auth processes of one cluster share
  # the database and each serves every call; every one of them must use the same
  # auth_service.ca_key_encryption_key_file (a copy of one key), or it refuses to start.
  # conn_string may also be the path of a file holding it (a mounted secret).
  # storage:
  #   type: postgresql
  #   conn_string: "postgresql://portcullis:PASSWORD@db.example.com:5432/portcullis?sslmode=verify-full"
"#;

const LOG: &str = r#"  log: {output: stderr, severity: INFO, format: text}
tracing_service: {enabled: false, exporter_url: "grpc://jaeger:4317", sampling_rate_per_million: 1000000}
"#;

const AUTH: &str = r#"auth_service:
  cluster_name: rootcluster.example.com
  listen_addr: 0.0.0.0:3025
  # Static tokens never expire: prefer `tctl tokens add --ttl`.
  tokens: ["trusted_cluster:join-token", "node,proxy:other-token"]
  # Seals the CA private keys in the database (AES-256-GCM). Created on first start with 32
  # random bytes, mode 0600; keep it outside database backups and back it up separately:
  # without it the CAs cannot be used. Default: <data_dir>/ca-kek. Several auth replicas on
  # one database (teleport.storage) must all point to the same key: copy the first one's file.
  # ca_key_encryption_key_file: /etc/portcullis/ca-kek
  # Every listener: handshake and pre-authentication timeouts, connection caps, keep-alives.
  connection_limits:
    handshake_timeout: 10s            # TLS handshake / SSH version exchange
    pre_auth_timeout: 30s             # SSH: authenticated within this or disconnected
    max_connections_per_address: 512  # concurrent, per client IP address
    max_connections: 16384            # concurrent, per listener
    keepalive_interval: 30s           # TCP, HTTP/2 and SSH; 3 missed and the peer is dropped
  # Password logins: a user is locked for `duration` after `max_failures` failed logins within
  # `window` (0 failures: never); `tctl users unlock NAME` lifts it early.
  lockout: {max_failures: 5, window: 30m, duration: 20m}
  # argon2 hashes at once (~19 MiB each) and logins that may wait; more are refused at once.
  password_hashing: {max_concurrent: 2, max_queued: 64}
  # Join calls per client address: a burst, then per_second (burst 0: no limit).
  join_rate_limit: {burst: 20, per_second: 5}
"#;

const PROXY: &str = r#"proxy_service:
  web_listen_addr: 0.0.0.0:3080
  listen_addr: 0.0.0.0:3023
  tunnel_listen_addr: 0.0.0.0:3024
  public_addr: rootcluster.example.com:3080
  ssh_public_addr: rootcluster.example.com:3023
  tunnel_public_addr: rootcluster.example.com:3024
  # https_keypairs: [{key_file: key.pem, cert_file: cert.pem}]   # absent: self-signed
  # Web, SSH and tunnel listeners: handshake and pre-authentication timeouts, connection caps, keep-alives.
  connection_limits:
    handshake_timeout: 10s            # TLS handshake / SSH version exchange
    pre_auth_timeout: 30s             # SSH: authenticated within this or disconnected
    max_connections_per_address: 1024 # concurrent, per client IP address
    max_connections: 16384            # concurrent, per listener
    keepalive_interval: 30s           # TCP, HTTP/2 and SSH; 3 missed and the peer is dropped
  # Requests without a client certificate (login, ping, trusted-cluster validation, ...) per
  # client address: a burst, then per_second; more get 429 with Retry-After (burst 0: no limit).
  rate_limit: {burst: 20, per_second: 5}
"#;

const NODE: &str = r#"ssh_service:
  listen_addr: 0.0.0.0:3022
  public_addr: 10.0.5.2:3022
  labels: {env: staging}
  # Every listener: handshake and pre-authentication timeouts, connection caps, keep-alives.
  connection_limits:
    handshake_timeout: 10s            # TLS handshake / SSH version exchange
    pre_auth_timeout: 30s             # SSH: authenticated within this or disconnected
    max_connections_per_address: 1024 # concurrent, per client IP address
    max_connections: 16384            # concurrent, per listener
    keepalive_interval: 30s           # TCP, HTTP/2 and SSH; 3 missed and the peer is dropped
"#;

const AGENT: &str = "# The tunnel agent joins its (leaf) cluster with a proxy token and follows its\n# trusted_cluster resources.\n";

/// A sample for `which` = auth, proxy, node or agent.
pub fn sample(which: &str) -> String {
    let (join, body) = match which {
        "auth" => (STORAGE, AUTH),
        "proxy" => (JOIN, PROXY),
        "node" => (JOIN, NODE),
        _ => (JOIN, AGENT),
    };
    format!("{HEAD}{join}{LOG}{body}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_sample_parses() {
        for w in ["auth", "proxy", "node", "agent"] {
            let text = super::sample(w);
            crate::FileConfig::from_yaml(&text).unwrap_or_else(|e| panic!("{w}: {e}\n{text}"));
        }
    }

    #[test]
    fn the_auth_sample_shows_postgresql_storage_and_it_parses_uncommented() {
        let text = super::sample("auth");
        assert!(text.contains("# storage:") && text.contains("#   type: postgresql"), "{text}");
        assert!(!super::sample("node").contains("storage:"), "storage is for auth only");
        let uncommented = text.replace("  # storage:", "  storage:").replace("  #   ", "    ");
        let file = crate::FileConfig::from_yaml(&uncommented).unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
        let a = crate::AuthSettings::from_parts(&file, &crate::CommonFlags::default()).unwrap();
        assert_eq!(a.storage.describe(), "the PostgreSQL database at db.example.com:5432");
    }
}
