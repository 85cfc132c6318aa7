//! `tsh status`: who is logged in where, read from the saved SSH certificate.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use russh::keys::Certificate;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::Context;
use crate::cli::Format;
use crate::error::TshError;
use crate::profile::Profile;

/// The `.active` object of `tsh status -f json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActiveProfile {
    pub profile_url: String,
    pub username: String,
    pub cluster: String,
    pub roles: Vec<String>,
    pub traits: BTreeMap<String, Vec<String>>,
    pub logins: Vec<String>,
    /// RFC 3339.
    pub valid_until: String,
    pub extensions: Vec<String>,
    /// Unix seconds, for the text form.
    #[serde(skip)]
    pub valid_before: u64,
}

/// Reads what `cert` says about the login of `profile`.
pub fn active_profile(profile: &Profile, cert: &Certificate) -> Result<ActiveProfile, TshError> {
    let info = portcullis_pki::ssh::user_cert_info(cert)?;
    let cluster = if info.route_to_cluster.is_empty() {
        profile.active_cluster().to_string()
    } else {
        info.route_to_cluster.clone()
    };
    let until = i64::try_from(info.valid_before).unwrap_or(i64::MAX);
    let valid_until = OffsetDateTime::from_unix_timestamp(until)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default();
    // Teleport's own extensions carry roles and traits, shown separately.
    let extensions = cert
        .extensions()
        .keys()
        .filter(|k| !k.starts_with("teleport-"))
        .cloned()
        .collect();
    Ok(ActiveProfile {
        profile_url: format!("https://{}", profile.web_proxy_addr),
        username: info.username,
        cluster,
        roles: info.roles,
        traits: info.traits,
        logins: info.principals,
        valid_until,
        extensions,
        valid_before: info.valid_before,
    })
}

/// The JSON document of `tsh status -f json`.
pub fn status_json(active: &ActiveProfile) -> serde_json::Value {
    serde_json::json!({ "active": active })
}

/// The text of `tsh status` at time `now` (Unix seconds).
pub fn status_text(active: &ActiveProfile, key_path: &Path, now: u64) -> String {
    let until = i64::try_from(active.valid_before).unwrap_or(i64::MAX);
    let stamp = OffsetDateTime::from_unix_timestamp(until)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second] +0000 UTC"
            ))
            .ok()
        })
        .unwrap_or_else(|| active.valid_until.clone());
    let validity = if now >= active.valid_before {
        "[EXPIRED]".to_string()
    } else {
        // Rounded to the minute, as Teleport shows it.
        let left = (active.valid_before - now + 30) / 60 * 60;
        format!(
            "[valid for {}]",
            portcullis_types::duration::format_duration_go(Duration::from_secs(left))
        )
    };
    let row = |label: &str, value: &str| format!("  {:<20}{value}\n", format!("{label}:"));
    let mut out = format!("> {:<20}{}\n", "Profile URL:", active.profile_url);
    out.push_str(&row("Logged in as", &active.username));
    out.push_str(&row("Cluster", &active.cluster));
    out.push_str(&row("Roles", &active.roles.join(", ")));
    out.push_str(&row("Logins", &active.logins.join(", ")));
    out.push_str(&row("Valid until", &format!("{stamp} {validity}")));
    out.push_str(&row("Extensions", &active.extensions.join(", ")));
    out.push_str(&row("Key", &key_path.display().to_string()));
    out
}

/// Prints the status of the current profile (also used after `tsh login`).
pub fn print_status(
    ctx: &Context,
    profile: &Profile,
    cert: &Certificate,
    format: Format,
) -> Result<(), TshError> {
    let active = active_profile(profile, cert)?;
    match format {
        Format::Json => println!("{}", pretty(&status_json(&active))),
        Format::Text => {
            let key = profile.key_paths(&ctx.store.home).private_key;
            print!("{}", status_text(&active, &key, portcullis_pki::unix_now()));
        }
    }
    Ok(())
}

/// `tsh status`.
pub fn status(ctx: &Context, format: Format) -> Result<(), TshError> {
    let (profile, creds) = ctx.logged_in()?;
    print_status(ctx, &profile, &creds.ssh_cert, format)
}

pub(crate) fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_pki::ssh::{SshCa, UserCertRequest, generate_key};

    fn profile() -> Profile {
        Profile {
            web_proxy_addr: "proxy.example.com:3080".into(),
            ssh_proxy_addr: "proxy.example.com:3023".into(),
            username: "alice".into(),
            cluster: "root".into(),
            selected_cluster: String::new(),
            insecure: false,
        }
    }

    fn cert(route: &str) -> Certificate {
        let ca = SshCa::generate().unwrap();
        let key = generate_key().unwrap();
        ca.sign_user_cert(&UserCertRequest {
            public_key: key.public_key().clone(),
            username: "alice".into(),
            principals: vec!["alice".into(), "visitor".into()],
            ttl: Duration::from_secs(12 * 3600),
            roles: vec!["access".into(), "editor".into()],
            traits: BTreeMap::from([("logins".into(), vec!["alice".into(), "visitor".into()])]),
            route_to_cluster: route.into(),
            permit_port_forwarding: true,
            permit_agent_forwarding: false,
        })
        .unwrap()
    }

    #[test]
    fn json_has_the_documented_shape() {
        let active = active_profile(&profile(), &cert("")).unwrap();
        let v = status_json(&active);
        let a = &v["active"];
        assert_eq!(a["profile_url"], "https://proxy.example.com:3080");
        assert_eq!(a["username"], "alice");
        assert_eq!(a["cluster"], "root");
        assert_eq!(a["roles"], serde_json::json!(["access", "editor"]));
        assert_eq!(a["logins"], serde_json::json!(["alice", "visitor"]));
        assert_eq!(
            a["traits"]["logins"],
            serde_json::json!(["alice", "visitor"])
        );
        assert_eq!(
            a["extensions"],
            serde_json::json!(["permit-port-forwarding", "permit-pty"])
        );
        let until = a["valid_until"].as_str().unwrap();
        let parsed = OffsetDateTime::parse(until, &Rfc3339).unwrap();
        assert_eq!(parsed.unix_timestamp() as u64, active.valid_before);
        assert!(a.get("valid_before").is_none());
    }

    #[test]
    fn leaf_route_is_the_cluster() {
        let active = active_profile(&profile(), &cert("leaf.example.com")).unwrap();
        assert_eq!(active.cluster, "leaf.example.com");
    }

    #[test]
    fn text_shows_validity_and_key() {
        let active = active_profile(&profile(), &cert("")).unwrap();
        let now = active.valid_before - (11 * 3600 + 59 * 60);
        let text = status_text(&active, Path::new("/h/keys/proxy.example.com/alice"), now);
        assert!(
            text.starts_with("> Profile URL:        https://proxy.example.com:3080\n"),
            "{text}"
        );
        assert!(text.contains("  Logged in as:       alice\n"), "{text}");
        assert!(
            text.contains("  Logins:             alice, visitor\n"),
            "{text}"
        );
        assert!(text.contains("[valid for 11h59m0s]"), "{text}");
        assert!(text.contains("/h/keys/proxy.example.com/alice"), "{text}");
        let expired = status_text(&active, Path::new("/k"), active.valid_before + 1);
        assert!(expired.contains("[EXPIRED]"), "{expired}");
    }
}
