//! User traits and role templates: `{{internal.logins}}`, `{{external.X}}`, with prefix/suffix.

use std::collections::BTreeMap;

use crate::error::TypesError;

/// User traits: trait name -> values (e.g. `logins` -> `[root, ubuntu]`).
pub type Traits = BTreeMap<String, Vec<String>>;

/// True when the value contains template braces and must be expanded.
pub fn is_template(value: &str) -> bool {
    value.contains("{{") || value.contains("}}")
}

/// Expands one role value against the user's traits.
///
/// A plain string is returned as is. `prefix{{ns.name}}suffix` yields one value per trait value
/// (`dev-{{internal.logins}}` with logins `[a, b]` gives `[dev-a, dev-b]`); a missing trait yields
/// nothing. `internal` and `external` both read the trait `name`: traits of root-cluster users
/// arrive flattened, so the two namespaces share one map.
pub fn expand_template(value: &str, traits: &Traits) -> Result<Vec<String>, TypesError> {
    let Some(parsed) = parse(value)? else {
        return Ok(vec![value.to_string()]);
    };
    let Some(trait_values) = traits.get(parsed.name) else {
        return Ok(Vec::new());
    };
    Ok(trait_values
        .iter()
        // An empty trait value would turn `dev-{{..}}` into the bare prefix, never intended.
        .filter(|v| !v.is_empty())
        .map(|v| format!("{}{}{}", parsed.prefix, v, parsed.suffix))
        .collect())
}

/// Expands every value, keeping first-appearance order and dropping duplicates.
pub fn expand_values(values: &[String], traits: &Traits) -> Result<Vec<String>, TypesError> {
    let mut out: Vec<String> = Vec::new();
    for value in values {
        for expanded in expand_template(value, traits)? {
            if !out.contains(&expanded) {
                out.push(expanded);
            }
        }
    }
    Ok(out)
}

/// Checks template syntax without traits, for resource validation.
pub fn validate_template(value: &str) -> Result<(), TypesError> {
    parse(value).map(|_| ())
}

struct Parsed<'a> {
    prefix: &'a str,
    name: &'a str,
    suffix: &'a str,
}

fn parse(value: &str) -> Result<Option<Parsed<'_>>, TypesError> {
    let fail = |reason: &str| TypesError::InvalidTemplate {
        template: value.to_string(),
        reason: reason.to_string(),
    };
    let Some(open) = value.find("{{") else {
        if value.contains("}}") {
            return Err(fail("found \"}}\" without a matching \"{{\""));
        }
        return Ok(None);
    };
    let after_open = &value[open + 2..];
    let Some(close_rel) = after_open.find("}}") else {
        return Err(fail("found \"{{\" without a matching \"}}\""));
    };
    let expr = after_open[..close_rel].trim();
    let suffix = &after_open[close_rel + 2..];
    if suffix.contains("{{") || suffix.contains("}}") || expr.contains("{{") {
        return Err(fail("only one {{...}} expression is supported per value"));
    }
    let (namespace, name, bracketed) = split_expression(expr).ok_or_else(|| {
        fail("expected {{internal.NAME}} or {{external.NAME}} (also written ns[\"NAME\"])")
    })?;
    if namespace != "internal" && namespace != "external" {
        return Err(fail(&format!(
            "unsupported namespace \"{namespace}\" (expected \"internal\" or \"external\")"
        )));
    }
    // Quoted names (`external["a b"]`) may hold any character but quotes; dotted names are
    // identifiers.
    let bad_char = |c: char| {
        c == '"' || c == '\'' || (!bracketed && (c.is_whitespace() || "{}[]()".contains(c)))
    };
    if name.is_empty() || name.chars().any(bad_char) {
        return Err(fail(&format!("invalid trait name \"{name}\"")));
    }
    Ok(Some(Parsed {
        prefix: &value[..open],
        name,
        suffix,
    }))
}

/// Splits `ns.name` or `ns["name"]` into namespace, name and whether the name was quoted.
fn split_expression(expr: &str) -> Option<(&str, &str, bool)> {
    if let Some(bracket) = expr.find('[') {
        let namespace = expr[..bracket].trim();
        let inner = expr[bracket + 1..].strip_suffix(']')?.trim();
        let name = inner
            .strip_prefix('"')
            .and_then(|s| s.strip_suffix('"'))
            .or_else(|| inner.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')))?;
        return Some((namespace, name, true));
    }
    let (namespace, name) = expr.split_once('.')?;
    Some((namespace.trim(), name.trim(), false))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn traits() -> Traits {
        let mut t = Traits::new();
        t.insert("logins".into(), vec!["root".into(), "ubuntu".into()]);
        t.insert("env_from_okta".into(), vec!["staging".into()]);
        t.insert("with space".into(), vec!["x".into()]);
        t
    }

    #[test]
    fn plain_values_pass_through() {
        assert_eq!(
            expand_template("visitor", &traits()).unwrap(),
            vec!["visitor"]
        );
        assert_eq!(expand_template("", &traits()).unwrap(), vec![""]);
    }

    #[test]
    fn internal_and_external_expand() {
        assert_eq!(
            expand_template("{{internal.logins}}", &traits()).unwrap(),
            vec!["root", "ubuntu"]
        );
        assert_eq!(
            expand_template("{{ internal.logins }}", &traits()).unwrap(),
            vec!["root", "ubuntu"]
        );
        assert_eq!(
            expand_template("{{external.env_from_okta}}", &traits()).unwrap(),
            vec!["staging"]
        );
        assert_eq!(
            expand_template("{{external.logins}}", &traits()).unwrap(),
            vec!["root", "ubuntu"]
        );
        assert_eq!(
            expand_template(r#"{{external["with space"]}}"#, &traits()).unwrap(),
            vec!["x"]
        );
    }

    #[test]
    fn prefix_and_suffix_are_kept() {
        assert_eq!(
            expand_template("dev-{{internal.logins}}", &traits()).unwrap(),
            vec!["dev-root", "dev-ubuntu"]
        );
        assert_eq!(
            expand_template("a-{{internal.logins}}-b", &traits()).unwrap(),
            vec!["a-root-b", "a-ubuntu-b"]
        );
    }

    #[test]
    fn missing_trait_expands_to_nothing() {
        assert!(
            expand_template("{{internal.db_users}}", &traits())
                .unwrap()
                .is_empty()
        );
        assert!(
            expand_template("x-{{external.nope}}", &Traits::new())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn expand_values_dedupes_in_order() {
        let values = vec!["ubuntu".to_string(), "{{internal.logins}}".to_string()];
        assert_eq!(
            expand_values(&values, &traits()).unwrap(),
            vec!["ubuntu", "root"]
        );
    }

    #[test]
    fn malformed_templates_are_errors() {
        for (bad, reason) in [
            ("{{internal.logins", "without a matching \"}}\""),
            ("internal.logins}}", "without a matching \"{{\""),
            ("{{logins}}", "expected {{internal.NAME}}"),
            ("{{secret.logins}}", "unsupported namespace \"secret\""),
            ("{{internal.}}", "invalid trait name"),
            ("{{internal.a}}{{internal.b}}", "only one"),
        ] {
            let err = expand_template(bad, &traits()).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.starts_with(&format!("invalid template \"{bad}\"")),
                "{msg}"
            );
            assert!(msg.contains(reason), "{msg} should contain {reason}");
            assert!(validate_template(bad).is_err());
        }
        assert!(validate_template("{{internal.logins}}").is_ok());
    }
}
