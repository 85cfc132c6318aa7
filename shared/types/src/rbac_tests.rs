//! Tests for `AccessChecker`: deny beats allow, templates, visibility and session options.

use super::*;
use crate::labels::LabelValues;
use crate::role::{RoleOptions, RoleSpec};

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn sel(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), LabelValues::one(*v)))
        .collect()
}

fn role(name: &str, logins: &[&str], node_labels: &[(&str, &str)]) -> Role {
    let mut r = Role::new(name, RoleSpec::default());
    r.spec.allow.logins = logins.iter().map(|s| s.to_string()).collect();
    r.spec.allow.node_labels = sel(node_labels);
    r
}

fn traits(logins: &[&str]) -> Traits {
    let mut t = Traits::new();
    t.insert(
        "logins".into(),
        logins.iter().map(|s| s.to_string()).collect(),
    );
    t
}

#[test]
fn allows_login_on_matching_node() {
    let checker = AccessChecker::new(
        vec![role("visitor", &["visitor"], &[("*", "*")])],
        Traits::new(),
    );
    assert_eq!(checker.role_names(), ["visitor"]);
    assert_eq!(
        checker.check_login_and_node("visitor", "n1", &labels(&[])),
        Ok(())
    );
    assert_eq!(
        checker.check_login_and_node("root", "n1", &labels(&[])),
        Err(AccessDenied::new(
            "login \"root\" is not allowed by roles [visitor]"
        ))
    );
}

#[test]
fn node_labels_must_match() {
    let checker = AccessChecker::new(
        vec![role("access", &["root"], &[("env", "dev")])],
        Traits::new(),
    );
    assert!(
        checker
            .check_login_and_node("root", "n1", &labels(&[("env", "dev")]))
            .is_ok()
    );
    assert_eq!(
        checker
            .check_login_and_node("root", "n1", &labels(&[("env", "prod")]))
            .unwrap_err()
            .to_string(),
        "roles [access] do not allow access to node \"n1\" (labels env=prod)"
    );
    assert_eq!(
        checker
            .check_login_and_node("root", "n2", &labels(&[]))
            .unwrap_err()
            .to_string(),
        "roles [access] do not allow access to node \"n2\" (no labels)"
    );
}

#[test]
fn empty_allow_node_labels_match_nothing() {
    let checker = AccessChecker::new(vec![role("r", &["root"], &[])], Traits::new());
    assert!(
        checker
            .check_login_and_node("root", "n1", &labels(&[]))
            .is_err()
    );
    assert!(!checker.can_see_node(&labels(&[("env", "dev")])));
}

#[test]
fn login_and_node_must_come_from_the_same_role() {
    let checker = AccessChecker::new(
        vec![
            role("a", &["root"], &[("env", "dev")]),
            role("b", &["alice"], &[("env", "prod")]),
        ],
        Traits::new(),
    );
    assert!(
        checker
            .check_login_and_node("alice", "p", &labels(&[("env", "prod")]))
            .is_ok()
    );
    assert_eq!(
        checker
            .check_login_and_node("root", "p", &labels(&[("env", "prod")]))
            .unwrap_err()
            .to_string(),
        "roles [a, b] do not allow login \"root\" on node \"p\" (labels env=prod)"
    );
}

#[test]
fn deny_login_beats_allow() {
    let mut denier = Role::new("no-root", RoleSpec::default());
    denier.spec.deny.logins = vec!["root".into()];
    let checker = AccessChecker::new(
        vec![role("access", &["root", "ubuntu"], &[("*", "*")]), denier],
        Traits::new(),
    );
    assert_eq!(
        checker
            .check_login_and_node("root", "n1", &labels(&[]))
            .unwrap_err()
            .to_string(),
        "login \"root\" is denied by role \"no-root\""
    );
    assert!(
        checker
            .check_login_and_node("ubuntu", "n1", &labels(&[]))
            .is_ok()
    );
    assert_eq!(checker.logins(), ["ubuntu"]);
}

#[test]
fn deny_node_labels_beat_allow() {
    // Seed example: "mainuser" may reach every node except production ones.
    let mut mainuser = role("mainuser", &["root"], &[("*", "*")]);
    mainuser.spec.deny.node_labels = sel(&[("environment", "production")]);
    let checker = AccessChecker::new(vec![mainuser], Traits::new());
    let prod = labels(&[("environment", "production")]);
    assert_eq!(
        checker
            .check_login_and_node("root", "db1", &prod)
            .unwrap_err()
            .to_string(),
        "node \"db1\" is denied by role \"mainuser\" (deny.node_labels environment=production)"
    );
    assert!(
        checker
            .check_login_and_node("root", "web1", &labels(&[("environment", "staging")]))
            .is_ok()
    );
    assert!(!checker.can_see_node(&prod));
    assert!(checker.can_see_node(&labels(&[])));
}

