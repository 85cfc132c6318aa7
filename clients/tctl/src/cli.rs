//! The command line: global connection flags and one subcommand per `tctl` command (the
//! subset of Teleport's that Portcullis has).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Portcullis admin tool.
#[derive(Debug, Parser)]
#[command(name = "tctl", version, about = "Portcullis cluster administration tool")]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalFlags,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags accepted before or after the subcommand (hence `global`).
#[derive(Debug, Clone, Default, Args)]
pub struct GlobalFlags {
    /// Configuration file of the auth service on this host.
    #[arg(short = 'c', long = "config", env = "PORTCULLIS_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Address of the auth service (host:port), when not on the auth host; repeat it or
    /// separate several with commas to use whichever answers.
    #[arg(long = "auth-server", global = true, value_delimiter = ',')]
    pub auth_server: Vec<String>,
    /// Identity file written by `tctl auth sign`, used with --auth-server.
    #[arg(short = 'i', long = "identity", global = true)]
    pub identity: Option<PathBuf>,
    /// Accepted for compatibility; the auth service is always verified against the cluster CA.
    #[arg(long, global = true)]
    pub insecure: bool,
    /// Log at DEBUG severity to stderr.
    #[arg(short = 'd', long, global = true)]
    pub debug: bool,
}

/// Output format of resource-printing commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Yaml,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage join tokens.
    Tokens {
        #[command(subcommand)]
        cmd: TokensCmd,
    },
    /// Legacy node commands: `nodes add` creates a token, `nodes ls` lists nodes.
    Nodes {
        #[command(subcommand)]
        cmd: NodesCmd,
    },
    /// Manage users.
    Users {
        #[command(subcommand)]
        cmd: UsersCmd,
    },
    /// Create or update resources from a YAML file (`-` reads standard input).
    Create(CreateArgs),
    /// Print resources: KIND or KIND/NAME.
    Get(GetArgs),
    /// Delete a resource: KIND/NAME.
    Rm(RefArgs),
    /// Edit a resource in $EDITOR: KIND/NAME.
    Edit(RefArgs),
    /// Update a resource's labels, e.g. `update rc/leaf --set-labels=env=prod`.
    Update(UpdateArgs),
    /// Cluster name, version and CA pin.
    Status,
    /// Certificates for users.
    Auth {
        #[command(subcommand)]
        cmd: AuthCmd,
    },
    /// Print the version.
    Version,
}

#[derive(Debug, Subcommand)]
pub enum TokensCmd {
    /// Create a join token.
    Add(TokensAddArgs),
    /// List join tokens.
    Ls(FormatArg),
    /// Delete a join token.
    Rm {
        /// The token value.
        token: String,
    },
}

