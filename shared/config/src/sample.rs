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

const LOG: &str = r#"  log: {output: stderr, severity: INFO, format: text}
tracing_service: {enabled: false, exporter_url: "grpc://jaeger:4317", sampling_rate_per_million: 1000000}
"#;

const AUTH: &str = r#"auth_service:
  cluster_name: rootcluster.example.com
  listen_addr: 0.0.0.0:3025
  # Static tokens never expire: prefer `tctl tokens add --ttl`.
  tokens: ["trusted_cluster:join-token", "node,proxy:other-token"]
"#;

const PROXY: &str = r#"proxy_service:
  web_listen_addr: 0.0.0.0:3080
  listen_addr: 0.0.0.0:3023
  tunnel_listen_addr: 0.0.0.0:3024
  public_addr: rootcluster.example.com:3080
  ssh_public_addr: rootcluster.example.com:3023
  tunnel_public_addr: rootcluster.example.com:3024
  # https_keypairs: [{key_file: key.pem, cert_file: cert.pem}]   # absent: self-signed
"#;

const NODE: &str = r#"ssh_service:
  listen_addr: 0.0.0.0:3022
  public_addr: 10.0.5.2:3022
  labels: {env: staging}
"#;

const AGENT: &str = "# The tunnel agent joins its (leaf) cluster with a proxy token and follows its\n# trusted_cluster resources.\n";

/// A sample for `which` = auth, proxy, node or agent.
pub fn sample(which: &str) -> String {
    let (join, body) = match which {
        "auth" => ("", AUTH),
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
}
