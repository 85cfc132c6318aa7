//! The login profile in `$TSH_HOME`: which proxy and user are current, and the keys,
//! certificates and CAs `tsh login` saved (in paths plain OpenSSH can use too).

use std::path::{Path, PathBuf};

use portcullis_pki::Secret;
use portcullis_pki::identity::write_private;
use portcullis_types::HostPort;
use russh::keys::{Certificate, PrivateKey, PublicKey};
use serde::{Deserialize, Serialize};

use crate::error::TshError;

/// Default web (HTTPS) port of a proxy.
pub const DEFAULT_WEB_PORT: u16 = 3080;
/// Default SSH port of a proxy.
pub const DEFAULT_SSH_PORT: u16 = 3023;

const CURRENT_PROFILE: &str = "current-profile";

/// `$TSH_HOME`, else `~/.tsh`.
pub fn tsh_home() -> PathBuf {
    if let Some(h) = std::env::var_os("TSH_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".tsh")
}

/// Where one user's credentials for one proxy live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPaths {
    /// `keys/<proxy>`.
    pub dir: PathBuf,
    /// `keys/<proxy>/<user>`: OpenSSH private key (mode 0600).
    pub private_key: PathBuf,
    /// `keys/<proxy>/<user>.pub`: its public key.
    pub public_key: PathBuf,
    /// `keys/<proxy>/<user>-cert.pub`: the SSH user certificate (one OpenSSH line).
    pub ssh_cert: PathBuf,
    /// `keys/<proxy>/<user>-x509.pem`: the TLS client certificate.
    pub tls_cert: PathBuf,
    /// `keys/<proxy>/<user>-x509-key.pem`: its key (PKCS#8 PEM, mode 0600).
    pub tls_key: PathBuf,
    /// `keys/<proxy>/cas`: the cluster CAs.
    pub cas_dir: PathBuf,
    /// `keys/<proxy>/cas/known_hosts`: `@cert-authority * <root host CA>` and
    /// `@cert-authority *.<leaf> <leaf host CA>` lines (see [`known_hosts_text`]).
    pub known_hosts: PathBuf,
}

impl KeyPaths {
    /// `keys/<proxy>/cas/<cluster>.pem`: the TLS CA certificates learnt at login.
    pub fn tls_ca(&self, cluster: &str) -> PathBuf {
        self.cas_dir.join(format!("{}.pem", safe_name(cluster)))
    }
}

/// The credential paths of `user` at `proxy_host` under `tsh_home` (see the crate docs).
pub fn key_paths(tsh_home: &Path, proxy_host: &str, user: &str) -> KeyPaths {
    let dir = tsh_home.join("keys").join(safe_name(proxy_host));
    let user = safe_name(user);
    let cas_dir = dir.join("cas");
    KeyPaths {
        private_key: dir.join(&user),
        public_key: dir.join(format!("{user}.pub")),
        ssh_cert: dir.join(format!("{user}-cert.pub")),
        tls_cert: dir.join(format!("{user}-x509.pem")),
        tls_key: dir.join(format!("{user}-x509-key.pem")),
        known_hosts: cas_dir.join("known_hosts"),
        cas_dir,
        dir,
    }
}

/// Keeps names usable as single path components: a user or host name never climbs out of
/// `$TSH_HOME` whatever the server or the command line says.
fn safe_name(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c == '\0' {
                '_'
            } else {
                c
            }
        })
        .collect();
    match cleaned.as_str() {
        "" | "." | ".." => format!("_{cleaned}"),
        _ => cleaned,
    }
}

/// Splits `host:port`, `[v6]:port`, `host` into the host (no brackets) and the port. Text that
/// is no address comes back whole and without a port, so the dial or lookup that uses it
/// reports it.
pub fn split_host_port(addr: &str) -> (String, Option<u16>) {
    match addr.parse::<HostPort>() {
        Ok(a) => (a.host().to_string(), a.port()),
        Err(_) => (addr.trim().to_string(), None),
    }
}

/// `host:port`, bracketing IPv6 hosts.
pub fn join_host_port(host: &str, port: u16) -> String {
    HostPort::new(host, port).to_string()
}

