//! `tctl tokens add|ls|rm` and the legacy `tctl nodes add|ls`.

use std::io::Write;
use std::time::Duration;

use portcullis_config::settings::parse_labels;
use portcullis_proto::auth::CreateTokenRequest;
use portcullis_types::{Kind, SystemRole, parse_duration};
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::cli::Format;
use crate::client::AuthApi;
use crate::error::TctlError;
use crate::output::{json_value, yaml_documents, yaml_value};
use crate::tables::{decode_all, resource_table};
use crate::write_out;

/// Teleport's default lifetime of a join token.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30 * 60);

/// What `tokens add` needs besides the connection.
#[derive(Debug, Clone, Default)]
pub struct AddRequest {
    pub types: String,
    pub ttl: Option<String>,
    pub value: Option<String>,
    pub labels: Option<String>,
}

/// A created token and what the instructions printed with it mention.
#[derive(Debug, Clone)]
pub struct TokenAdded {
    pub token: String,
    pub roles: Vec<SystemRole>,
    pub ttl: Duration,
    pub expires: Option<OffsetDateTime>,
    pub auth_addr: String,
    pub ca_pin: Option<String>,
    pub cluster_name: String,
}

/// `--type=node,proxy` into roles; at least one.
pub fn parse_types(s: &str) -> Result<Vec<SystemRole>, TctlError> {
    let roles = SystemRole::parse_list(s)?;
    if roles.is_empty() {
        return Err(TctlError::usage("--type needs at least one of node, proxy, trusted_cluster, agent"));
    }
    Ok(roles)
}

pub async fn add(api: &mut AuthApi, out: &mut dyn Write, req: &AddRequest, format: Format) -> Result<(), TctlError> {
    let roles = parse_types(&req.types)?;
    let ttl = match &req.ttl {
        Some(t) => parse_duration(t)?,
        None => DEFAULT_TTL,
    };
    if ttl.is_zero() {
        return Err(TctlError::usage("--ttl must be longer than zero"));
    }
    let value = req.value.clone().unwrap_or_default();
    if req.value.is_some() && value.trim().is_empty() {
        return Err(TctlError::usage("--value must not be empty"));
    }
    let labels = match &req.labels {
        Some(l) => parse_labels(l)?.into_iter().collect(),
        None => Default::default(),
    };
    let resp = api
        .create_token(CreateTokenRequest {
            roles: roles.iter().map(|r| r.type_name().to_string()).collect(),
            ttl_seconds: ttl.as_secs().max(1),
            value: value.trim().to_string(),
            labels,
        })
        .await?;
    // The pin only improves the printed join command, so a failure here is not fatal.
    let ca_pin = match api.status().await {
        Ok(s) if !s.ca_pin.is_empty() => Some(s.ca_pin),
        _ => None,
    };
    let added = TokenAdded {
        token: resp.token,
        roles,
        ttl,
        expires: (resp.expires_unix > 0)
            .then(|| OffsetDateTime::from_unix_timestamp(resp.expires_unix).ok())
            .flatten(),
        auth_addr: api.addr.clone(),
        ca_pin,
        cluster_name: api.identity.cluster_name.clone(),
    };
    let text = match format {
        Format::Text => token_added_text(&added),
        Format::Json => json_value(&TokenJson::from(&added))?,
        Format::Yaml => yaml_value(&TokenJson::from(&added))?,
    };
    write_out(out, &text)
}

/// `tokens add --format=json|yaml`.
#[derive(Debug, Serialize)]
struct TokenJson {
    token: String,
    roles: Vec<&'static str>,
    expires: Option<String>,
}

impl From<&TokenAdded> for TokenJson {
    fn from(t: &TokenAdded) -> Self {
        TokenJson {
            token: t.token.clone(),
            roles: t.roles.iter().map(|r| r.type_name()).collect(),
            expires: t.expires.and_then(|e| e.format(&Rfc3339).ok()),
        }
    }
}

/// `5 minutes`, `1 minute`, `30 seconds`: how Teleport words a token's lifetime.
pub fn expiry_phrase(ttl: Duration) -> String {
    let secs = ttl.as_secs();
    if secs < 60 {
        return if secs == 1 { "1 second".into() } else { format!("{secs} seconds") };
    }
    let minutes = (secs + 30) / 60;
    if minutes == 1 { "1 minute".into() } else { format!("{minutes} minutes") }
}

/// The text `tokens add` prints: the token, its lifetime and how to use it.
pub fn token_added_text(t: &TokenAdded) -> String {
    let trusted = t.roles.contains(&SystemRole::TrustedCluster);
    let mut s = String::new();
    if trusted {
        s.push_str(&format!("The cluster invite token: {}\n", t.token));
    } else {
        s.push_str(&format!("The invite token: {}\n", t.token));
    }
    s.push_str(&format!("This token will expire in {}.\n", expiry_phrase(t.ttl)));
    let pin = t.ca_pin.as_deref().map(|p| format!(" --ca-pin={p}")).unwrap_or_default();
    let mut joins = false;
    for role in &t.roles {
        let (what, binary) = match role {
            SystemRole::Node => ("node", "portcullis-node"),
            SystemRole::Proxy => ("proxy", "portcullis-proxy"),
            SystemRole::Agent => ("tunnel agent", "portcullis-tunnel-agent"),
            // Trust is established with `trusted_cluster` resources; the others never join.
            SystemRole::TrustedCluster | SystemRole::Auth | SystemRole::Admin | SystemRole::User => continue,
        };
        joins = true;
        s.push_str(&format!("\nRun this on the new {what} to join the cluster:\n\n"));
        s.push_str(&format!("{binary} start --token={} --auth-server={}{pin}\n", t.token, t.auth_addr));
    }
    if joins {
        s.push_str(&format!(
            "\nPlease note: {} must be reachable from the new host, and the token can be used \
             until it expires.\n",
            t.auth_addr
        ));
    }
    if trusted {
        let c = if t.cluster_name.is_empty() { "<this cluster>" } else { t.cluster_name.as_str() };
        s.push_str(&format!(
            "\nUse this token when defining a trusted cluster resource on a remote (leaf) cluster, e.g.:\n\n\
             kind: trusted_cluster\n\
             version: v2\n\
             metadata:\n  name: {c}\n\
             spec:\n  enabled: true\n  token: {token}\n  web_proxy_addr: {c}:3080\n  tunnel_addr: {c}:3024\n  \
             role_map:\n    - remote: \"access\"\n      local: [\"access\"]\n\n\
             then run 'tctl create trusted_cluster.yaml' on the leaf cluster.\n",
            token = t.token
        ));
    }
    s
}

