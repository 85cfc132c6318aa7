//! Trusted-cluster role mapping: remote (root) role names to local (leaf) roles.

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::error::{TypesError, regex_reason};
use crate::labels::{glob_to_regex, is_regex};

/// One `role_map` rule. `remote` is an exact role name, a glob with `*`, or an RE2-style regex
/// written `^...$`; `local` entries may use `$1` / `${1}` from the regex or glob captures.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct RoleMapping {
    pub remote: String,
    #[serde(default, deserialize_with = "crate::serde_util::string_or_vec")]
    pub local: Vec<String>,
}

impl RoleMapping {
    pub fn new(remote: impl Into<String>, local: Vec<String>) -> Self {
        RoleMapping {
            remote: remote.into(),
            local,
        }
    }
}

/// Every rule becomes an anchored regex: exact names are quoted, and each `*` of a glob is a
/// capture group so `cluster-*` can feed `$1` like a regex would.
fn compile_remote(remote: &str) -> Result<Regex, regex::Error> {
    if is_regex(remote) {
        Regex::new(remote)
    } else if remote.contains('*') {
        Regex::new(&glob_to_regex(remote))
    } else {
        Regex::new(&format!("^{}$", regex::escape(remote)))
    }
}

fn rule_label(index: usize, rule: &RoleMapping) -> String {
    format!("rule {} (remote \"{}\")", index + 1, rule.remote)
}