#[derive(Debug, Args)]
pub struct TokensAddArgs {
    /// Roles the token admits: node, proxy, trusted_cluster, agent (comma-separated).
    #[arg(long = "type")]
    pub types: String,
    /// Time to live, e.g. 5m, 1h (default 30m).
    #[arg(long)]
    pub ttl: Option<String>,
    /// Use this value instead of a random one.
    #[arg(long)]
    pub value: Option<String>,
    /// Labels, k=v,k2=v2.
    #[arg(long)]
    pub labels: Option<String>,
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct FormatArg {
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

#[derive(Debug, Subcommand)]
pub enum NodesCmd {
    /// Create a join token (legacy form of `tokens add`).
    Add(NodesAddArgs),
    /// List the cluster's nodes.
    Ls(FormatArg),
}

#[derive(Debug, Args)]
pub struct NodesAddArgs {
    /// Roles the token admits: node, proxy, trustedcluster, agent (comma-separated).
    #[arg(long, default_value = "node")]
    pub roles: String,
    /// Time to live (default 30m).
    #[arg(long)]
    pub ttl: Option<String>,
    /// Token value; a random one when omitted.
    #[arg(long)]
    pub token: Option<String>,
    /// Labels, k=v,k2=v2.
    #[arg(long)]
    pub labels: Option<String>,
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

#[derive(Debug, Subcommand)]
pub enum UsersCmd {
    /// Create a user.
    Add(UsersAddArgs),
    /// Set a user's password, from the terminal or one line of standard input.
    SetPassword {
        name: String,
    },
    /// Change a user's roles or logins.
    Update(UsersUpdateArgs),
    /// List users (and who is locked after failed logins).
    Ls(FormatArg),
    /// Delete a user.
    Rm {
        name: String,
    },
    /// Lift a user's lock: an admin's (`users lock`) and the one after failed logins.
    Unlock {
        name: String,
    },
    /// Lock a user out: its certificates are refused everywhere and no new ones are issued.
    Lock(UsersLockArgs),
}

#[derive(Debug, Args)]
pub struct UsersLockArgs {
    pub name: String,
    /// How long the lock lasts (e.g. 30m, 12h); until `tctl users unlock` when omitted.
    #[arg(long)]
    pub ttl: Option<String>,
    /// Why: shown to the user on every refusal.
    #[arg(long, default_value = "")]
    pub message: String,
}

#[derive(Debug, Args)]
pub struct UsersAddArgs {
    pub name: String,
    /// Roles, comma-separated.
    #[arg(long)]
    pub roles: String,
    /// Unix logins (the `logins` trait), comma-separated.
    #[arg(long)]
    pub logins: Option<String>,
    /// Traits, `key=v1,v2`; repeat the flag or continue with `,key2=v` for more keys.
    #[arg(long)]
    pub traits: Vec<String>,
}

#[derive(Debug, Args)]
pub struct UsersUpdateArgs {
    pub name: String,
    /// Replace the user's roles, comma-separated.
    #[arg(long = "set-roles")]
    pub set_roles: Option<String>,
    /// Replace the user's logins, comma-separated.
    #[arg(long = "set-logins")]
    pub set_logins: Option<String>,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Overwrite resources that already exist.
    #[arg(short = 'f', long)]
    pub force: bool,
    /// YAML file with one or more resources; `-` for standard input.
    pub file: String,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// KIND or KIND/NAME, e.g. `rc`, `user/alice`.
    pub reference: String,
    #[arg(long, value_enum, default_value = "yaml")]
    pub format: Format,
    /// Accepted for compatibility with Teleport; secrets are never stored in clear anyway.
    #[arg(long = "with-secrets", hide = true)]
    pub with_secrets: bool,
}

#[derive(Debug, Args)]
pub struct RefArgs {
    /// KIND/NAME, e.g. `rc/leaf.example.com`.
    pub reference: String,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// KIND/NAME, e.g. `rc/leaf.example.com`.
    pub reference: String,
    /// Replace the labels, k=v,k2=v2.
    #[arg(long = "set-labels")]
    pub set_labels: String,
}

#[derive(Debug, Subcommand)]
pub enum AuthCmd {
    /// Write an identity file (keys, certificates, CAs) for a user.
    Sign(SignArgs),
}

#[derive(Debug, Args)]
pub struct SignArgs {
    /// The user to sign for.
    #[arg(long)]
    pub user: String,
    /// Where to write the identity file.
    #[arg(short = 'o', long)]
    pub out: PathBuf,
    /// Validity of the certificates.
    #[arg(long, default_value = "12h")]
    pub ttl: String,
    /// Output format; only `file` (the JSON identity file) is supported.
    #[arg(long, default_value = "file")]
    pub format: String,
    /// Leaf cluster the certificates are for (route-to-cluster).
    #[arg(long)]
    pub cluster: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        let mut v = vec!["tctl"];
        v.extend_from_slice(args);
        match Cli::try_parse_from(v) {
            Ok(c) => c,
            Err(e) => panic!("{args:?}: {e}"),
        }
    }

    #[test]
    fn global_flags_before_and_after_subcommand() {
        let a = parse(&["-c", "/etc/p.yaml", "tokens", "ls"]);
        let b = parse(&["tokens", "ls", "-c", "/etc/p.yaml"]);
        for c in [a, b] {
            assert_eq!(c.global.config.as_deref(), Some(std::path::Path::new("/etc/p.yaml")));
            assert!(matches!(c.command, Command::Tokens { cmd: TokensCmd::Ls(_) }));
        }
        let c = parse(&["get", "rc", "--auth-server=10.0.0.1:3025", "-i", "id.json", "--insecure", "--debug"]);
        assert_eq!(c.global.auth_server, vec!["10.0.0.1:3025"]);
        let several = parse(&["status", "--auth-server=a:1,b", "--auth-server", "c:3"]);
        assert_eq!(several.global.auth_server, vec!["a:1", "b", "c:3"]);
        assert_eq!(c.global.identity.as_deref(), Some(std::path::Path::new("id.json")));
        assert!(c.global.insecure && c.global.debug);
        match c.command {
            Command::Get(g) => {
                assert_eq!(g.reference, "rc");
                assert_eq!(g.format, Format::Yaml);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tokens_and_legacy_nodes_add() {
        let c = parse(&["tokens", "add", "--type=trusted_cluster", "--ttl=5m", "--format", "json"]);
        match c.command {
            Command::Tokens { cmd: TokensCmd::Add(a) } => {
                assert_eq!(a.types, "trusted_cluster");
                assert_eq!(a.ttl.as_deref(), Some("5m"));
                assert_eq!(a.format, Format::Json);
            }
            other => panic!("{other:?}"),
        }
        let c = parse(&["nodes", "add", "--ttl=5m", "--roles=trustedcluster", "--token=join-token"]);
        match c.command {
            Command::Nodes { cmd: NodesCmd::Add(a) } => {
                assert_eq!(a.roles, "trustedcluster");
                assert_eq!(a.token.as_deref(), Some("join-token"));
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["tctl", "tokens", "add"]).is_err(), "--type is required");
    }

    #[test]
    fn resource_commands() {
        match parse(&["create", "-f", "user.yaml"]).command {
            Command::Create(a) => assert!(a.force && a.file == "user.yaml"),
            other => panic!("{other:?}"),
        }
        match parse(&["create", "--force", "-"]).command {
            Command::Create(a) => assert!(a.force && a.file == "-"),
            other => panic!("{other:?}"),
        }
        match parse(&["update", "rc/leaf", "--set-labels=env=demo"]).command {
            Command::Update(a) => assert_eq!((a.reference.as_str(), a.set_labels.as_str()), ("rc/leaf", "env=demo")),
            other => panic!("{other:?}"),
        }
        match parse(&["users", "update", "alice", "--set-roles", "access,demo"]).command {
            Command::Users { cmd: UsersCmd::Update(u) } => assert_eq!(u.set_roles.as_deref(), Some("access,demo")),
            other => panic!("{other:?}"),
        }
        match parse(&["auth", "sign", "--user=alice", "--out=/tmp/id", "--ttl=1h"]).command {
            Command::Auth { cmd: AuthCmd::Sign(s) } => {
                assert_eq!(s.user, "alice");
                assert_eq!(s.ttl, "1h");
                assert_eq!(s.format, "file");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse(&["users", "set-password", "bob"]).command, Command::Users { cmd: UsersCmd::SetPassword { .. } }));
        assert!(matches!(parse(&["get", "tc", "--format=text"]).command, Command::Get(GetArgs { format: Format::Text, .. })));
    }
}