pub async fn ls(api: &mut AuthApi, out: &mut dyn Write, format: Format) -> Result<(), TctlError> {
    let values = api.get_resources(Kind::Token, None).await?;
    let text = match format {
        Format::Text if values.is_empty() => "No active tokens found.\n".to_string(),
        Format::Text => resource_table(Kind::Token, &decode_all(&values)?, OffsetDateTime::now_utc()),
        Format::Yaml => yaml_documents(&values)?,
        Format::Json => crate::output::json_array(&values)?,
    };
    write_out(out, &text)
}

pub async fn rm(api: &mut AuthApi, out: &mut dyn Write, token: &str) -> Result<(), TctlError> {
    api.delete(Kind::Token, token).await?;
    write_out(out, &format!("Token {token} has been deleted\n"))
}

/// `tctl nodes ls`.
pub async fn nodes_ls(api: &mut AuthApi, out: &mut dyn Write, format: Format) -> Result<(), TctlError> {
    let values = api.get_resources(Kind::Node, None).await?;
    let text = match format {
        Format::Text => resource_table(Kind::Node, &decode_all(&values)?, OffsetDateTime::now_utc()),
        Format::Yaml => yaml_documents(&values)?,
        Format::Json => crate::output::json_array(&values)?,
    };
    write_out(out, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn added(roles: Vec<SystemRole>, pin: Option<&str>) -> TokenAdded {
        TokenAdded {
            token: "abcd123".into(),
            roles,
            ttl: Duration::from_secs(300),
            expires: None,
            auth_addr: "127.0.0.1:3025".into(),
            ca_pin: pin.map(str::to_string),
            cluster_name: "rootcluster.example.com".into(),
        }
    }

    #[test]
    fn trusted_cluster_token_text() {
        let s = token_added_text(&added(vec![SystemRole::TrustedCluster], None));
        let mut lines = s.lines();
        assert_eq!(lines.next(), Some("The cluster invite token: abcd123"));
        assert_eq!(lines.next(), Some("This token will expire in 5 minutes."));
        assert!(s.contains("kind: trusted_cluster") && s.contains("token: abcd123"), "{s}");
        assert!(s.contains("web_proxy_addr: rootcluster.example.com:3080"), "{s}");
        assert!(!s.contains("portcullis-node"), "{s}");
    }

    #[test]
    fn node_token_text() {
        let s = token_added_text(&added(vec![SystemRole::Node], Some("sha256:ab")));
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[0], "The invite token: abcd123");
        assert_eq!(lines[1], "This token will expire in 5 minutes.");
        assert!(lines.contains(&"Run this on the new node to join the cluster:"), "{s}");
        assert!(
            lines.contains(&"portcullis-node start --token=abcd123 --auth-server=127.0.0.1:3025 --ca-pin=sha256:ab"),
            "{s}"
        );
        let s = token_added_text(&added(vec![SystemRole::Node, SystemRole::Proxy], None));
        assert!(s.contains("portcullis-proxy start --token=abcd123 --auth-server=127.0.0.1:3025\n"), "{s}");
    }

    #[test]
    fn type_parsing_and_expiry_words() {
        assert_eq!(parse_types("trusted_cluster").unwrap(), vec![SystemRole::TrustedCluster]);
        assert_eq!(parse_types("trustedcluster").unwrap(), vec![SystemRole::TrustedCluster]);
        assert_eq!(parse_types("node,proxy").unwrap(), vec![SystemRole::Node, SystemRole::Proxy]);
        assert!(parse_types("").is_err());
        assert!(parse_types("bogus").unwrap_err().to_string().contains("bogus"));
        assert_eq!(expiry_phrase(Duration::from_secs(300)), "5 minutes");
        assert_eq!(expiry_phrase(Duration::from_secs(60)), "1 minute");
        assert_eq!(expiry_phrase(DEFAULT_TTL), "30 minutes");
        assert_eq!(expiry_phrase(Duration::from_secs(45)), "45 seconds");
    }

    #[test]
    fn json_form() {
        let mut a = added(vec![SystemRole::TrustedCluster], None);
        a.expires = OffsetDateTime::from_unix_timestamp(1_651_173_540).ok();
        let j = json_value(&TokenJson::from(&a)).unwrap();
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["token"], "abcd123");
        assert_eq!(v["roles"][0], "trusted_cluster");
        assert_eq!(v["expires"], "2022-04-28T19:19:00Z");
    }
}
