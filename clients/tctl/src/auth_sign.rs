//! `tctl auth sign`: fresh keys, user certificates from the auth service, one identity file.

use std::io::Write;
use std::path::Path;

use portcullis_pki::{Identity, Secret};
use portcullis_proto::auth::{GenerateUserCertsRequest, UserCerts};
use portcullis_types::{SystemRole, parse_duration};

use crate::cli::SignArgs;
use crate::client::AuthApi;
use crate::error::TctlError;
use crate::write_out;

/// Keys made locally; only their public halves go to the auth service.
struct Keys {
    ssh_private: String,
    ssh_public: String,
    tls_private_pem: String,
    tls_public_der: Vec<u8>,
}

fn generate_keys() -> Result<Keys, TctlError> {
    let ssh = portcullis_pki::ssh::generate_key()?;
    let tls = portcullis_pki::x509::generate_key()?;
    Ok(Keys {
        ssh_private: portcullis_pki::ssh::private_key_openssh(&ssh)?,
        ssh_public: portcullis_pki::ssh::public_key_line(ssh.public_key())?,
        tls_private_pem: tls.serialize_pem(),
        tls_public_der: portcullis_pki::x509::public_key_der(&tls),
    })
}

/// The identity file contents for the certificates the auth service issued.
fn identity(certs: UserCerts, keys: Keys, fallback_cluster: &str) -> Identity {
    let cluster = if certs.cluster_name.is_empty() { fallback_cluster.to_string() } else { certs.cluster_name };
    let cas = certs.cas.unwrap_or_default();
    let mut id = Identity::new(
        cluster,
        certs.username,
        String::new(),
        SystemRole::User.to_string(),
        certs.tls_cert_pem,
        Secret::new(keys.tls_private_pem),
        cas.tls_ca_pem,
        Secret::new(keys.ssh_private),
        certs.ssh_cert,
    );
    id.ssh_user_cas = cas.ssh_user_ca;
    id.ssh_host_cas = cas.ssh_host_ca;
    id
}

pub async fn sign(api: &mut AuthApi, out: &mut dyn Write, args: &SignArgs) -> Result<(), TctlError> {
    if args.format != "file" {
        return Err(TctlError::usage(format!(
            "--format={:?} is not supported; only \"file\" (a Portcullis identity file) is",
            args.format
        )));
    }
    let ttl = parse_duration(&args.ttl)?;
    if ttl.is_zero() {
        return Err(TctlError::usage("--ttl must be longer than zero"));
    }
    let keys = generate_keys()?;
    let certs = api
        .generate_user_certs(GenerateUserCertsRequest {
            username: args.user.clone(),
            ssh_public_key: keys.ssh_public.clone(),
            tls_public_key: keys.tls_public_der.clone(),
            ttl_seconds: ttl.as_secs().max(1),
            route_to_cluster: args.cluster.clone().unwrap_or_default(),
        })
        .await?;
    let fallback = api.identity.cluster_name.clone();
    identity(certs, keys, &fallback).save(&args.out)?;
    write_out(out, &format!("The credentials have been written to {}\n", display(&args.out)))
}

fn display(p: &Path) -> String {
    p.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_proto::auth::CertAuthorities;

    #[test]
    fn identity_file_holds_keys_certs_and_cas() {
        let keys = generate_keys().unwrap();
        assert!(keys.ssh_public.starts_with("ssh-ed25519 "));
        assert!(keys.tls_private_pem.contains("PRIVATE KEY"));
        let certs = UserCerts {
            username: "alice".into(),
            ssh_cert: "ssh-ed25519-cert-v01@openssh.com AAAA".into(),
            tls_cert_pem: "CERT".into(),
            cas: Some(CertAuthorities {
                tls_ca_pem: vec!["CA".into()],
                ssh_user_ca: vec!["user-ca".into()],
                ssh_host_ca: vec!["host-ca".into()],
            }),
            cluster_name: String::new(),
            ..Default::default()
        };
        let id = identity(certs, keys, "root");
        assert_eq!(id.cluster_name, "root");
        assert_eq!(id.name, "alice");
        assert_eq!(id.system_role, "User");
        assert_eq!(id.ssh_host_cas, vec!["host-ca".to_string()]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alice.json");
        id.save(&path).unwrap();
        let back = Identity::load(&path).unwrap();
        assert!(back.ssh_private_key.expose().contains("OPENSSH PRIVATE KEY"));
        assert_eq!(back.tls_ca_pems, vec!["CA".to_string()]);
    }
}
