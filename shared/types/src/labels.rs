//! Label selectors (`node_labels`, `cluster_labels`): exact values, lists, `*`, globs, `^regex$`.

use std::collections::BTreeMap;
use std::fmt;

use regex::Regex;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{TypesError, regex_reason};
use crate::traits::{Traits, expand_template, is_template, validate_template};

/// The wildcard key/value: `'*': '*'` matches every resource, labelled or not.
pub const WILDCARD: &str = "*";

/// A selector: label key -> accepted values. All keys must match (AND); any value of a key may
/// match (OR).
pub type Labels = BTreeMap<String, LabelValues>;

/// The accepted values of one selector key. Written in YAML as one string or a list.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabelValues(pub Vec<String>);

impl LabelValues {
    pub fn one(value: impl Into<String>) -> Self {
        LabelValues(vec![value.into()])
    }
    pub fn values(&self) -> &[String] {
        &self.0
    }
}

impl From<&str> for LabelValues {
    fn from(v: &str) -> Self {
        LabelValues::one(v)
    }
}
impl From<String> for LabelValues {
    fn from(v: String) -> Self {
        LabelValues(vec![v])
    }
}
impl From<Vec<String>> for LabelValues {
    fn from(v: Vec<String>) -> Self {
        LabelValues(v)
    }
}
impl From<Vec<&str>> for LabelValues {
    fn from(v: Vec<&str>) -> Self {
        LabelValues(v.into_iter().map(str::to_string).collect())
    }
}

impl Serialize for LabelValues {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // A single value goes back out as a plain string, as users write it.
        match self.0.as_slice() {
            [single] => s.serialize_str(single),
            many => many.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for LabelValues {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::serde_util::string_or_vec(d).map(LabelValues)
    }
}

impl fmt::Display for LabelValues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [single] => f.write_str(single),
            many => write!(f, "[{}]", many.join(",")),
        }
    }
}

/// True for values written as a regular expression: `^...$`.
pub fn is_regex(value: &str) -> bool {
    value.len() >= 2 && value.starts_with('^') && value.ends_with('$')
}

/// Turns a glob into an anchored regex where every `*` is a capture group `(.*)`.
pub(crate) fn glob_to_regex(glob: &str) -> String {
    let parts: Vec<String> = glob.split('*').map(regex::escape).collect();
    format!("^{}$", parts.join("(.*)"))
}

/// Matches one label value against one selector value: `*` matches anything, `^...$` is a
/// regex, a value containing `*` is a glob (as in Teleport), anything else must be equal.
pub fn value_matches(pattern: &str, value: &str) -> Result<bool, TypesError> {
    if pattern == WILDCARD {
        return Ok(true);
    }
    let compiled = if is_regex(pattern) {
        Regex::new(pattern)
    } else if pattern.contains('*') {
        Regex::new(&glob_to_regex(pattern))
    } else {
        return Ok(pattern == value);
    };
    compiled
        .map(|re| re.is_match(value))
        .map_err(|e| TypesError::InvalidLabels {
            input: pattern.to_string(),
            reason: format!("invalid regex: {}", regex_reason(&e)),
        })
}

