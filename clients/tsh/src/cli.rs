//! Command-line syntax of `tsh` (clap derive); global flags may stand before or after the
//! subcommand, as with Teleport's `tsh`.

use clap::{Args, Parser, Subcommand, ValueEnum};

/// `tsh`: log in to a Portcullis cluster and reach its nodes over SSH.
#[derive(Debug, Parser)]
#[command(
    name = "tsh",
    about = "Portcullis user client",
    disable_version_flag = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags accepted by every subcommand.
#[derive(Debug, Clone, Default, Args)]
pub struct GlobalArgs {
    /// Proxy address, HOST[:PORT] (web port, default 3080).
    #[arg(long, global = true, env = "TELEPORT_PROXY")]
    pub proxy: Option<String>,
    /// Portcullis user name (default: the profile's, then the local user's).
    #[arg(long, global = true, env = "TELEPORT_USER")]
    pub user: Option<String>,
    /// Cluster to act on (default: the one selected at login).
    #[arg(long, global = true, env = "TELEPORT_CLUSTER")]
    pub cluster: Option<String>,
    /// Accept any HTTPS certificate from the proxy (self-signed proxies).
    #[arg(long, global = true)]
    pub insecure: bool,
    /// Verbose logging to standard error.
    #[arg(long, short = 'd', global = true)]
    pub debug: bool,
}

/// Output format of `status`, `clusters` and `ls`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Log in to a cluster and fetch certificates.
    Login(LoginArgs),
    /// Delete the current profile's keys and certificates.
    Logout,
    /// Show the current login.
    Status(FormatArgs),
    /// List the root cluster and its leaf clusters.
    Clusters(FormatArgs),
    /// List the nodes you may reach.
    Ls(LsArgs),
    /// Run a shell or a command on a node.
    Ssh(SshArgs),
    /// Print the version.
    Version,
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Certificate lifetime: `12h`, `90m`, or a number of minutes.
    #[arg(long)]
    pub ttl: Option<String>,
    /// Leaf cluster the certificates are meant for (default: the root cluster).
    #[arg(value_name = "CLUSTER")]
    pub target_cluster: Option<String>,
}

#[derive(Debug, Args)]
pub struct FormatArgs {
    #[arg(long = "format", short = 'f', value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    #[arg(long = "format", short = 'f', value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Only nodes with these labels (`key=value`).
    #[arg(value_name = "LABEL")]
    pub labels: Vec<String>,
}

#[derive(Debug, Args)]
pub struct SshArgs {
    /// Remote login (default: LOGIN@ of the destination, then the local user name).
    #[arg(short = 'l', long = "login")]
    pub login: Option<String>,
    /// SSH port of the node (default: the node's own).
    #[arg(short = 'p', long = "port")]
    pub port: Option<u16>,
    /// Force a pseudo-terminal.
    #[arg(short = 't', conflicts_with = "no_tty")]
    pub tty: bool,
    /// Never request a pseudo-terminal.
    #[arg(short = 'T')]
    pub no_tty: bool,
    /// OpenSSH options, accepted for compatibility and ignored.
    #[arg(short = 'o', value_name = "OPTION")]
    pub options: Vec<String>,
    /// Export this session's trace over OTLP (OTEL_EXPORTER_OTLP_ENDPOINT, else
    /// http://127.0.0.1:4317); the OTEL_* environment alone turns it on too.
    #[arg(long = "trace")]
    pub trace: bool,
    /// `[LOGIN@]HOST`: node name, id or address.
    #[arg(value_name = "[LOGIN@]HOST")]
    pub destination: String,
    /// Command to run instead of a shell.
    #[arg(
        value_name = "COMMAND",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub command: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        match Cli::try_parse_from(args) {
            Ok(c) => c,
            Err(e) => panic!("{args:?}: {e}"),
        }
    }

    #[test]
    fn global_flags_after_the_subcommand() {
        let cli = parse(&["tsh", "ssh", "--cluster=leaf", "visitor@node", "pwd"]);
        assert_eq!(cli.global.cluster.as_deref(), Some("leaf"));
        let Command::Ssh(ssh) = cli.command else {
            panic!("not ssh")
        };
        assert_eq!(ssh.destination, "visitor@node");
        assert_eq!(ssh.command, vec!["pwd"]);
    }

    #[test]
    fn global_flags_before_the_subcommand() {
        let cli = parse(&[
            "tsh",
            "--proxy=p.example.com",
            "--insecure",
            "login",
            "--user=alice",
            "east",
        ]);
        assert_eq!(cli.global.proxy.as_deref(), Some("p.example.com"));
        assert_eq!(cli.global.user.as_deref(), Some("alice"));
        assert!(cli.global.insecure);
        let Command::Login(l) = cli.command else {
            panic!("not login")
        };
        assert_eq!(l.target_cluster.as_deref(), Some("east"));
    }

    #[test]
    fn ls_format_and_labels() {
        let cli = parse(&["tsh", "ls", "-f", "json", "env=prod"]);
        let Command::Ls(ls) = cli.command else {
            panic!("not ls")
        };
        assert_eq!(ls.format, Format::Json);
        assert_eq!(ls.labels, vec!["env=prod"]);
        let cli = parse(&["tsh", "ls", "--cluster=leaf", "--format=text"]);
        assert_eq!(cli.global.cluster.as_deref(), Some("leaf"));
    }

    #[test]
    fn ssh_command_keeps_its_own_flags() {
        let cli = parse(&[
            "tsh",
            "ssh",
            "-t",
            "-o",
            "StrictHostKeyChecking=no",
            "-l",
            "root",
            "node",
            "ls",
            "-la",
            "/tmp",
        ]);
        let Command::Ssh(ssh) = cli.command else {
            panic!("not ssh")
        };
        assert!(ssh.tty);
        assert_eq!(ssh.login.as_deref(), Some("root"));
        assert_eq!(ssh.destination, "node");
        assert_eq!(ssh.command, vec!["ls", "-la", "/tmp"]);
        assert!(Cli::try_parse_from(["tsh", "ssh", "-t", "-T", "node"]).is_err());
    }

    #[test]
    fn status_json() {
        let cli = parse(&["tsh", "status", "--format=json", "--debug"]);
        assert!(cli.global.debug);
        let Command::Status(f) = cli.command else {
            panic!("not status")
        };
        assert_eq!(f.format, Format::Json);
    }
}