#[test]
fn deny_in_another_role_applies_to_all() {
    let mut deny_prod = Role::new("deny-prod", RoleSpec::default());
    deny_prod.spec.deny.node_labels = sel(&[("env", "prod")]);
    let checker = AccessChecker::new(
        vec![role("access", &["root"], &[("*", "*")]), deny_prod],
        Traits::new(),
    );
    assert!(
        checker
            .check_login_and_node("root", "x", &labels(&[("env", "prod")]))
            .is_err()
    );
    assert!(
        checker
            .check_login_and_node("root", "x", &labels(&[("env", "dev")]))
            .is_ok()
    );
}

#[test]
fn templates_expand_from_traits() {
    let access = role(
        "access",
        &["{{internal.logins}}", "dev-{{internal.logins}}"],
        &[("*", "*")],
    );
    let checker = AccessChecker::new(vec![access.clone()], traits(&["visitor", "ubuntu", "root"]));
    assert_eq!(
        checker.logins(),
        [
            "dev-root",
            "dev-ubuntu",
            "dev-visitor",
            "root",
            "ubuntu",
            "visitor"
        ]
    );
    assert!(
        checker
            .check_login_and_node("visitor", "n", &labels(&[]))
            .is_ok()
    );
    // Without the trait the template grants nothing.
    let bare = AccessChecker::new(vec![access], Traits::new());
    assert!(bare.logins().is_empty());
    assert!(
        bare.check_login_and_node("visitor", "n", &labels(&[]))
            .is_err()
    );
}

#[test]
fn deny_templates_expand_too() {
    let mut r = role("r", &["root", "alice"], &[("*", "*")]);
    r.spec.deny.logins = vec!["{{internal.blocked}}".into()];
    let mut t = Traits::new();
    t.insert("blocked".into(), vec!["root".into()]);
    let checker = AccessChecker::new(vec![r], t);
    assert_eq!(checker.logins(), ["alice"]);
    assert!(
        checker
            .check_login_and_node("root", "n", &labels(&[]))
            .is_err()
    );
}

#[test]
fn label_templates_expand() {
    let mut r = role("r", &["root"], &[]);
    r.spec.allow.node_labels = sel(&[("env", "{{external.env_from_okta}}")]);
    let mut t = Traits::new();
    t.insert("env_from_okta".into(), vec!["staging".into()]);
    let checker = AccessChecker::new(vec![r], t);
    assert!(checker.can_see_node(&labels(&[("env", "staging")])));
    assert!(!checker.can_see_node(&labels(&[("env", "prod")])));
}

#[test]
fn invalid_deny_regex_fails_closed() {
    let mut r = role("r", &["root"], &[("*", "*")]);
    r.spec.deny.node_labels = sel(&[("env", "^($")]);
    let checker = AccessChecker::new(vec![r], Traits::new());
    assert!(
        checker
            .check_login_and_node("root", "n", &labels(&[("env", "x")]))
            .is_err()
    );
}

#[test]
fn no_roles_denies() {
    let checker = AccessChecker::new(vec![], Traits::new());
    assert!(checker.logins().is_empty());
    assert_eq!(
        checker
            .check_login_and_node("root", "n", &labels(&[]))
            .unwrap_err()
            .to_string(),
        "login \"root\" is not allowed: the user has no roles"
    );
}

#[test]
fn cluster_visibility() {
    let mut demo = Role::new("demo-cluster-access", RoleSpec::default());
    demo.spec.allow.cluster_labels = sel(&[("env", "demo")]);
    let plain = AccessChecker::new(
        vec![role("access", &["root"], &[("*", "*")])],
        Traits::new(),
    );
    let with_demo = AccessChecker::new(
        vec![role("access", &["root"], &[("*", "*")]), demo],
        Traits::new(),
    );
    // Unlabelled leaf: everyone sees it.
    assert!(plain.can_see_cluster(&labels(&[])));
    assert!(with_demo.can_see_cluster(&labels(&[])));
    // Labelled leaf: only with matching cluster_labels.
    let demo_labels = labels(&[("env", "demo")]);
    assert!(!plain.can_see_cluster(&demo_labels));
    assert!(with_demo.can_see_cluster(&demo_labels));
    assert!(!with_demo.can_see_cluster(&labels(&[("env", "prod")])));
    assert_eq!(
        plain
            .check_cluster_access("leaf", &demo_labels)
            .unwrap_err()
            .to_string(),
        "roles [access] do not allow access to cluster \"leaf\" (labels env=demo)"
    );
}