/// Normalises `--proxy`: drops a scheme and a path, adds the default web port.
pub fn normalize_proxy(addr: &str) -> Result<String, TshError> {
    let a = addr.trim();
    let a = a.strip_prefix("https://").unwrap_or(a);
    let a = a.split('/').next().unwrap_or_default();
    let parsed = HostPort::parse_with_default(a, DEFAULT_WEB_PORT)
        .map_err(|_| TshError::Usage(format!("invalid proxy address {addr:?}")))?;
    Ok(parsed.to_string())
}

/// What `tsh` remembers about a login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// `host:port` of the proxy's HTTPS endpoint.
    pub web_proxy_addr: String,
    /// `host:port` of the proxy's SSH endpoint.
    pub ssh_proxy_addr: String,
    pub username: String,
    /// The root cluster's name (the proxy's own cluster).
    pub cluster: String,
    /// Cluster chosen at login (`tsh login CLUSTER`); empty means the root.
    #[serde(default)]
    pub selected_cluster: String,
    /// The login was made with `--insecure`; later calls to this proxy accept its certificate.
    #[serde(default)]
    pub insecure: bool,
}

impl Profile {
    /// The proxy's host name, the profile's key.
    pub fn proxy_host(&self) -> String {
        split_host_port(&self.web_proxy_addr).0
    }

    /// The cluster commands act on unless `--cluster` says otherwise.
    pub fn active_cluster(&self) -> &str {
        if self.selected_cluster.is_empty() {
            &self.cluster
        } else {
            &self.selected_cluster
        }
    }

    pub fn key_paths(&self, home: &Path) -> KeyPaths {
        key_paths(home, &self.proxy_host(), &self.username)
    }
}

/// Keys, certificates and CAs of one login.
pub struct Credentials {
    pub ssh_key: PrivateKey,
    pub ssh_cert: Certificate,
    pub tls_cert_pem: String,
    pub tls_key_pem: Secret<String>,
    pub tls_ca_pems: Vec<String>,
    /// Host CAs of the cluster logged in to (the proxy's own): they vouch for its hosts.
    pub ssh_host_cas: Vec<PublicKey>,
    /// Host CAs of leaf clusters, by leaf name: each vouches for its own leaf's hosts only.
    pub leaf_host_cas: Vec<(String, PublicKey)>,
}

impl Credentials {
    /// The host CAs that may vouch for hosts of `cluster`, where `root` is the cluster
    /// logged in to: that cluster's own CAs, never another's.
    pub fn host_cas_for(&self, cluster: &str, root: &str) -> Vec<PublicKey> {
        if cluster.is_empty() || cluster == root {
            return self.ssh_host_cas.clone();
        }
        self.leaf_host_cas
            .iter()
            .filter(|(c, _)| c == cluster)
            .map(|(_, k)| k.clone())
            .collect()
    }
}

/// The profile directory.
#[derive(Debug, Clone)]
pub struct Store {
    pub home: PathBuf,
}

impl Store {
    pub fn new(home: PathBuf) -> Self {
        Store { home }
    }

    fn profile_path(&self, proxy_host: &str) -> PathBuf {
        self.home.join(format!("{}.yaml", safe_name(proxy_host)))
    }

    /// The current profile, if any.
    pub fn current(&self) -> Result<Option<Profile>, TshError> {
        let path = self.home.join(CURRENT_PROFILE);
        let host = match std::fs::read_to_string(&path) {
            Ok(h) => h.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(TshError::profile(&path, e)),
        };
        if host.is_empty() {
            return Ok(None);
        }
        self.load(&host)
    }