/// Maps the user's remote roles to local roles. Every rule is applied to every remote role;
/// the result is deduplicated in order of first appearance. An empty result means no access,
/// which the caller reports.
pub fn map_roles(
    role_map: &[RoleMapping],
    remote_roles: &[String],
) -> Result<Vec<String>, TypesError> {
    let compiled = role_map
        .iter()
        .enumerate()
        .map(|(i, rule)| {
            compile_remote(&rule.remote).map_err(|e| {
                TypesError::InvalidRoleMap(format!(
                    "{}: invalid regex: {}",
                    rule_label(i, rule),
                    regex_reason(&e)
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut out: Vec<String> = Vec::new();
    for remote_role in remote_roles {
        for (rule, re) in role_map.iter().zip(&compiled) {
            let Some(caps) = re.captures(remote_role) else {
                continue;
            };
            for local in &rule.local {
                let mut mapped = String::new();
                caps.expand(local, &mut mapped);
                // `$2` with one group expands to "", which is no role at all.
                if !mapped.is_empty() && !out.contains(&mapped) {
                    out.push(mapped);
                }
            }
        }
    }
    Ok(out)
}

/// Rejects rules that cannot be what the administrator meant: empty or duplicate `remote`,
/// empty `local`, wildcard/regex local roles (local roles must be concrete), `$N` references to
/// capture groups that do not exist, and regexes that do not compile.
pub fn validate_role_map(role_map: &[RoleMapping]) -> Result<(), TypesError> {
    for (i, rule) in role_map.iter().enumerate() {
        let fail = |reason: String| {
            TypesError::InvalidRoleMap(format!("{}: {reason}", rule_label(i, rule)))
        };
        if rule.remote.trim().is_empty() {
            return Err(TypesError::InvalidRoleMap(format!(
                "rule {}: remote must not be empty",
                i + 1
            )));
        }
        if let Some(first) = role_map[..i].iter().position(|r| r.remote == rule.remote) {
            return Err(fail(format!(
                "duplicate remote, already mapped by rule {}",
                first + 1
            )));
        }
        if rule.remote.len() > 1 && rule.remote.starts_with('^') != rule.remote.ends_with('$') {
            // Only `^...$` is a regex; anything else is compared literally and would never match.
            return Err(fail(
                "a regular expression must start with \"^\" and end with \"$\"".into(),
            ));
        }
        let re = compile_remote(&rule.remote)
            .map_err(|e| fail(format!("invalid regex: {}", regex_reason(&e))))?;
        if rule.local.is_empty() {
            return Err(fail("local must list at least one role".into()));
        }
        for local in &rule.local {
            check_local(local, &re)
                .map_err(|reason| fail(format!("local \"{local}\" {reason}")))?;
        }
    }
    Ok(())
}

/// A local entry is a role name, possibly with `$N`, `${N}` or `${name}` capture references.
fn check_local(local: &str, re: &Regex) -> Result<(), String> {
    if local.trim().is_empty() {
        return Err("is empty".into());
    }
    if local.contains('*') {
        return Err("contains a wildcard: local roles must be concrete role names".into());
    }
    if local.starts_with('^') {
        return Err("looks like a regex: local roles must be concrete role names".into());
    }
    if local.chars().any(char::is_whitespace) {
        return Err("contains whitespace".into());
    }
    let group_count = re.captures_len();
    let bytes = local.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'$' {
            i += 1;
            continue;
        }
        // `$$` is an escaped literal dollar in regex expansion.
        if bytes.get(i + 1) == Some(&b'$') {
            i += 2;
            continue;
        }
        let (reference, next) = if bytes.get(i + 1) == Some(&b'{') {
            let Some(end) = local[i + 2..].find('}') else {
                return Err("has an unterminated \"${\"".into());
            };
            (&local[i + 2..i + 2 + end], i + 3 + end)
        } else {
            let len = local[i + 1..]
                .bytes()
                .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
                .count();
            (&local[i + 1..i + 1 + len], i + 1 + len)
        };
        if reference.is_empty() {
            return Err("has a \"$\" that is not a capture reference like $1".into());
        }
        let exists = match reference.parse::<usize>() {
            Ok(n) => n < group_count,
            Err(_) => re.capture_names().flatten().any(|n| n == reference),
        };
        if !exists {
            let hint = if reference.chars().next().is_some_and(|c| c.is_ascii_digit())
                && reference.parse::<usize>().is_err()
            {
                format!(
                    " (write ${{{}}} to follow a group number with text)",
                    reference.trim_end_matches(|c: char| !c.is_ascii_digit())
                )
            } else {
                String::new()
            };
            return Err(format!(
                "refers to capture group \"{reference}\" but remote has {} group(s){hint}",
                group_count.saturating_sub(1)
            ));
        }
        i = next;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(remote: &str, local: &[&str]) -> RoleMapping {
        RoleMapping::new(remote, local.iter().map(|s| s.to_string()).collect())
    }

    fn roles(r: &[&str]) -> Vec<String> {
        r.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn exact_match() {
        let map = [rule("access", &["visitor"])];
        assert_eq!(map_roles(&map, &roles(&["access"])).unwrap(), ["visitor"]);
        assert!(
            map_roles(&map, &roles(&["access2", "editor"]))
                .unwrap()
                .is_empty()
        );
        // Exact names are not regexes: the dot is literal.
        let map = [rule("a.b", &["x"])];
        assert!(map_roles(&map, &roles(&["axb"])).unwrap().is_empty());
    }

    #[test]
    fn wildcard_matches_any_role() {
        let map = [rule("*", &["mainuser"])];
        assert_eq!(
            map_roles(&map, &roles(&["admin", "user"])).unwrap(),
            ["mainuser"]
        );
        assert!(map_roles(&map, &[]).unwrap().is_empty());
    }

    #[test]
    fn glob_prefix() {
        let map = [rule("cluster-*", &["clusteradmin"])];
        assert_eq!(
            map_roles(&map, &roles(&["cluster-east"])).unwrap(),
            ["clusteradmin"]
        );
        assert!(
            map_roles(&map, &roles(&["xcluster-east", "cluster"]))
                .unwrap()
                .is_empty()
        );
        let map = [rule("team-*", &["leaf-$1"])];
        assert_eq!(map_roles(&map, &roles(&["team-db"])).unwrap(), ["leaf-db"]);
    }

    #[test]
    fn regex_with_capture_expansion() {
        let map = [rule("^admin-(.*)$", &["role-$1"])];
        assert_eq!(
            map_roles(&map, &roles(&["admin-east", "user", "admin-west"])).unwrap(),
            ["role-east", "role-west"]
        );
        let map = [rule("^remote-(.*)$", &["local-${1}"])];
        assert_eq!(
            map_roles(&map, &roles(&["remote-one"])).unwrap(),
            ["local-one"]
        );
        // Regex rules are anchored by the user: no partial matches.
        let map = [rule("^dev$", &["d"])];
        assert!(map_roles(&map, &roles(&["devops"])).unwrap().is_empty());
    }

    #[test]
    fn several_locals_and_rules_dedupe_in_order() {
        let map = [
            rule("admin", &["access", "editor"]),
            rule("*", &["visitor", "access"]),
        ];
        assert_eq!(
            map_roles(&map, &roles(&["admin", "dev"])).unwrap(),
            ["access", "editor", "visitor"]
        );
        assert_eq!(
            map_roles(&map, &roles(&["dev"])).unwrap(),
            ["visitor", "access"]
        );
    }

    #[test]
    fn no_match_is_empty() {
        let map = [rule("admin", &["x"]), rule("^ops-(.*)$", &["$1"])];
        assert_eq!(
            map_roles(&map, &roles(&["user"])).unwrap(),
            Vec::<String>::new()
        );
        assert!(map_roles(&[], &roles(&["admin"])).unwrap().is_empty());
    }

    #[test]
    fn map_reports_bad_regex() {
        let err = map_roles(&[rule("^(a$", &["x"])], &roles(&["a"])).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid role_map: rule 1 (remote \"^(a$\"): invalid regex"),
            "{err}"
        );
    }

    #[test]
    fn validate_accepts_good_maps() {
        validate_role_map(&[
            rule("access", &["visitor"]),
            rule("*", &["mainuser"]),
            rule("cluster-*", &["clusteradmin", "c-$1"]),
            rule("^remote-(.*)$", &["local-$1", "x-${1}"]),
            rule("^(?P<env>dev|prod)-.*$", &["$env-ops"]),
        ])
        .unwrap();
        validate_role_map(&[]).unwrap();
    }

    #[test]
    fn validate_rejects_bad_rules() {
        let cases: Vec<(Vec<RoleMapping>, &str)> = vec![
            (
                vec![rule("", &["x"])],
                "invalid role_map: rule 1: remote must not be empty",
            ),
            (
                vec![rule("a", &["x"]), rule("a", &["y"])],
                "invalid role_map: rule 2 (remote \"a\"): duplicate remote, already mapped by rule 1",
            ),
            (
                vec![rule("a", &[])],
                "invalid role_map: rule 1 (remote \"a\"): local must list at least one role",
            ),
            (
                vec![rule("a", &["*"])],
                "invalid role_map: rule 1 (remote \"a\"): local \"*\" contains a wildcard: local roles must be concrete role names",
            ),
            (
                vec![rule("a", &["dev-*"])],
                "invalid role_map: rule 1 (remote \"a\"): local \"dev-*\" contains a wildcard: local roles must be concrete role names",
            ),
            (
                vec![rule("a", &["^x$"])],
                "invalid role_map: rule 1 (remote \"a\"): local \"^x$\" looks like a regex: local roles must be concrete role names",
            ),
            (
                vec![rule("admin", &["role-$1"])],
                "invalid role_map: rule 1 (remote \"admin\"): local \"role-$1\" refers to capture group \"1\" but remote has 0 group(s)",
            ),
            (
                vec![rule("^a-(.*)$", &["$2"])],
                "invalid role_map: rule 1 (remote \"^a-(.*)$\"): local \"$2\" refers to capture group \"2\" but remote has 1 group(s)",
            ),
            (
                vec![rule("^a-(.*)$", &["x$"])],
                "invalid role_map: rule 1 (remote \"^a-(.*)$\"): local \"x$\" has a \"$\" that is not a capture reference like $1",
            ),
            (
                vec![rule("a", &[""])],
                "invalid role_map: rule 1 (remote \"a\"): local \"\" is empty",
            ),
            (
                vec![rule("^admin-(.*)", &["x"])],
                "invalid role_map: rule 1 (remote \"^admin-(.*)\"): a regular expression must start with \"^\" and end with \"$\"",
            ),
        ];
        for (map, want) in cases {
            assert_eq!(validate_role_map(&map).unwrap_err().to_string(), want);
        }
        let err = validate_role_map(&[rule("^(x$", &["y"])])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("invalid role_map: rule 1 (remote \"^(x$\"): invalid regex: "),
            "{err}"
        );
        let err = validate_role_map(&[rule("^a-(.*)$", &["$1x"])])
            .unwrap_err()
            .to_string();
        assert!(err.contains("write ${1}"), "{err}");
    }

    #[test]
    fn local_accepts_single_string() {
        let r: RoleMapping =
            serde_json::from_str(r#"{"remote":"admin","local":"mainuser"}"#).unwrap();
        assert_eq!(r.local, ["mainuser"]);
        let err =
            serde_json::from_str::<RoleMapping>(r#"{"remote":"a","locals":["x"]}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `locals`"), "{err}");
    }
}
