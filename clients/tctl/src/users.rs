//! `tctl users add|set-password|update|ls|rm|unlock`.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};

use portcullis_types::user::LOGINS_TRAIT;
use portcullis_types::{Kind, Resource, Traits, User};
use time::OffsetDateTime;
use tonic::Code;

use crate::cli::{Format, UsersAddArgs, UsersUpdateArgs};
use crate::client::AuthApi;
use crate::error::TctlError;
use crate::output::{json_array, split_list, yaml_documents};
use crate::tables::{decode_all, users_table};
use crate::write_out;

/// Parses `--traits` values: `key=v1,v2` where an item without `=` adds a value to the
/// previous key, so `a=1,2,b=3` is `a: [1, 2], b: [3]`.
pub fn parse_traits(items: &[String]) -> Result<Traits, TctlError> {
    let mut traits: Traits = BTreeMap::new();
    for item in items {
        let mut current: Option<String> = None;
        for part in item.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.split_once('=') {
                Some((k, v)) => {
                    let k = k.trim();
                    if k.is_empty() {
                        return Err(TctlError::usage(format!("--traits {item:?}: {part:?} has an empty key")));
                    }
                    traits.entry(k.to_string()).or_default().push(v.trim().to_string());
                    current = Some(k.to_string());
                }
                None => match &current {
                    Some(k) => traits.entry(k.clone()).or_default().push(part.to_string()),
                    None => {
                        return Err(TctlError::usage(format!("--traits {item:?}: expected key=value, got {part:?}")));
                    }
                },
            }
        }
    }
    for values in traits.values_mut() {
        values.retain(|v| !v.is_empty());
    }
    Ok(traits)
}

/// The user `users add` creates.
pub fn new_user(args: &UsersAddArgs) -> Result<User, TctlError> {
    let roles = split_list(&args.roles);
    if roles.is_empty() {
        return Err(TctlError::usage("--roles needs at least one role, e.g. --roles=access"));
    }
    let mut traits = parse_traits(&args.traits)?;
    if let Some(l) = &args.logins {
        traits.insert(LOGINS_TRAIT.to_string(), split_list(l));
    }
    let user = User::new(args.name.clone(), roles, traits);
    user.validate()?;
    Ok(user)
}

fn user_json(user: &User) -> Result<String, TctlError> {
    serde_json::to_string(user).map_err(|e| TctlError::Protocol(e.to_string()))
}

pub async fn add(api: &mut AuthApi, out: &mut dyn Write, args: &UsersAddArgs) -> Result<(), TctlError> {
    let user = new_user(args)?;
    match api.upsert(user_json(&user)?, true).await {
        Ok(_) => {}
        Err(s) if s.code() == Code::AlreadyExists => {
            return Err(TctlError::usage(format!(
                "user \"{}\" already exists; use 'tctl users update' to change it",
                args.name
            )));
        }
        Err(s) => return Err(api.err(&s)),
    }
    write_out(
        out,
        &format!(
            "User \"{0}\" has been created.\nSet a password with: tctl users set-password {0}\n",
            args.name
        ),
    )
}

/// Reads the new password: twice from the terminal, or one line from standard input.
fn read_password(name: &str) -> Result<String, TctlError> {
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(format!("Enter password for {name}: "))
            .map_err(|e| TctlError::io("cannot read the password from the terminal", e))?;
        let again = rpassword::prompt_password("Confirm password: ")
            .map_err(|e| TctlError::io("cannot read the password from the terminal", e))?;
        if first != again {
            return Err(TctlError::usage("the passwords do not match"));
        }
        first
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| TctlError::io("cannot read the password from standard input", e))?;
        line.trim_end_matches(['\r', '\n']).to_string()
    };
    if password.is_empty() {
        return Err(TctlError::usage("the password is empty"));
    }
    Ok(password)
}

pub async fn set_password(api: &mut AuthApi, out: &mut dyn Write, name: &str) -> Result<(), TctlError> {
    let password = read_password(name)?;
    api.set_password(name, password).await?;
    write_out(out, &format!("Password for user \"{name}\" has been set.\n"))
}

/// Fetches one user.
async fn get_user(api: &mut AuthApi, name: &str) -> Result<User, TctlError> {
    let values = api.get_resources(Kind::User, Some(name)).await?;
    match decode_all(&values)?.into_iter().next() {
        Some(Resource::User(u)) => Ok(u),
        _ => Err(TctlError::Api(format!("user \"{name}\" not found"))),
    }
}

/// Applies `users update` flags to a user.
pub fn apply_update(user: &mut User, args: &UsersUpdateArgs) -> Result<(), TctlError> {
    if args.set_roles.is_none() && args.set_logins.is_none() {
        return Err(TctlError::usage("nothing to update: pass --set-roles and/or --set-logins"));
    }
    if let Some(r) = &args.set_roles {
        user.spec.roles = split_list(r);
    }
    if let Some(l) = &args.set_logins {
        user.spec.traits.insert(LOGINS_TRAIT.to_string(), split_list(l));
    }
    user.validate()?;
    Ok(())
}

pub async fn update(api: &mut AuthApi, out: &mut dyn Write, args: &UsersUpdateArgs) -> Result<(), TctlError> {
    let mut user = get_user(api, &args.name).await?;
    apply_update(&mut user, args)?;
    api.upsert(user_json(&user)?, false).await.map_err(|s| api.err(&s))?;
    write_out(out, &format!("User \"{}\" has been updated.\n", args.name))
}