#[test]
fn cluster_deny_beats_allow() {
    let mut r = Role::new("r", RoleSpec::default());
    r.spec.allow.cluster_labels = sel(&[("*", "*")]);
    r.spec.deny.cluster_labels = sel(&[("env", "prod")]);
    let checker = AccessChecker::new(vec![r.clone()], Traits::new());
    assert!(checker.can_see_cluster(&labels(&[("env", "dev")])));
    assert!(!checker.can_see_cluster(&labels(&[("env", "prod")])));
    assert!(checker.can_see_cluster(&labels(&[])));
    r.spec.deny.cluster_labels = sel(&[("*", "*")]);
    let checker = AccessChecker::new(vec![r], Traits::new());
    assert!(!checker.can_see_cluster(&labels(&[])));
    assert_eq!(
        checker
            .check_cluster_access("leaf", &labels(&[]))
            .unwrap_err()
            .to_string(),
        "cluster \"leaf\" is denied by role \"r\" (deny.cluster_labels *=*)"
    );
}

#[test]
fn session_options() {
    let mut a = role("a", &[], &[]);
    a.spec.options = RoleOptions {
        max_session_ttl: Some(Duration::from_secs(12 * 3600)),
        forward_agent: Some(true),
        ..Default::default()
    };
    let mut b = role("b", &[], &[]);
    b.spec.options = RoleOptions {
        max_session_ttl: Some(Duration::from_secs(3600)),
        port_forwarding: Some(false),
        ..Default::default()
    };
    let c = role("c", &[], &[]);
    let checker = AccessChecker::new(vec![a.clone(), b, c.clone()], Traits::new());
    assert_eq!(checker.max_session_ttl(), Some(Duration::from_secs(3600)));
    assert_eq!(
        checker.adjust_session_ttl(Duration::from_secs(12 * 3600)),
        Duration::from_secs(3600)
    );
    assert!(!checker.port_forwarding());
    assert!(checker.forward_agent());

    let defaults = AccessChecker::new(vec![c], Traits::new());
    assert_eq!(defaults.max_session_ttl(), None);
    assert_eq!(
        defaults.adjust_session_ttl(Duration::from_secs(60)),
        Duration::from_secs(60)
    );
    assert!(defaults.port_forwarding());
    assert!(!defaults.forward_agent());
}

#[test]
fn other_principal_lists() {
    let mut r = role("root", &["root"], &[]);
    r.spec.allow.kubernetes_groups = vec!["system:masters".into()];
    r.spec.allow.db_names = vec!["dev".into(), "metrics".into()];
    r.spec.allow.db_users = vec!["{{internal.db_users}}".into()];
    let mut t = Traits::new();
    t.insert("db_users".into(), vec!["postgres".into()]);
    let checker = AccessChecker::new(vec![r], t);
    assert_eq!(checker.kubernetes_groups(), ["system:masters"]);
    assert_eq!(checker.db_names(), ["dev", "metrics"]);
    assert_eq!(checker.db_users(), ["postgres"]);
    assert!(checker.aws_role_arns().is_empty());
}

fn rules_role(name: &str, allow: Vec<crate::rule::Rule>, deny: Vec<crate::rule::Rule>) -> Role {
    let mut r = Role::new(name, RoleSpec::default());
    r.spec.allow.rules = allow;
    r.spec.deny.rules = deny;
    r
}

#[test]
fn permissions_come_from_rules_and_deny_wins() {
    use crate::rule::{ANY, Permission, Rule, verb};
    let create_token = Permission::new("token", verb::CREATE);
    let list_rc = Permission::new("remote_cluster", verb::LIST);
    let viewer = rules_role(
        "rc-viewer",
        vec![Rule::new(&["remote_cluster"], &["list", "read"])],
        vec![],
    );
    let checker = AccessChecker::new(vec![viewer.clone()], Traits::new());
    checker.check_permission(list_rc).unwrap();
    assert_eq!(
        checker.check_permission(create_token).unwrap_err().message,
        "may not create token: no role allows it"
    );

    let editor = crate::role::preset_roles().remove(1);
    let no_tokens = rules_role("no-tokens", vec![], vec![Rule::new(&["token"], &["*"])]);
    let both = AccessChecker::new(vec![editor.clone(), no_tokens], Traits::new());
    both.check_permission(list_rc).unwrap();
    assert_eq!(
        both.check_permission(create_token).unwrap_err().message,
        "may not create token: denied by role \"no-tokens\""
    );
    assert_eq!(
        both.check_permission(Permission::new(ANY, verb::CREATE))
            .unwrap_err()
            .message,
        "may not create every resource: denied by role \"no-tokens\""
    );

    // The role's name grants nothing: an editor whose rules were emptied is refused.
    let mut emptied = editor;
    emptied.spec.allow.rules.clear();
    let e = AccessChecker::new(vec![emptied], Traits::new())
        .check_permission(create_token)
        .unwrap_err();
    assert_eq!(e.message, "may not create token: no role allows it");
    assert!(
        AccessChecker::new(vec![], Traits::new())
            .check_permission(list_rc)
            .is_err()
    );
}
