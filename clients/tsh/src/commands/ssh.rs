//! `tsh ssh`: SSH to the proxy with the user certificate, a `direct-tcpip` (or
//! `proxy:host:port@cluster` subsystem) channel to the node, and an end-to-end SSH session
//! to the node inside it. Refusals are explained by asking the proxy's web API why.

use std::io::IsTerminal;
use std::net::IpAddr;
use std::sync::Arc;

use russh::Disconnect;

use crate::Context;
use crate::cli::SshArgs;
use crate::error::TshError;
use crate::http::AuthorizeRequest;
use crate::profile::{Credentials, Profile, join_host_port, split_host_port};
use crate::ssh::client::{self, Expect, HostCheck};
use crate::ssh::route::{self, NodeStream};
use crate::ssh::session::{self, SessionOptions};

/// Splits `[LOGIN@]HOST`; the last `@` separates, so logins may contain one.
pub fn split_destination(dest: &str) -> (Option<String>, String) {
    match dest.rsplit_once('@') {
        Some((login, host)) if !login.is_empty() => (Some(login.to_string()), host.to_string()),
        Some((_, host)) => (None, host.to_string()),
        None => (None, dest.to_string()),
    }
}

/// The login: `-l`, then `LOGIN@`, then the local user name.
pub fn choose_login(
    flag: Option<&str>,
    from_dest: Option<&str>,
    os_user: impl FnOnce() -> String,
) -> String {
    flag.filter(|l| !l.is_empty())
        .or(from_dest)
        .map(str::to_string)
        .unwrap_or_else(os_user)
}

/// Names the node's host certificate may carry for the host the user asked for.
pub fn node_names(host: &str, port: u16, cluster: &str) -> Vec<String> {
    let mut names = vec![host.to_string(), format!("{host}.{cluster}")];
    if port != 0 {
        names.push(join_host_port(host, port));
    }
    names
}

/// Asks the proxy why the certificate is (or would be) refused.
struct Explainer<'a> {
    ctx: &'a Context,
    profile: &'a Profile,
    creds: &'a crate::profile::Credentials,
    request: AuthorizeRequest,
}

impl Explainer<'_> {
    async fn ask(&self) -> Result<crate::http::AuthorizeResponse, TshError> {
        // The proxy answers only the holder of the certificate: present the TLS one.
        self.ctx
            .web_as_user(self.profile, self.creds)?
            .authorize(&self.request)
            .await
    }

    /// The expired certificate is refused without connecting; the call makes the refusal
    /// audited and gives the server's wording.
    async fn expired(&self, local: TshError) -> TshError {
        match self.ask().await {
            Ok(r) if !r.allowed && !r.reason.is_empty() => TshError::Server(r.reason),
            Ok(_) => local,
            Err(e) => {
                tracing::debug!(error = %e, "cannot report the expired certificate to the proxy");
                local
            }
        }
    }

    async fn refused(&self, who: &str) -> TshError {
        let generic = format!(
            "{who} refused the certificate for login {:?}",
            self.request.login
        );
        match self.ask().await {
            Ok(r) if !r.allowed && !r.reason.is_empty() => {
                let reason = r
                    .reason
                    .strip_prefix("access denied: ")
                    .unwrap_or(&r.reason)
                    .to_string();
                TshError::AccessDenied(reason)
            }
            Ok(_) => TshError::AccessDenied(generic),
            Err(e) => {
                TshError::AccessDenied(format!("{generic} (the proxy could not say why: {e})"))
            }
        }
    }
}

/// `tsh ssh`; returns the remote exit status.
pub async fn ssh(ctx: &Context, args: &SshArgs) -> Result<i32, TshError> {
    use tracing::Instrument;
    let span = tracing::info_span!(
        "tsh.ssh",
        destination = %args.destination,
        cluster = tracing::field::Empty,
        node = tracing::field::Empty,
        login = tracing::field::Empty,
        user = tracing::field::Empty,
        outcome = tracing::field::Empty,
        exit_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
    );
    let result = ssh_traced(ctx, args).instrument(span.clone()).await;
    match &result {
        Ok(code) => {
            span.record("outcome", "ok");
            span.record("exit_code", *code);
        }
        Err(e) => {
            span.record("outcome", "error");
            span.record("otel.status_code", "error");
            span.record("otel.status_description", e.to_string().as_str());
        }
    }
    result
}

