//! `tsh`, the Portcullis user client: `login`, `logout`, `status`, `clusters`, `ls`, `ssh`.
//!
//! # Files in `$TSH_HOME` (default `~/.tsh`)
//!
//! | path | content |
//! | --- | --- |
//! | `current-profile` | host name of the current proxy |
//! | `<proxy>.yaml` | profile: `web_proxy_addr`, `ssh_proxy_addr`, `username`, `cluster` (root), `selected_cluster`, `insecure` |
//! | `keys/<proxy>/<user>` | OpenSSH private key (Ed25519, mode 0600) |
//! | `keys/<proxy>/<user>.pub` | its public key |
//! | `keys/<proxy>/<user>-cert.pub` | SSH user certificate (one OpenSSH line) |
//! | `keys/<proxy>/<user>-x509.pem`, `<user>-x509-key.pem` | TLS client certificate and key |
//! | `keys/<proxy>/cas/<cluster>.pem` | the cluster TLS CA certificates |
//! | `keys/<proxy>/cas/known_hosts` | `@cert-authority * <host CA>`, `@cert-authority *.<leaf> <leaf host CA>` |
//!
//! `<proxy>` is the proxy's host name without port ([`key_paths`] builds these paths). Plain
//! OpenSSH can use them:
//! `ssh -i keys/P/U -o CertificateFile=keys/P/U-cert.pub -o UserKnownHostsFile=keys/P/cas/known_hosts -J U@P:3023 login@node`.
#![forbid(unsafe_code)]

pub mod cli;
pub mod commands;
pub mod error;
pub mod http;
pub mod profile;
pub mod ssh;
pub mod table;

use std::ffi::OsString;

use clap::Parser;

pub use cli::Cli;
pub use error::TshError;
pub use profile::{KeyPaths, key_paths};

use crate::cli::{Command, GlobalArgs};
use crate::http::{ClientCert, TlsTrust, WebClient};
use crate::profile::{Credentials, Profile, Store, normalize_proxy, split_host_port};

/// How long tsh waits at exit for its spans to reach the OTLP collector.
const TRACE_FLUSH_LIMIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Parses `args` (program name first), runs the command and returns the process exit code.
/// Errors are printed as `ERROR: ...` on standard error.
pub async fn run<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
    // Only `tsh ssh` makes spans worth exporting.
    let export = match &cli.command {
        Command::Ssh(a) => portcullis_telemetry::export_from_env().or_else(|| {
            a.trace.then(|| portcullis_telemetry::Export { endpoint: "http://127.0.0.1:4317".into(), ratio: 1.0 })
        }),
        _ => None,
    };
    let telemetry = portcullis_telemetry::init(portcullis_telemetry::Options {
        service: "tsh".into(),
        severity: if cli.global.debug { "debug".into() } else { "warn".into() },
        json: false,
        stdout: false,
        export,
        attributes: Default::default(),
    });
    let code = match execute(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ERROR: {e}");
            1
        }
    };
    // The spans must leave before the process does, but a collector that does not answer
    // must not hold up every command.
    if !telemetry.shutdown_within(TRACE_FLUSH_LIMIT).await {
        eprintln!(
            "WARNING: traces were not exported within {} ms: is the OTLP collector reachable?",
            TRACE_FLUSH_LIMIT.as_millis()
        );
    }
    code
}

/// Runs a parsed command line; `Ok` carries the exit code (the remote one for `ssh`).
pub async fn execute(cli: Cli) -> Result<i32, TshError> {
    let ctx = Context {
        global: cli.global,
        store: Store::new(profile::tsh_home()),
    };
    match cli.command {
        Command::Login(args) => commands::login::login(&ctx, &args).await.map(|()| 0),
        Command::Logout => commands::login::logout(&ctx).map(|()| 0),
        Command::Status(f) => commands::status::status(&ctx, f.format).map(|()| 0),
        Command::Clusters(f) => commands::clusters::clusters(&ctx, f.format)
            .await
            .map(|()| 0),
        Command::Ls(args) => commands::ls::ls(&ctx, &args).await.map(|()| 0),
        Command::Ssh(args) => commands::ssh::ssh(&ctx, &args).await,
        Command::Version => {
            println!("Portcullis tsh v{}", env!("CARGO_PKG_VERSION"));
            Ok(0)
        }
    }
}

/// What every command needs: the global flags and the profile directory.
pub struct Context {
    pub global: GlobalArgs,
    pub store: Store,
}

impl Context {
    /// The profile to act on: the one for `--proxy` when given, else the current one.
    pub fn profile(&self) -> Result<Profile, TshError> {
        let found = match &self.global.proxy {
            Some(p) => self.store.load(&split_host_port(&normalize_proxy(p)?).0)?,
            None => self.store.current()?,
        };
        found.ok_or(TshError::NotLoggedIn)
    }

    /// The profile and its credentials.
    pub fn logged_in(&self) -> Result<(Profile, Credentials), TshError> {
        let profile = self.profile()?;
        let creds = self.store.load_credentials(&profile)?;
        Ok((profile, creds))
    }

    /// How to trust the proxy of `profile`: its saved CA, or anything after `--insecure`.
    pub fn trust(&self, profile: &Profile) -> TlsTrust {
        TlsTrust {
            insecure: self.global.insecure || profile.insecure,
            ca_pems: self.store.tls_cas(profile),
        }
    }

    /// A web API client without client certificate (ping, login, ssh/authorize).
    pub fn web(&self, profile: &Profile) -> Result<WebClient, TshError> {
        WebClient::new(&profile.web_proxy_addr, &self.trust(profile), None)
    }

    /// A web API client presenting the user's TLS certificate.
    pub fn web_as_user(
        &self,
        profile: &Profile,
        creds: &Credentials,
    ) -> Result<WebClient, TshError> {
        let cc = ClientCert {
            cert_pem: &creds.tls_cert_pem,
            key_pem: creds.tls_key_pem.expose(),
        };
        WebClient::new(&profile.web_proxy_addr, &self.trust(profile), Some(cc))
    }

    /// The cluster to act on: `--cluster`, else the one chosen at login, else the root.
    pub fn cluster(&self, profile: &Profile) -> String {
        self.global
            .cluster
            .clone()
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| profile.active_cluster().to_string())
    }
}

/// Fails with "certificate expired ... run 'tsh login'" once the SSH certificate has expired.
pub fn ensure_unexpired(creds: &Credentials) -> Result<(), TshError> {
    let now = portcullis_pki::unix_now();
    if now >= creds.ssh_cert.valid_before() {
        return Err(portcullis_pki::PkiError::Expired {
            expired_at: portcullis_pki::ssh::format_unix(creds.ssh_cert.valid_before()),
        }
        .into());
    }
    Ok(())
}

/// The local user's name, the default login and Portcullis user.
pub fn os_user() -> String {
    if let Ok(Some(u)) = nix::unistd::User::from_uid(nix::unistd::getuid()) {
        return u.name;
    }
    std::env::var("USER").unwrap_or_else(|_| "root".into())
}
