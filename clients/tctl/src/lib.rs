//! `tctl`, the Portcullis admin client: tokens, users and resources through the auth gRPC API.
#![forbid(unsafe_code)]

pub mod auth_sign;
pub mod cli;
pub mod client;
pub mod error;
pub mod output;
pub mod resources;
pub mod status;
pub mod tables;
pub mod tokens;
pub mod users;

use std::io::Write;

pub use cli::{Cli, Command, Format, GlobalFlags};
pub use error::TctlError;

use cli::{AuthCmd, NodesCmd, TokensCmd, UsersCmd};

/// Writes command output; a closed pipe (`tctl get rc | head`) is reported like other errors.
pub(crate) fn write_out(out: &mut dyn Write, text: &str) -> Result<(), TctlError> {
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| TctlError::io("cannot write the output", e))
}

/// Logging to stderr: warnings only unless `--debug`, so command output stays clean.
pub fn init_logging(debug: bool) {
    portcullis_telemetry::init_logging(&portcullis_config::LogSettings {
        severity: if debug { "debug" } else { "warn" }.into(),
        json: false,
        output: "stderr".into(),
    });
}

/// Runs one command, printing its output to standard output.
pub async fn run(cli: Cli) -> Result<(), TctlError> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    run_with_output(cli, &mut out).await
}

/// [`run`] with the output going to `out` (tests capture it).
pub async fn run_with_output(cli: Cli, out: &mut dyn Write) -> Result<(), TctlError> {
    if let Command::Version = cli.command {
        return write_out(out, &format!("tctl v{}\n", env!("CARGO_PKG_VERSION")));
    }
    // Bad arguments and files are reported before connecting, and nothing is sent.
    let documents = match &cli.command {
        Command::Create(a) => resources::load_documents(&a.file)?,
        _ => Vec::new(),
    };
    precheck(&cli.command)?;
    portcullis_rpc::install_crypto_provider();
    let mut api = client::connect(&cli.global).await?;
    let api = &mut api;
    match cli.command {
        Command::Version => Ok(()),
        Command::Tokens { cmd } => match cmd {
            TokensCmd::Add(a) => {
                let req = tokens::AddRequest { types: a.types, ttl: a.ttl, value: a.value, labels: a.labels };
                tokens::add(api, out, &req, a.format).await
            }
            TokensCmd::Ls(f) => tokens::ls(api, out, f.format).await,
            TokensCmd::Rm { token } => tokens::rm(api, out, &token).await,
        },
        Command::Nodes { cmd } => match cmd {
            NodesCmd::Add(a) => {
                let req = tokens::AddRequest { types: a.roles, ttl: a.ttl, value: a.token, labels: a.labels };
                tokens::add(api, out, &req, a.format).await
            }
            NodesCmd::Ls(f) => tokens::nodes_ls(api, out, f.format).await,
        },
        Command::Users { cmd } => match cmd {
            UsersCmd::Add(a) => users::add(api, out, &a).await,
            UsersCmd::SetPassword { name } => users::set_password(api, out, &name).await,
            UsersCmd::Update(a) => users::update(api, out, &a).await,
            UsersCmd::Ls(f) => users::ls(api, out, f.format).await,
            UsersCmd::Rm { name } => users::rm(api, out, &name).await,
            UsersCmd::Unlock { name } => users::unlock(api, out, &name).await,
            UsersCmd::Lock(a) => users::lock(api, out, &a).await,
        },
        Command::Create(a) => resources::create(api, out, &documents, a.force).await,
        Command::Get(a) => resources::get(api, out, &a.reference, a.format).await,
        Command::Rm(a) => resources::rm(api, out, &a.reference).await,
        Command::Edit(a) => resources::edit(api, out, &a.reference).await,
        Command::Update(a) => resources::update(api, out, &a.reference, &a.set_labels).await,
        Command::Status => status::status(api, out).await,
        Command::Auth { cmd: AuthCmd::Sign(a) } => auth_sign::sign(api, out, &a).await,
    }
}

/// Checks what can be checked without the auth service.
fn precheck(command: &Command) -> Result<(), TctlError> {
    let ttl = |t: &Option<String>| -> Result<(), TctlError> {
        if let Some(t) = t {
            portcullis_types::parse_duration(t)?;
        }
        Ok(())
    };
    let labels = |l: &Option<String>| -> Result<(), TctlError> {
        if let Some(l) = l {
            portcullis_config::settings::parse_labels(l)?;
        }
        Ok(())
    };
    match command {
        Command::Tokens { cmd: TokensCmd::Add(a) } => {
            tokens::parse_types(&a.types)?;
            ttl(&a.ttl)?;
            labels(&a.labels)?;
        }
        Command::Nodes { cmd: NodesCmd::Add(a) } => {
            tokens::parse_types(&a.roles)?;
            ttl(&a.ttl)?;
            labels(&a.labels)?;
        }
        Command::Users { cmd: UsersCmd::Add(a) } => {
            users::new_user(a)?;
        }
        Command::Users { cmd: UsersCmd::Lock(a) } => {
            users::lock_ttl(a)?;
        }
        Command::Get(a) => {
            portcullis_types::parse_resource_ref(&a.reference)?;
        }
        Command::Rm(a) | Command::Edit(a) => {
            resources::parse_named_ref(&a.reference)?;
        }
        Command::Update(a) => {
            resources::parse_named_ref(&a.reference)?;
            portcullis_config::settings::parse_labels(&a.set_labels)?;
        }
        Command::Auth { cmd: AuthCmd::Sign(a) } => {
            ttl(&Some(a.ttl.clone()))?;
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn check(args: &[&str]) -> Result<(), TctlError> {
        let mut v = vec!["tctl"];
        v.extend_from_slice(args);
        precheck(&Cli::try_parse_from(v).map_err(|e| TctlError::usage(e.to_string()))?.command)
    }

    #[test]
    fn arguments_are_checked_before_connecting() {
        assert!(check(&["get", "rc"]).is_ok());
        assert!(check(&["get", "bogus"]).unwrap_err().to_string().contains("unknown resource kind"));
        assert!(check(&["rm", "rc"]).is_err());
        assert!(check(&["tokens", "add", "--type=bogus"]).is_err());
        assert!(check(&["tokens", "add", "--type=node", "--ttl=soon"]).is_err());
        assert!(check(&["nodes", "add", "--roles=trustedcluster", "--ttl=5m", "--token=x"]).is_ok());
        assert!(check(&["update", "rc/leaf", "--set-labels=nokey"]).is_err());
        assert!(check(&["users", "add", "bob", "--roles="]).is_err());
    }
}
