//! Commented sample configuration files printed by each service's `configure` command.

/// A sample for `which` = auth, proxy, node or agent.
pub fn sample(which: &str) -> String {
    let head = "# Portcullis configuration (teleport.yaml style). Flags given to `start` override it.\n\
version: v3\n\
teleport:\n\
  nodename: HOSTNAME          # default: the host name\n\
  data_dir: /var/lib/portcullis\n";
    let join = "  auth_server: auth.example.com:3025\n\
  auth_token: /path/to/token-file   # or the token itself\n\
  # ca_pin: \"sha256:...\"          # pin of the cluster CA for the first join (tctl status prints it)\n";
    let log = "  log: {output: stderr, severity: INFO, format: text}\n";
    let body = match which {
        "auth" => "auth_service:\n\
  cluster_name: rootcluster.example.com\n\
  listen_addr: 0.0.0.0:3025\n\
  # Static tokens never expire: prefer `tctl tokens add --ttl`.\n\
  tokens: [\"trusted_cluster:join-token\", \"node,proxy:other-token\"]\n",
        "proxy" => "proxy_service:\n\
  web_listen_addr: 0.0.0.0:3080\n\
  listen_addr: 0.0.0.0:3023\n\
  tunnel_listen_addr: 0.0.0.0:3024\n\
  public_addr: rootcluster.example.com:3080\n\
  ssh_public_addr: rootcluster.example.com:3023\n\
  tunnel_public_addr: rootcluster.example.com:3024\n\
  # https_keypairs: [{key_file: key.pem, cert_file: cert.pem}]   # absent: self-signed\n",
        "node" => "ssh_service:\n\
  listen_addr: 0.0.0.0:3022\n\
  public_addr: 10.0.5.2:3022\n\
  labels: {env: staging}\n",
        _ => "# The tunnel agent joins its (leaf) cluster and follows its trusted_cluster resources.\n",
    };
    let joined = if which == "auth" { "" } else { join };
    format!(
        "{head}{joined}{log}tracing_service: {{enabled: false, exporter_url: \"grpc://jaeger:4317\", sampling_rate_per_million: 1000000}}\n{body}"
    )
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