/// Matches a resource's labels against a selector, expanding `{{internal.x}}` values first.
///
/// An empty selector matches nothing (roles must grant access explicitly); `'*': '*'` matches
/// everything, including resources with no labels.
pub fn match_labels(
    selector: &Labels,
    labels: &BTreeMap<String, String>,
    traits: &Traits,
) -> Result<bool, TypesError> {
    if selector.is_empty() {
        return Ok(false);
    }
    if let Some(values) = selector.get(WILDCARD) {
        if values.0.iter().all(|v| v == WILDCARD) && !values.0.is_empty() {
            return Ok(true);
        }
        return Err(TypesError::InvalidLabels {
            input: format!("*={values}"),
            reason: "the key \"*\" only accepts the value \"*\"".to_string(),
        });
    }
    for (key, values) in selector {
        let Some(actual) = labels.get(key) else {
            return Ok(false);
        };
        let mut matched = false;
        for pattern in &values.0 {
            for expanded in expand_template(pattern, traits)? {
                if value_matches(&expanded, actual)? {
                    matched = true;
                    break;
                }
            }
            if matched {
                break;
            }
        }
        if !matched {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Checks a selector when a resource is created, so bad regexes fail at `tctl create` and not
/// at login time. `field` names the selector in messages (e.g. `spec.allow.node_labels`).
pub fn validate_selector(selector: &Labels, field: &str) -> Result<(), String> {
    for (key, values) in selector {
        if key.is_empty() {
            return Err(format!("{field} has an empty label key"));
        }
        if key == WILDCARD && values.0.iter().any(|v| v != WILDCARD) {
            return Err(format!(
                "{field}: the key \"*\" only accepts the value \"*\", got {values}"
            ));
        }
        if values.0.is_empty() {
            return Err(format!("{field}.{key} has no values"));
        }
        for value in &values.0 {
            if is_template(value) {
                validate_template(value).map_err(|e| format!("{field}.{key}: {e}"))?;
                continue;
            }
            if value.starts_with('^') != value.ends_with('$') && value.len() > 1 {
                // Half-anchored values are almost always broken regexes; as literals they
                // would silently never match.
                return Err(format!(
                    "invalid regex \"{value}\": a regular expression must start with \"^\" and end with \"$\" ({field}.{key})"
                ));
            }
            let source = if is_regex(value) {
                value.clone()
            } else if value.contains('*') && value != WILDCARD {
                glob_to_regex(value)
            } else {
                continue;
            };
            if let Err(e) = Regex::new(&source) {
                return Err(format!(
                    "invalid regex \"{value}\": {} ({field}.{key})",
                    regex_reason(&e)
                ));
            }
        }
    }
    Ok(())
}

/// Renders resource labels for tables and messages: `env=prod,team=a`.
pub fn format_labels(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Renders a selector for messages: `environment=production`, `env=[a,b]`.
pub fn format_selector(selector: &Labels) -> String {
    selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses `k=v,k2=v2` as given to `--labels` / `--set-labels`. An empty string is no labels.
pub fn parse_labels_arg(input: &str) -> Result<BTreeMap<String, String>, TypesError> {
    let mut out = BTreeMap::new();
    for part in input.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((key, value)) = part.split_once('=') else {
            return Err(TypesError::InvalidLabels {
                input: input.to_string(),
                reason: format!("\"{part}\" is not of the form key=value"),
            });
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(TypesError::InvalidLabels {
                input: input.to_string(),
                reason: format!("\"{part}\" has an empty key"),
            });
        }
        out.insert(key.to_string(), value.trim().to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(pairs: &[(&str, &[&str])]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), LabelValues::from(v.to_vec())))
            .collect()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn m(selector: &Labels, target: &BTreeMap<String, String>) -> bool {
        match_labels(selector, target, &Traits::new()).unwrap()
    }

    #[test]
    fn exact_match() {
        let s = sel(&[("env", &["prod"])]);
        assert!(m(&s, &labels(&[("env", "prod"), ("team", "a")])));
        assert!(!m(&s, &labels(&[("env", "production")])));
        assert!(!m(&s, &labels(&[("team", "prod")])));
        assert!(!m(&s, &labels(&[])));
    }

    #[test]
    fn all_keys_must_match() {
        let s = sel(&[("env", &["prod"]), ("team", &["a"])]);
        assert!(m(&s, &labels(&[("env", "prod"), ("team", "a")])));
        assert!(!m(&s, &labels(&[("env", "prod"), ("team", "b")])));
        assert!(!m(&s, &labels(&[("env", "prod")])));
    }

    #[test]
    fn list_values_are_alternatives() {
        let s = sel(&[("env", &["dev", "staging"])]);
        assert!(m(&s, &labels(&[("env", "dev")])));
        assert!(m(&s, &labels(&[("env", "staging")])));
        assert!(!m(&s, &labels(&[("env", "prod")])));
    }

    #[test]
    fn wildcard_value_needs_the_key() {
        let s = sel(&[("env", &["*"])]);
        assert!(m(&s, &labels(&[("env", "anything")])));
        assert!(!m(&s, &labels(&[("team", "a")])));
    }

    #[test]
    fn wildcard_key_matches_everything() {
        let s = sel(&[("*", &["*"])]);
        assert!(m(&s, &labels(&[])));
        assert!(m(&s, &labels(&[("env", "prod")])));
        let bad = sel(&[("*", &["prod"])]);
        assert!(match_labels(&bad, &labels(&[]), &Traits::new()).is_err());
        assert!(validate_selector(&bad, "spec.allow.node_labels").is_err());
    }

    #[test]
    fn empty_selector_matches_nothing() {
        assert!(!m(&Labels::new(), &labels(&[])));
        assert!(!m(&Labels::new(), &labels(&[("env", "prod")])));
    }

    #[test]
    fn regex_values() {
        let s = sel(&[("env", &["^prod-[0-9]+$"])]);
        assert!(m(&s, &labels(&[("env", "prod-12")])));
        assert!(!m(&s, &labels(&[("env", "prod-x")])));
        assert!(!m(&s, &labels(&[("env", "xprod-1")])));
        let bad = sel(&[("env", &["^($"])]);
        let err = validate_selector(&bad, "spec.allow.node_labels").unwrap_err();
        assert_eq!(
            err,
            "invalid regex \"^($\": unclosed group (spec.allow.node_labels.env)"
        );
        let half = sel(&[("env", &["^prod"])]);
        assert_eq!(
            validate_selector(&half, "spec.deny.node_labels").unwrap_err(),
            "invalid regex \"^prod\": a regular expression must start with \"^\" and end with \"$\" (spec.deny.node_labels.env)"
        );
        assert!(match_labels(&bad, &labels(&[("env", "x")]), &Traits::new()).is_err());
    }

    #[test]
    fn glob_values() {
        let s = sel(&[("host", &["web-*"])]);
        assert!(m(&s, &labels(&[("host", "web-1")])));
        assert!(!m(&s, &labels(&[("host", "db-1")])));
        // Regex metacharacters in globs are literal.
        let s = sel(&[("host", &["a.b*"])]);
        assert!(m(&s, &labels(&[("host", "a.bc")])));
        assert!(!m(&s, &labels(&[("host", "axbc")])));
    }

    #[test]
    fn template_values_expand_from_traits() {
        let s = sel(&[("env", &["{{external.env_from_okta}}"])]);
        let mut traits = Traits::new();
        traits.insert("env_from_okta".into(), vec!["staging".into(), "dev".into()]);
        assert!(match_labels(&s, &labels(&[("env", "dev")]), &traits).unwrap());
        assert!(!match_labels(&s, &labels(&[("env", "prod")]), &traits).unwrap());
        // No trait: the value expands to nothing and so matches nothing.
        assert!(!match_labels(&s, &labels(&[("env", "dev")]), &Traits::new()).unwrap());
    }

    #[test]
    fn label_values_serde() {
        let s: Labels = serde_json::from_str(r#"{"env":"prod","team":["a","b"],"n":1}"#).unwrap();
        assert_eq!(s["env"], LabelValues::one("prod"));
        assert_eq!(s["team"], LabelValues::from(vec!["a", "b"]));
        assert_eq!(s["n"], LabelValues::one("1"));
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"env":"prod","n":"1","team":["a","b"]}"#
        );
        assert_eq!(format_selector(&s), "env=prod,n=1,team=[a,b]");
    }

    #[test]
    fn parse_and_format_label_args() {
        let l = parse_labels_arg("env=prod, team=a=b").unwrap();
        assert_eq!(l, labels(&[("env", "prod"), ("team", "a=b")]));
        assert_eq!(format_labels(&l), "env=prod,team=a=b");
        assert!(parse_labels_arg("").unwrap().is_empty());
        let err = parse_labels_arg("env").unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid labels \"env\": \"env\" is not of the form key=value"
        );
        assert!(parse_labels_arg("=x").is_err());
    }
}