pub async fn ls(api: &mut AuthApi, out: &mut dyn Write, format: Format) -> Result<(), TctlError> {
    let values = api.get_resources(Kind::User, None).await?;
    let text = match format {
        Format::Text => {
            let locks: BTreeMap<String, OffsetDateTime> = api
                .list_user_locks()
                .await?
                .into_iter()
                // An admin lock with no end has no time to show (0).
                .filter(|l| l.locked_until_unix > 0)
                .filter_map(|l| OffsetDateTime::from_unix_timestamp(l.locked_until_unix).ok().map(|t| (l.username, t)))
                .collect();
            users_table(&decode_all(&values)?, &locks).render()
        }
        Format::Yaml => yaml_documents(&values)?,
        Format::Json => json_array(&values)?,
    };
    write_out(out, &text)
}

pub async fn rm(api: &mut AuthApi, out: &mut dyn Write, name: &str) -> Result<(), TctlError> {
    api.delete(Kind::User, name).await?;
    write_out(out, &format!("User \"{name}\" has been deleted\n"))
}

/// The `--ttl` of `users lock`: none means until unlocked; zero is refused.
pub fn lock_ttl(args: &crate::cli::UsersLockArgs) -> Result<Option<std::time::Duration>, TctlError> {
    match &args.ttl {
        None => Ok(None),
        Some(t) => {
            let ttl = portcullis_types::parse_duration(t)?;
            if ttl.as_secs() == 0 {
                return Err(TctlError::usage(format!("--ttl={t} locks for no time; give at least 1s, or omit --ttl to lock until unlocked")));
            }
            Ok(Some(ttl))
        }
    }
}

/// `tctl users lock NAME [--ttl=30m] [--message=TEXT]`.
pub async fn lock(api: &mut AuthApi, out: &mut dyn Write, args: &crate::cli::UsersLockArgs) -> Result<(), TctlError> {
    let ttl = lock_ttl(args)?;
    api.lock_user(&args.name, ttl, &args.message).await?;
    let until = match ttl {
        Some(t) => format!(" for {}", portcullis_types::format_duration_go(t)),
        None => " until 'tctl users unlock' is run".to_string(),
    };
    write_out(out, &format!("User \"{}\" has been locked{until}.\n", args.name))
}

/// `tctl users unlock NAME`: lifts a user's admin lock and the lock failed logins put on it.
pub async fn unlock(api: &mut AuthApi, out: &mut dyn Write, name: &str) -> Result<(), TctlError> {
    let text = if api.unlock_user(name).await? {
        format!("User \"{name}\" has been unlocked.\n")
    } else {
        format!("User \"{name}\" was not locked; its failed logins have been forgotten.\n")
    };
    write_out(out, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn lock_ttl_is_optional_and_must_be_positive() {
        use clap::Parser;
        let lock = |argv: &[&str]| match crate::cli::Cli::try_parse_from(argv).unwrap().command {
            crate::cli::Command::Users { cmd: crate::cli::UsersCmd::Lock(a) } => a,
            other => panic!("{other:?}"),
        };
        let a = lock(&["tctl", "users", "lock", "alice", "--ttl=30m", "--message=laptop stolen"]);
        assert_eq!((a.name.as_str(), a.message.as_str()), ("alice", "laptop stolen"));
        assert_eq!(lock_ttl(&a).unwrap(), Some(std::time::Duration::from_secs(1800)));
        assert_eq!(lock_ttl(&lock(&["tctl", "users", "lock", "bob"])).unwrap(), None);
        let e = lock_ttl(&lock(&["tctl", "users", "lock", "bob", "--ttl=0s"])).unwrap_err().to_string();
        assert!(e.contains("--ttl=0s locks for no time"), "{e}");
        assert!(lock_ttl(&lock(&["tctl", "users", "lock", "bob", "--ttl=soon"])).is_err());
    }

    #[test]
    fn traits_parsing() {
        let t = parse_traits(&v(&["logins=root,ubuntu,env=prod", "team=a"])).unwrap();
        assert_eq!(t["logins"], v(&["root", "ubuntu"]));
        assert_eq!(t["env"], v(&["prod"]));
        assert_eq!(t["team"], v(&["a"]));
        assert!(parse_traits(&v(&["root"])).is_err());
        assert!(parse_traits(&v(&["=x"])).is_err());
    }

    #[test]
    fn add_and_update() {
        let args = UsersAddArgs {
            name: "alice".into(),
            roles: "access, editor".into(),
            logins: Some("root,alice".into()),
            traits: v(&["kubernetes_groups=dev"]),
        };
        let mut u = new_user(&args).unwrap();
        assert_eq!(u.spec.roles, v(&["access", "editor"]));
        assert_eq!(u.logins(), v(&["root", "alice"]).as_slice());
        assert_eq!(u.spec.traits["kubernetes_groups"], v(&["dev"]));
        let json: serde_json::Value = serde_json::from_str(&user_json(&u).unwrap()).unwrap();
        assert_eq!(json["kind"], "user");
        assert_eq!(json["version"], "v2");
        assert_eq!(json["spec"]["traits"]["logins"][0], "root");

        let upd = UsersUpdateArgs { name: "alice".into(), set_roles: Some("access,demo".into()), set_logins: None };
        apply_update(&mut u, &upd).unwrap();
        assert_eq!(u.spec.roles, v(&["access", "demo"]));
        assert_eq!(u.logins(), v(&["root", "alice"]).as_slice());
        let none = UsersUpdateArgs { name: "alice".into(), set_roles: None, set_logins: None };
        assert!(apply_update(&mut u, &none).is_err());

        let no_roles = UsersAddArgs { roles: " ".into(), ..args };
        assert!(new_user(&no_roles).unwrap_err().to_string().contains("--roles"));
    }
}