    /// The profile for `proxy_host`, if any.
    pub fn load(&self, proxy_host: &str) -> Result<Option<Profile>, TshError> {
        let path = self.profile_path(proxy_host);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(TshError::profile(&path, e)),
        };
        serde_norway::from_str(&text)
            .map(Some)
            .map_err(|e| TshError::profile(&path, e))
    }

    /// Writes the profile and makes it current.
    pub fn save(&self, profile: &Profile) -> Result<(), TshError> {
        let path = self.profile_path(&profile.proxy_host());
        let text = serde_norway::to_string(profile).map_err(|e| TshError::write(&path, e))?;
        write_file(&path, text.as_bytes())?;
        write_file(
            &self.home.join(CURRENT_PROFILE),
            format!("{}\n", profile.proxy_host()).as_bytes(),
        )
    }

    /// Writes the credentials of `profile`, replacing those of an earlier login.
    pub fn save_credentials(&self, profile: &Profile, creds: &Credentials) -> Result<(), TshError> {
        let p = profile.key_paths(&self.home);
        let key = portcullis_pki::ssh::private_key_openssh(&creds.ssh_key)?;
        write_file(&p.private_key, key.as_bytes())?;
        let public = portcullis_pki::ssh::public_key_line(creds.ssh_key.public_key())?;
        write_file(&p.public_key, format!("{public}\n").as_bytes())?;
        let cert = creds
            .ssh_cert
            .to_openssh()
            .map_err(|e| TshError::write(&p.ssh_cert, e))?;
        write_file(&p.ssh_cert, format!("{}\n", cert.trim()).as_bytes())?;
        write_file(&p.tls_cert, creds.tls_cert_pem.as_bytes())?;
        write_file(&p.tls_key, creds.tls_key_pem.expose().as_bytes())?;
        let mut cas = String::new();
        for pem in &creds.tls_ca_pems {
            cas.push_str(pem.trim());
            cas.push('\n');
        }
        write_file(&p.tls_ca(&profile.cluster), cas.as_bytes())?;
        let known = known_hosts_text(creds)?;
        write_file(&p.known_hosts, known.as_bytes())
    }

    /// Reads the credentials of `profile`; a missing key or certificate means "not logged in".
    pub fn load_credentials(&self, profile: &Profile) -> Result<Credentials, TshError> {
        let p = profile.key_paths(&self.home);
        if !p.private_key.exists() || !p.ssh_cert.exists() {
            return Err(TshError::NotLoggedIn);
        }
        let ssh_key = portcullis_pki::ssh::parse_private_key(&read(&p.private_key)?)
            .map_err(|e| TshError::profile(&p.private_key, e))?;
        let ssh_cert = portcullis_pki::ssh::parse_certificate(&read(&p.ssh_cert)?)
            .map_err(|e| TshError::profile(&p.ssh_cert, e))?;
        let tls_cert_pem = read(&p.tls_cert)?;
        let tls_key_pem = Secret::new(read(&p.tls_key)?);
        let mut tls_ca_pems = Vec::new();
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&p.cas_dir)
            .map_err(|e| TshError::profile(&p.cas_dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|path| path.extension().is_some_and(|x| x == "pem"))
            .collect();
        entries.sort();
        for path in entries {
            tls_ca_pems.push(read(&path)?);
        }
        let (ssh_host_cas, leaf_host_cas) = parse_known_hosts(&read(&p.known_hosts)?)
            .map_err(|e| TshError::profile(&p.known_hosts, e))?;
        Ok(Credentials {
            ssh_key,
            ssh_cert,
            tls_cert_pem,
            tls_key_pem,
            tls_ca_pems,
            ssh_host_cas,
            leaf_host_cas,
        })
    }

    /// The saved TLS CA certificates for `profile` (none when not logged in).
    pub fn tls_cas(&self, profile: &Profile) -> Vec<String> {
        let p = profile.key_paths(&self.home);
        std::fs::read_to_string(p.tls_ca(&profile.cluster))
            .map(|s| vec![s])
            .unwrap_or_default()
    }

    /// Deletes the profile, its credentials, and the current-profile marker pointing at it.
    pub fn remove(&self, profile: &Profile) -> Result<(), TshError> {
        let p = profile.key_paths(&self.home);
        for path in [
            &p.private_key,
            &p.public_key,
            &p.ssh_cert,
            &p.tls_cert,
            &p.tls_key,
        ] {
            remove_file(path)?;
        }
        if p.cas_dir.exists() {
            std::fs::remove_dir_all(&p.cas_dir).map_err(|e| TshError::write(&p.cas_dir, e))?;
        }
        // Another user's keys for the same proxy may remain; only an empty directory goes.
        let _ = std::fs::remove_dir(&p.dir);
        remove_file(&self.profile_path(&profile.proxy_host()))?;
        let current = self.home.join(CURRENT_PROFILE);
        if std::fs::read_to_string(&current).is_ok_and(|h| h.trim() == profile.proxy_host()) {
            remove_file(&current)?;
        }
        Ok(())
    }
}