async fn ssh_traced(ctx: &Context, args: &SshArgs) -> Result<i32, TshError> {
    let (profile, creds) = ctx.logged_in()?;
    let (login_at, host_part) = split_destination(&args.destination);
    if host_part.is_empty() {
        return Err(TshError::Usage(format!(
            "no host in {:?}",
            args.destination
        )));
    }
    let login = choose_login(args.login.as_deref(), login_at.as_deref(), crate::os_user);
    let (host, port_in_host) = split_host_port(&host_part);
    let port = args.port.or(port_in_host).unwrap_or(0);
    let cluster = ctx.cluster(&profile);
    let span = tracing::Span::current();
    span.record("cluster", cluster.as_str());
    span.record("node", host_part.as_str());
    span.record("login", login.as_str());
    span.record("user", profile.username.as_str());
    let cert_line = creds
        .ssh_cert
        .to_openssh()
        .map_err(|e| TshError::profile(&profile.key_paths(&ctx.store.home).ssh_cert, e))?;
    let explain = Explainer {
        ctx,
        profile: &profile,
        creds: &creds,
        request: AuthorizeRequest {
            ssh_cert: cert_line,
            login: login.clone(),
            node: host_part.clone(),
            cluster: cluster.clone(),
        },
    };

    if let Err(e) = crate::ensure_unexpired(&creds) {
        return Err(explain.expired(e).await);
    }

    let mut names = node_names(&host, port, &cluster);
    if host.parse::<IpAddr>().is_ok() {
        names.extend(node_aliases(ctx, &profile, &creds, &cluster, &host, port).await);
    }
    // The proxy is a host of the cluster logged in to; the node is a host of `cluster`, and
    // only that cluster's host CA may vouch for it.
    let proxy_cas = Arc::new(creds.ssh_host_cas.clone());
    let cas = Arc::new(creds.host_cas_for(&cluster, &profile.cluster));
    let key = Arc::new(creds.ssh_key.clone());

    let (mut proxy, proxy_state) =
        client::connect_proxy(&profile.ssh_proxy_addr, proxy_cas).await?;
    let auth = proxy
        .authenticate_openssh_cert(login.clone(), key.clone(), creds.ssh_cert.clone())
        .await
        .map_err(|e| {
            client::handshake_error("the proxy", &profile.ssh_proxy_addr, &e, &proxy_state)
        })?;
    if !auth.success() {
        return Err(explain.refused("the proxy").await);
    }

    // When tracing, the subsystem form carries the trace to the proxy (an `env` request
    // on its channel); `direct-tcpip` has no room for it.
    let traceparent = portcullis_telemetry::current_traceparent();
    let stream = if cluster == profile.cluster && traceparent.is_none() {
        route::direct(&proxy, &host, port, &host_part, &proxy_state).await?
    } else {
        let subsystem = format!("proxy:{host}:{port}@{cluster}");
        route::subsystem(&proxy, &subsystem, &host_part, &proxy_state, traceparent.as_deref()).await?
    };

    let (handler, node_state) = HostCheck::new(
        cas,
        Expect::Node {
            names,
            cluster: cluster.clone(),
        },
    );
    let node = match stream {
        NodeStream::Direct(s) => {
            client::handshake(s, handler, "the node", &host_part, &node_state).await
        }
        NodeStream::Subsystem(s) => {
            client::handshake(s, handler, "the node", &host_part, &node_state).await
        }
    };
    // A subsystem is accepted before the proxy dials; its stderr says why a dial failed.
    let mut node = match node {
        Ok(n) => n,
        Err(e) => return Err(route::subsystem_failure(&host_part, &proxy_state).unwrap_or(e)),
    };
    let auth = node
        .authenticate_openssh_cert(login.clone(), key, creds.ssh_cert.clone())
        .await
        .map_err(|e| client::handshake_error("the node", &host_part, &e, &node_state))?;
    if !auth.success() {
        return Err(explain.refused("the node").await);
    }

    let stdin_tty = std::io::stdin().is_terminal();
    let pty = args.tty || (!args.no_tty && stdin_tty);
    let opts = SessionOptions {
        command: (!args.command.is_empty()).then(|| args.command.join(" ")),
        pty,
        raw: pty && stdin_tty,
        term: std::env::var("TERM")
            .ok()
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| "xterm".into()),
    };
    let code = session::run(&node, &opts).await;
    let _ = node.disconnect(Disconnect::ByApplication, "", "en").await;
    let _ = proxy.disconnect(Disconnect::ByApplication, "", "en").await;
    code
}

/// Ids and names of the nodes listening at `host[:port]`, so a node dialled by address is
/// accepted when its certificate names it only by id and name. Best effort.
async fn node_aliases(
    ctx: &Context,
    profile: &Profile,
    creds: &Credentials,
    cluster: &str,
    host: &str,
    port: u16,
) -> Vec<String> {
    let nodes = match ctx.web_as_user(profile, creds) {
        Ok(web) => web.nodes(cluster).await,
        Err(e) => Err(e),
    };
    match nodes {
        Ok(nodes) => nodes
            .into_iter()
            .filter(|n| {
                let (h, p) = split_host_port(&n.addr);
                h == host && (port == 0 || p == Some(port))
            })
            .flat_map(|n| [n.id, n.hostname])
            .filter(|s| !s.is_empty())
            .collect(),
        Err(e) => {
            tracing::debug!(error = %e, "cannot list nodes to match the address");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destination_splitting() {
        assert_eq!(
            split_destination("visitor@node-1"),
            (Some("visitor".into()), "node-1".into())
        );
        assert_eq!(split_destination("node-1"), (None, "node-1".into()));
        assert_eq!(
            split_destination("a@b.com@10.0.0.1:22"),
            (Some("a@b.com".into()), "10.0.0.1:22".into())
        );
        assert_eq!(split_destination("@node"), (None, "node".into()));
    }

    #[test]
    fn login_precedence() {
        let os = || "me".to_string();
        assert_eq!(choose_login(Some("root"), Some("visitor"), os), "root");
        assert_eq!(choose_login(None, Some("visitor"), os), "visitor");
        assert_eq!(choose_login(None, None, os), "me");
    }

    #[test]
    fn names_for_the_host_check() {
        assert_eq!(
            node_names("node-1", 0, "leaf"),
            vec!["node-1", "node-1.leaf"]
        );
        assert_eq!(node_names("10.0.0.1", 3022, "root")[2], "10.0.0.1:3022");
    }
}
