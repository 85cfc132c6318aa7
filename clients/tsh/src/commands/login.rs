//! `tsh login` (password login through the proxy's web API, keys and certificates saved in
//! the profile) and `tsh logout`.

use std::io::{BufRead, IsTerminal};
use std::time::Duration;

use base64::Engine;
use portcullis_pki::Secret;

use crate::Context;
use crate::cli::{Format, LoginArgs};
use crate::commands::status::print_status;
use crate::error::TshError;
use crate::http::{LoginRequest, PingResponse, TlsTrust, WebClient};
use crate::profile::{
    Credentials, DEFAULT_SSH_PORT, Profile, join_host_port, normalize_proxy, split_host_port,
};

/// Certificate lifetime when `--ttl` is not given (12h, as in Teleport; auth caps it by the
/// roles' `max_session_ttl`).
const DEFAULT_TTL: Duration = Duration::from_secs(12 * 3600);

/// `tsh login`.
pub async fn login(ctx: &Context, args: &LoginArgs) -> Result<(), TshError> {
    let current = ctx.store.current()?;
    let proxy_arg = match (&ctx.global.proxy, &current) {
        (Some(p), _) => p.clone(),
        (None, Some(c)) => c.web_proxy_addr.clone(),
        (None, None) => {
            return Err(TshError::Usage(
                "--proxy is required for the first login, e.g. tsh login --proxy=proxy.example.com:3080 --user=alice"
                    .into(),
            ));
        }
    };
    let web_addr = normalize_proxy(&proxy_arg)?;
    let web_host = split_host_port(&web_addr).0;
    let previous = ctx.store.load(&web_host)?;
    let user = ctx
        .global
        .user
        .clone()
        .filter(|u| !u.is_empty())
        .or_else(|| previous.as_ref().map(|p| p.username.clone()))
        .unwrap_or_else(crate::os_user);
    let insecure = ctx.global.insecure || previous.as_ref().is_some_and(|p| p.insecure);
    let ca_pems = previous
        .as_ref()
        .map(|p| ctx.store.tls_cas(p))
        .unwrap_or_default();
    let ttl = match &args.ttl {
        Some(t) => parse_ttl(t)?,
        None => DEFAULT_TTL,
    };

    let web = WebClient::new(&web_addr, &TlsTrust { insecure, ca_pems }, None)?;
    let ping = web.ping().await?;
    let password = read_password(&user)?;

    let ssh_key = portcullis_pki::ssh::generate_key()?;
    let tls_key = portcullis_pki::x509::generate_key()?;
    let request = LoginRequest {
        user: user.clone(),
        password: portcullis_types::webapi::Secret::new(password.into_inner()),
        ssh_pub_key: portcullis_pki::ssh::public_key_line(ssh_key.public_key())?,
        tls_pub_key: base64::engine::general_purpose::STANDARD
            .encode(portcullis_pki::x509::public_key_der(&tls_key)),
        ttl_seconds: ttl.as_secs(),
        cluster: args.target_cluster.clone().unwrap_or_default(),
    };
    let resp = web.login(&request).await?;
    drop(request);

    let bad = |what: &str, reason: String| TshError::BadResponse {
        what: what.into(),
        reason,
    };
    let ssh_cert = portcullis_pki::ssh::parse_certificate(&resp.ssh_cert)
        .map_err(|e| bad("login: SSH certificate", e.to_string()))?;
    if ssh_cert.public_key() != ssh_key.public_key().key_data() {
        return Err(bad(
            "login",
            "the SSH certificate is not for the key tsh sent".into(),
        ));
    }
    let ssh_host_cas = resp
        .cas
        .ssh_host_ca
        .iter()
        .map(|l| portcullis_pki::ssh::parse_public_key(l))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("login: SSH host CA", e.to_string()))?;
    let mut leaf_host_cas = Vec::new();
    for leaf in &resp.leaf_host_cas {
        for line in &leaf.ssh_host_ca {
            let key = portcullis_pki::ssh::parse_public_key(line)
                .map_err(|e| bad("login: leaf SSH host CA", e.to_string()))?;
            leaf_host_cas.push((leaf.cluster_name.clone(), key));
        }
    }
    if resp.cas.tls_ca_pem.is_empty() {
        return Err(bad("login", "no TLS CA certificate in the answer".into()));
    }

    let profile = Profile {
        web_proxy_addr: web_addr.clone(),
        ssh_proxy_addr: ssh_proxy_addr(&ping, &web_host),
        username: if resp.username.is_empty() {
            user
        } else {
            resp.username.clone()
        },
        cluster: if ping.cluster_name.is_empty() {
            resp.cluster_name.clone()
        } else {
            ping.cluster_name.clone()
        },
        selected_cluster: args.target_cluster.clone().unwrap_or_default(),
        insecure,
    };
    // A different user logging in to the same proxy replaces the previous one's keys.
    if let Some(prev) = previous.as_ref().filter(|p| p.username != profile.username) {
        ctx.store.remove(prev)?;
    }
    let creds = Credentials {
        ssh_key,
        ssh_cert,
        tls_cert_pem: resp.tls_cert_pem,
        tls_key_pem: Secret::new(tls_key.serialize_pem()),
        tls_ca_pems: resp.cas.tls_ca_pem,
        ssh_host_cas,
        leaf_host_cas,
    };
    ctx.store.save_credentials(&profile, &creds)?;
    ctx.store.save(&profile)?;
    print_status(ctx, &profile, &creds.ssh_cert, Format::Text)
}

