//! `tctl status`: cluster name, version, CA pin and CA fingerprints.

use std::io::Write;

use portcullis_proto::auth::StatusResponse;

use crate::client::AuthApi;
use crate::error::TctlError;
use crate::write_out;

/// Two aligned columns, as Teleport prints `tctl status`.
pub fn status_text(s: &StatusResponse) -> String {
    let mut rows: Vec<(&str, String)> = vec![
        ("Cluster", s.cluster_name.clone()),
        ("Version", s.version.clone()),
        ("CA pin", s.ca_pin.clone()),
    ];
    for fp in &s.ca_fingerprints {
        rows.push(("CA", fp.clone()));
    }
    rows.push(("Nodes", s.nodes.to_string()));
    rows.push(("Users", s.users.to_string()));
    rows.iter().map(|(k, v)| format!("{k:<8} {v}\n")).collect()
}

pub async fn status(api: &mut AuthApi, out: &mut dyn Write) -> Result<(), TctlError> {
    let s = api.status().await?;
    write_out(out, &status_text(&s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let s = StatusResponse {
            cluster_name: "root".into(),
            version: "0.1.0".into(),
            ca_fingerprints: vec!["host SHA256:abc".into()],
            nodes: 2,
            users: 1,
            ca_pin: "sha256:00ff".into(),
        };
        let t = status_text(&s);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "Cluster  root");
        assert_eq!(lines[1], "Version  0.1.0");
        assert_eq!(lines[2], "CA pin   sha256:00ff");
        assert_eq!(lines[3], "CA       host SHA256:abc");
        assert_eq!(lines[4], "Nodes    2");
    }
}