/// The known_hosts file of a login, usable by OpenSSH as it is. The host CA of the cluster
/// logged in to vouches for any name (`*`): OpenSSH via `ssh -J` knows a node only
/// by the bare name the user typed, which cannot be tied to a cluster. A leaf's host CA
/// vouches only for `*.<leaf>` names, so it can never pass for a host of the root or of
/// another leaf; OpenSSH users reach a leaf node as `<node>.<leaf>` through `HostKeyAlias`
/// (README, "Using it by hand").
pub fn known_hosts_text(creds: &Credentials) -> Result<String, portcullis_pki::PkiError> {
    let mut known = String::new();
    for ca in &creds.ssh_host_cas {
        let line = portcullis_pki::ssh::public_key_line(ca)?;
        known.push_str(&format!("@cert-authority * {line}\n"));
    }
    for (leaf, ca) in &creds.leaf_host_cas {
        // Names come from the root's auth, which accepts only DNS names; anything else
        // could widen the pattern, so it is left out rather than written.
        if portcullis_types::validate_cluster_name(leaf).is_err() {
            continue;
        }
        let line = portcullis_pki::ssh::public_key_line(ca)?;
        known.push_str(&format!("# Host CA of leaf cluster {leaf}: only <host>.{leaf}\n"));
        known.push_str(&format!("@cert-authority *.{leaf} {line}\n"));
    }
    Ok(known)
}

/// Reads back [`known_hosts_text`]: the `*` CAs, and the `*.<leaf>` CAs with their leaf.
/// Lines with any other host pattern vouch for nothing and are skipped, as are comments.
#[allow(clippy::type_complexity)]
pub fn parse_known_hosts(
    text: &str,
) -> Result<(Vec<PublicKey>, Vec<(String, PublicKey)>), portcullis_pki::PkiError> {
    let mut root = Vec::new();
    let mut leaves = Vec::new();
    for line in text.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix("@cert-authority") else {
            continue;
        };
        let Some((pattern, key)) = rest.trim_start().split_once(char::is_whitespace) else {
            continue;
        };
        let key = portcullis_pki::ssh::parse_public_key(key)?;
        if pattern == "*" {
            root.push(key);
        } else if let Some(leaf) = pattern.strip_prefix("*.")
            && portcullis_types::validate_cluster_name(leaf).is_ok()
        {
            leaves.push((leaf.to_string(), key));
        }
    }
    Ok((root, leaves))
}

fn read(path: &Path) -> Result<String, TshError> {
    std::fs::read_to_string(path).map_err(|e| TshError::profile(path, e))
}

fn write_file(path: &Path, data: &[u8]) -> Result<(), TshError> {
    write_private(path, data).map_err(|e| TshError::write(path, e))
}