/// `tsh logout`.
pub fn logout(ctx: &Context) -> Result<(), TshError> {
    match ctx.profile() {
        Ok(profile) => {
            ctx.store.remove(&profile)?;
            println!(
                "Logged out {} from {}.",
                profile.username,
                profile.proxy_host()
            );
            Ok(())
        }
        Err(TshError::NotLoggedIn) => {
            println!("All users logged out.");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// The proxy's SSH address from its ping answer: an unset or wildcard host means the host
/// the web API was reached at.
pub fn ssh_proxy_addr(ping: &PingResponse, web_host: &str) -> String {
    let advertised = ping.proxy.ssh.ssh_public_addr.trim();
    if advertised.is_empty() {
        return join_host_port(web_host, DEFAULT_SSH_PORT);
    }
    let (host, port) = split_host_port(advertised);
    let port = port.unwrap_or(DEFAULT_SSH_PORT);
    match host.as_str() {
        "" | "0.0.0.0" | "::" => join_host_port(web_host, port),
        _ => join_host_port(&host, port),
    }
}

/// `--ttl`: a plain number is minutes (as in Teleport), otherwise a duration like `12h`.
pub fn parse_ttl(s: &str) -> Result<Duration, TshError> {
    let t = s.trim();
    let d = match t.parse::<u64>() {
        Ok(minutes) => Duration::from_secs(minutes.saturating_mul(60)),
        Err(_) => portcullis_types::parse_duration(t)
            .map_err(|e| TshError::Usage(format!("--ttl: {e}")))?,
    };
    if d.is_zero() {
        return Err(TshError::Usage("--ttl must be positive".into()));
    }
    Ok(d)
}

/// The password: prompted on the terminal, or one line of standard input when it is not one.
fn read_password(user: &str) -> Result<Secret<String>, TshError> {
    if std::io::stdin().is_terminal() {
        let prompt = format!("Enter password for Portcullis user {user}:");
        return rpassword::prompt_password(prompt)
            .map(Secret::new)
            .map_err(|e| TshError::Password(e.to_string()));
    }
    let mut line = String::new();
    let n = std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| TshError::Password(e.to_string()))?;
    if n == 0 {
        return Err(TshError::Password("standard input is empty".into()));
    }
    let trimmed = line.trim_end_matches(['\n', '\r']).to_string();
    line.clear();
    Ok(Secret::new(trimmed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ping(ssh: &str) -> PingResponse {
        let mut p = PingResponse::default();
        p.proxy.ssh.ssh_public_addr = ssh.into();
        p
    }

    #[test]
    fn ssh_address_falls_back_to_the_web_host() {
        assert_eq!(
            ssh_proxy_addr(&ping(""), "p.example.com"),
            "p.example.com:3023"
        );
        assert_eq!(
            ssh_proxy_addr(&ping("0.0.0.0:4023"), "p.example.com"),
            "p.example.com:4023"
        );
        assert_eq!(
            ssh_proxy_addr(&ping("ssh.example.com"), "p"),
            "ssh.example.com:3023"
        );
        assert_eq!(
            ssh_proxy_addr(&ping("127.0.0.1:3023"), "p"),
            "127.0.0.1:3023"
        );
    }

    #[test]
    fn ttl_forms() {
        assert_eq!(parse_ttl("90").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_ttl("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_ttl("1m").unwrap(), Duration::from_secs(60));
        assert!(parse_ttl("0").is_err());
        assert!(parse_ttl("soon").is_err());
    }
}