fn remove_file(path: &Path) -> Result<(), TshError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(TshError::write(path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_documented_layout() {
        let p = key_paths(Path::new("/h"), "proxy.example.com", "alice");
        assert_eq!(p.private_key, Path::new("/h/keys/proxy.example.com/alice"));
        assert_eq!(
            p.ssh_cert,
            Path::new("/h/keys/proxy.example.com/alice-cert.pub")
        );
        assert_eq!(
            p.tls_cert,
            Path::new("/h/keys/proxy.example.com/alice-x509.pem")
        );
        assert_eq!(
            p.tls_key,
            Path::new("/h/keys/proxy.example.com/alice-x509-key.pem")
        );
        assert_eq!(
            p.known_hosts,
            Path::new("/h/keys/proxy.example.com/cas/known_hosts")
        );
        assert_eq!(
            p.tls_ca("root"),
            Path::new("/h/keys/proxy.example.com/cas/root.pem")
        );
        let evil = key_paths(Path::new("/h"), "..", "../../x");
        assert!(evil.private_key.starts_with("/h/keys/"));
        assert_eq!(evil.dir, Path::new("/h/keys/_.."));
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(split_host_port("a.b:3080"), ("a.b".into(), Some(3080)));
        assert_eq!(split_host_port("a.b"), ("a.b".into(), None));
        assert_eq!(split_host_port("[::1]:22"), ("::1".into(), Some(22)));
        assert_eq!(split_host_port("::1"), ("::1".into(), None));
        assert_eq!(
            normalize_proxy("https://p.example.com/").unwrap(),
            "p.example.com:3080"
        );
        assert_eq!(normalize_proxy("127.0.0.1:443").unwrap(), "127.0.0.1:443");
        assert_eq!(join_host_port("::1", 3023), "[::1]:3023");
        assert!(normalize_proxy("").is_err());
        assert!(normalize_proxy(":3080").is_err());
        assert_eq!(normalize_proxy("::1").unwrap(), "[::1]:3080");
        assert_eq!(split_host_port("a:b:c"), ("a:b:c".into(), None));
    }

    fn creds_with(root_ca: &PublicKey, leaves: Vec<(String, PublicKey)>) -> Credentials {
        let key = portcullis_pki::ssh::generate_key().unwrap();
        let ca = portcullis_pki::ssh::SshCa::generate().unwrap();
        let cert = ca
            .sign_user_cert(&portcullis_pki::ssh::UserCertRequest {
                public_key: key.public_key().clone(),
                username: "alice".into(),
                principals: vec!["alice".into()],
                ttl: std::time::Duration::from_secs(60),
                roles: vec![],
                traits: Default::default(),
                route_to_cluster: String::new(),
                permit_port_forwarding: false,
                permit_agent_forwarding: false,
            })
            .unwrap();
        Credentials {
            ssh_key: key,
            ssh_cert: cert,
            tls_cert_pem: String::new(),
            tls_key_pem: Secret::new(String::new()),
            tls_ca_pems: vec![],
            ssh_host_cas: vec![root_ca.clone()],
            leaf_host_cas: leaves,
        }
    }

    #[test]
    fn leaf_host_cas_are_scoped_to_their_leaf() {
        let root_ca = portcullis_pki::ssh::generate_key().unwrap().public_key().clone();
        let leaf_ca = portcullis_pki::ssh::generate_key().unwrap().public_key().clone();
        let other_ca = portcullis_pki::ssh::generate_key().unwrap().public_key().clone();
        let creds = creds_with(
            &root_ca,
            vec![
                ("leaf.example.com".into(), leaf_ca.clone()),
                ("other".into(), other_ca.clone()),
                // Never written: a name that would widen the pattern.
                ("evil/../x *".into(), other_ca.clone()),
            ],
        );
        let text = known_hosts_text(&creds).unwrap();
        let line = |k: &PublicKey| portcullis_pki::ssh::public_key_line(k).unwrap();
        let ca_lines: Vec<&str> = text.lines().filter(|l| l.starts_with('@')).collect();
        assert_eq!(
            ca_lines,
            [
                format!("@cert-authority * {}", line(&root_ca)),
                format!("@cert-authority *.leaf.example.com {}", line(&leaf_ca)),
                format!("@cert-authority *.other {}", line(&other_ca)),
            ],
            "{text}"
        );
        // Read back with the same scopes; tsh's own checks use only the dialled cluster's.
        let (root, leaves) = parse_known_hosts(&text).unwrap();
        assert_eq!(root, std::slice::from_ref(&root_ca));
        let back = Credentials { ssh_host_cas: root, leaf_host_cas: leaves, ..creds };
        assert_eq!(back.host_cas_for("root.example.com", "root.example.com"), std::slice::from_ref(&root_ca));
        assert_eq!(back.host_cas_for("", "root.example.com"), [root_ca]);
        assert_eq!(back.host_cas_for("leaf.example.com", "root.example.com"), [leaf_ca]);
        assert_eq!(back.host_cas_for("other", "root.example.com"), [other_ca]);
        assert!(back.host_cas_for("nowhere", "root.example.com").is_empty());
        // A foreign pattern vouches for nothing.
        let (root, leaves) = parse_known_hosts(&format!("@cert-authority root-node {}\n", line(&back.ssh_host_cas[0]))).unwrap();
        assert!(root.is_empty() && leaves.is_empty());
    }

    #[test]
    fn profile_round_trip_and_removal() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().to_path_buf());
        assert!(store.current().unwrap().is_none());
        let profile = Profile {
            web_proxy_addr: "localhost:3080".into(),
            ssh_proxy_addr: "localhost:3023".into(),
            username: "alice".into(),
            cluster: "root".into(),
            selected_cluster: String::new(),
            insecure: true,
        };
        store.save(&profile).unwrap();
        assert_eq!(store.current().unwrap().as_ref(), Some(&profile));
        assert!(matches!(
            store.load_credentials(&profile),
            Err(TshError::NotLoggedIn)
        ));
        store.remove(&profile).unwrap();
        assert!(store.current().unwrap().is_none());
    }
}
