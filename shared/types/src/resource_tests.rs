//! Tests for decoding resources from YAML, using examples in the forms Teleport's guides print.

use super::*;
use crate::labels::LabelValues;
use crate::role_map::RoleMapping;
use crate::token::SystemRole;
use time::macros::datetime;

fn one(text: &str) -> Resource {
    let mut all = parse_yaml_documents(text).unwrap();
    assert_eq!(all.len(), 1, "expected one resource");
    all.remove(0)
}

fn err(text: &str) -> String {
    parse_yaml_documents(text).unwrap_err().to_string()
}

#[test]
fn visitor_role() {
    let r = one("kind: role
version: v5
metadata:
  name: visitor
spec:
  allow:
    logins:
      - visitor
    node_labels:
      '*': '*'
");
    assert_eq!(r.kind(), Kind::Role);
    assert_eq!(r.name(), "visitor");
    let Resource::Role(role) = r else {
        panic!("not a role")
    };
    assert_eq!(role.version, "v5");
    assert_eq!(role.spec.allow.logins, ["visitor"]);
    assert_eq!(role.spec.allow.node_labels["*"], LabelValues::one("*"));
    assert!(role.spec.deny.logins.is_empty());
}

#[test]
fn role_with_deny_node_labels_in_a_list_document() {
    // Seed 002 writes this role as a one-element YAML list.
    let r = one("- kind: role
  version: v3
  metadata:
    name: mainuser
  spec:
    allow:
      node_labels:
        '*': '*'
    deny:
      node_labels:
        \"environment\": \"production\"
");
    let Resource::Role(role) = r else {
        panic!("not a role")
    };
    assert_eq!(
        role.spec.deny.node_labels["environment"],
        LabelValues::one("production")
    );
    assert_eq!(role.spec.allow.node_labels["*"], LabelValues::one("*"));
}

#[test]
fn cluster_labels_role_and_version_last() {
    let r = one("kind: role
metadata:
  name: demo-cluster-access
spec:
  allow:
    cluster_labels:
      'env': 'demo'
version: v5
");
    let Resource::Role(role) = r else {
        panic!("not a role")
    };
    assert_eq!(
        role.spec.allow.cluster_labels["env"],
        LabelValues::one("demo")
    );
}

#[test]
fn role_templates_and_options() {
    let r = one("kind: role
version: v7
metadata:
  name: admin
spec:
  options:
    max_session_ttl: 8h
    forward_agent: true
    cert_format: standard
  allow:
    logins: ['{{internal.logins}}', '{{external.logins_from_okta}}']
    kubernetes_groups: ['{{internal.kubernetes_groups}}']
    db_names: ['{{internal.db_names}}']
    aws_role_arns: ['{{internal.aws_role_arns}}']
    node_labels:
      env: '{{external.env_from_okta}}'
      team: [a, '^b-.*$']
    app_labels: {'*': '*'}
    rules:
      - resources: [session]
        verbs: [list, read]
");
    let Resource::Role(role) = r else {
        panic!("not a role")
    };
    assert_eq!(
        role.spec.options.max_session_ttl,
        Some(std::time::Duration::from_secs(8 * 3600))
    );
    assert_eq!(role.spec.allow.logins.len(), 2);
    assert_eq!(
        role.spec.allow.node_labels["team"],
        LabelValues::from(vec!["a", "^b-.*$"])
    );
    assert_eq!(role.spec.allow.rules.len(), 1);
    assert!(role.spec.allow.other.contains_key("app_labels"));
}

#[test]
fn trusted_cluster_v2_with_role_map() {
    let r = one("kind: trusted_cluster
version: v2
metadata:
  name: rootcluster.example.com
spec:
  enabled: true
  token: abcd123-insecure-do-not-use-this
  tunnel_addr: rootcluster.example.com:443
  web_proxy_addr: rootcluster.example.com:443
  role_map:
    - remote: \"access\"
      local: [\"visitor\"]
");
    let Resource::TrustedCluster(tc) = r else {
        panic!("not a trusted cluster")
    };
    assert!(tc.spec.enabled);
    assert_eq!(tc.spec.token, "abcd123-insecure-do-not-use-this");
    assert_eq!(tc.tunnel_addr(), "rootcluster.example.com:443");
    assert_eq!(tc.web_proxy_addr(), "rootcluster.example.com:443");
    assert_eq!(
        tc.spec.role_map,
        [RoleMapping::new("access", vec!["visitor".into()])]
    );
}

#[test]
fn trusted_cluster_v1_seed_forms() {
    let r = one("kind: trusted_cluster
version: v1
metadata:
  name: \"main\"
spec:
  enabled: true
  role_map:
    - remote: \"admin\"
      local: [mainuser]
  token: \"join-token\"
  tunnel_addr: main.example.com:3024
  web_proxy_addr: main.example.com:3080
");
    let Resource::TrustedCluster(tc) = r else {
        panic!("not a trusted cluster")
    };
    assert_eq!(tc.version, "v1");
    assert_eq!(
        tc.combined_role_map(),
        [RoleMapping::new("admin", vec!["mainuser".into()])]
    );

    // Legacy `roles:` and derived addresses.
    let r = one("kind: trusted_cluster
version: v1
metadata:
  name: main
spec:
  token: join-token
  roles: [admin]
");
    let Resource::TrustedCluster(tc) = r else {
        panic!("not a trusted cluster")
    };
    assert!(tc.spec.enabled, "enabled defaults to true");
    assert_eq!(tc.spec.roles, ["admin"]);
    assert_eq!(
        tc.combined_role_map(),
        [RoleMapping::new("*", vec!["admin".into()])]
    );
    assert_eq!(tc.tunnel_addr(), "main:3024");
    assert_eq!(tc.web_proxy_addr(), "main:3080");
}

#[test]
fn trusted_cluster_with_bad_role_map_is_rejected() {
    let e = err("kind: trusted_cluster
version: v2
metadata: {name: root}
spec:
  token: t
  role_map:
    - remote: '*'
      local: ['*']
");
    assert_eq!(
        e,
        "trusted_cluster \"root\": invalid role_map: rule 1 (remote \"*\"): local \"*\" contains a wildcard: local roles must be concrete role names"
    );
}

#[test]
fn user_with_traits() {
    let r = one("kind: user
version: v2
metadata:
  name: myuser
  id: 1651261581522597792
spec:
  roles: [access, auditor, editor]
  traits:
    logins:
    - visitor
    - ubuntu
    - root
  created_by:
    time: \"2022-04-29T19:45:35Z\"
    user: {name: admin}
status:
  password_state: 1
");
    let Resource::User(user) = r else {
        panic!("not a user")
    };
    assert_eq!(user.spec.roles, ["access", "auditor", "editor"]);
    assert_eq!(user.logins(), ["visitor", "ubuntu", "root"]);
    assert!(user.spec.extra.contains_key("created_by"));
}

#[test]
fn token_resource() {
    let r = one("kind: token
version: v2
metadata:
  name: abcd123-insecure-do-not-use-this
  expires: 2022-04-28T19:19:00Z
spec:
  roles: [Trusted_cluster]
  join_method: token
");
    let Resource::Token(token) = r else {
        panic!("not a token")
    };
    assert_eq!(token.token(), "abcd123-insecure-do-not-use-this");
    assert_eq!(
        token.metadata.expires,
        Some(datetime!(2022-04-28 19:19:00 UTC))
    );
    assert_eq!(token.spec.roles, [SystemRole::TrustedCluster]);
    assert_eq!(token.spec.join_method.as_deref(), Some("token"));

    let e = err("kind: token\nversion: v2\nmetadata: {name: t}\nspec: {roles: []}\n");
    assert_eq!(
        e,
        "token \"t\": spec.roles must list at least one of node, proxy, trusted_cluster, agent"
    );
    let e = err("kind: token\nversion: v2\nmetadata: {name: t}\nspec: {roles: [auth]}\n");
    assert!(
        e.starts_with("invalid token \"t\": spec: unknown system role \"auth\""),
        "{e}"
    );
}

#[test]
fn remote_cluster_from_tctl_get_rc() {
    let r = one("kind: remote_cluster
metadata:
  id: 1651262381521336026
  labels:
    env: demo
  name: leafcluster.example.com
status:
  connection: online
  last_heartbeat: \"2022-04-29T19:55:35.053054594Z\"
version: v3
");
    let Resource::RemoteCluster(rc) = r else {
        panic!("not a remote cluster")
    };
    assert!(rc.is_online());
    assert_eq!(rc.metadata.labels["env"], "demo");
    assert_eq!(
        rc.status.last_heartbeat,
        Some(datetime!(2022-04-29 19:55:35.053054594 UTC))
    );
}

#[test]
fn node_and_cert_authority() {
    let all = parse_yaml_documents(
        "---
kind: node
version: v2
metadata:
  name: 5b7ad2a8-0000-4000-8000-000000000001
  labels: {env: dev, version: 1}
spec:
  hostname: ip-172-3-2-205
  addr: 127.0.0.1:3022
---
---
kind: cas
version: v2
metadata: {name: leaf}
spec:
  cluster_name: leaf
  type: host
  checking_keys: ['ssh-ed25519 AAAA']
",
    )
    .unwrap();
    assert_eq!(all.len(), 2);
    let Resource::Node(node) = &all[0] else {
        panic!("not a node")
    };
    assert_eq!(node.spec.hostname, "ip-172-3-2-205");
    assert!(!node.spec.use_tunnel);
    assert_eq!(node.metadata.labels["version"], "1");
    let Resource::CertAuthority(ca) = &all[1] else {
        panic!("not a CA")
    };
    assert_eq!(ca.kind, "cert_authority", "alias is normalised");
    assert_eq!(ca.spec.r#type, "host");
    assert!(ca.spec.active);
}

#[test]
fn malformed_yaml_reports_line_and_column() {
    let e = parse_yaml_documents("kind: role\nversion: v5\nmetadata:\n  name: [unclosed\n")
        .unwrap_err();
    let TypesError::Yaml {
        line,
        column,
        message,
    } = &e
    else {
        panic!("{e:?}")
    };
    assert_eq!((*line, *column), (5, 1));
    assert_eq!(
        message,
        "did not find expected ',' or ']', while parsing a flow sequence at line 4 column 9"
    );
    assert_eq!(
        e.to_string(),
        "malformed YAML at line 5, column 1: did not find expected ',' or ']', while parsing a flow sequence at line 4 column 9"
    );

    let e = parse_yaml_documents("kind: role\nmetadata:\n  name: x\n bad: indent\n").unwrap_err();
    let TypesError::Yaml { line, column, .. } = e else {
        panic!("{e:?}")
    };
    assert_eq!((line, column), (4, 2));

    // Duplicate keys would silently drop half a role; they are syntax errors here.
    let e = parse_yaml_documents(
        "kind: role\nversion: v7\nmetadata: {name: r}\nspec:\n  allow: {}\n  allow: {}\n",
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "malformed YAML at line 5, column 3: spec: duplicate entry with key \"allow\""
    );

    // Errors in a later document are located in the whole text.
    let e = parse_yaml_documents("kind: role\nversion: v7\nmetadata: {name: r}\n---\na: [\n")
        .unwrap_err();
    assert!(matches!(e, TypesError::Yaml { line: 6, .. }), "{e:?}");
}

#[test]
fn unknown_and_missing_kind() {
    assert_eq!(
        err("kind: widget\nversion: v1\nmetadata: {name: w}\n"),
        "unknown resource kind \"widget\" (expected one of: role, user, token, node, trusted_cluster (tc), remote_cluster (rc), cert_authority (cas))"
    );
    assert!(
        err("version: v1\nmetadata: {name: w}\n").starts_with("resource has no \"kind\" field")
    );
    assert_eq!(
        err("just a string"),
        "a resource must be a mapping with kind, version, metadata and spec, got the string \"just a string\""
    );
}

#[test]
fn version_checks() {
    assert_eq!(
        err("kind: role\nmetadata: {name: r}\n"),
        "role \"r\" has no \"version\" field (supported: v3, v4, v5, v6, v7)"
    );
    assert_eq!(
        err("kind: role\nversion: v2\nmetadata: {name: r}\n"),
        "role \"r\": version \"v2\" is not supported (supported: v3, v4, v5, v6, v7)"
    );
    assert_eq!(
        err("kind: trusted_cluster\nversion: v3\nmetadata: {name: r}\nspec: {token: t}\n"),
        "trusted_cluster \"r\": version \"v3\" is not supported (supported: v1, v2)"
    );
}

#[test]
fn unknown_fields_are_named() {
    let e = err("kind: role\nversion: v7\nmetadata: {name: r}\nspec:\n  alow: {logins: [x]}\n");
    assert!(
        e.starts_with("invalid role \"r\": spec: unknown field `alow`"),
        "{e}"
    );
    let e = err("kind: role\nversion: v7\nmetadata: {name: r}\nspec:\n  allow: {loginz: [x]}\n");
    assert!(
        e.starts_with("invalid role \"r\": spec.allow: unknown field `loginz`"),
        "{e}"
    );
    let e = err("kind: trusted_cluster\nversion: v2\nmetadata: {name: r}\nspec: {tokn: t}\n");
    assert!(
        e.starts_with("invalid trusted_cluster \"r\": spec: unknown field `tokn`"),
        "{e}"
    );
    let e = err("kind: user\nversion: v2\nmetadata: {name: u, lables: {a: b}}\n");
    assert!(
        e.starts_with("invalid user \"u\": metadata: unknown field `lables`"),
        "{e}"
    );
    let e = err("kind: user\nversion: v2\nmetadata: {name: u}\nspec: {role: [access]}\n");
    assert_eq!(
        e,
        "invalid user \"u\": spec: unknown field `role`, expected one of `roles`, `traits`"
    );
    let e = err("kind: node\nversion: v2\nmetadata: {name: n}\nspecs: {}\n");
    assert!(
        e.starts_with("invalid node \"n\": unknown field `specs`"),
        "{e}"
    );
    let e = err(
        "kind: role\nversion: v7\nmetadata: {name: r}\nspec:\n  options: {max_session_ttl: soon}\n",
    );
    assert!(
        e.starts_with("invalid role \"r\": spec.options: invalid duration \"soon\""),
        "{e}"
    );
}

#[test]
fn invalid_regex_in_role_file() {
    let e = err(
        "kind: role\nversion: v7\nmetadata: {name: x}\nspec:\n  allow:\n    node_labels: {env: '^($'}\n",
    );
    assert_eq!(
        e,
        "role \"x\": invalid regex \"^($\": unclosed group (spec.allow.node_labels.env)"
    );
}

#[test]
fn empty_documents_and_names() {
    assert!(parse_yaml_documents("").unwrap().is_empty());
    assert!(
        parse_yaml_documents("---\n---\n# only a comment\n")
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        err("kind: role\nversion: v7\nmetadata: {name: ''}\n"),
        "role \"\": metadata.name must not be empty"
    );
    assert!(err("kind: role\nversion: v7\n").contains("missing field `metadata`"));
}

#[test]
fn json_round_trip_preserves_resources() {
    let text = "kind: trusted_cluster
version: v2
metadata:
  name: root
  labels: {a: b}
  expires: 2030-01-02T03:04:05Z
spec:
  token: t
  role_map:
    - remote: '^admin-(.*)$'
      local: role-$1
";
    let r = one(text);
    let json = r.to_json_value().unwrap();
    assert_eq!(json["kind"], "trusted_cluster");
    assert_eq!(json["metadata"]["expires"], "2030-01-02T03:04:05Z");
    assert_eq!(json["spec"]["role_map"][0]["local"][0], "role-$1");
    assert!(json["spec"].get("tunnel_addr").is_none());
    let back = Resource::from_json_value(json).unwrap();
    assert_eq!(back, r);
    let yaml = r.to_yaml().unwrap();
    assert_eq!(parse_yaml_documents(&yaml).unwrap(), vec![r.clone()]);
    let via_serde: Resource = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
    assert_eq!(via_serde, r);
}

#[test]
fn kind_parsing_and_refs() {
    for (s, k) in [
        ("role", Kind::Role),
        ("roles", Kind::Role),
        ("users", Kind::User),
        ("tokens", Kind::Token),
        ("nodes", Kind::Node),
        ("tc", Kind::TrustedCluster),
        ("trusted_clusters", Kind::TrustedCluster),
        ("rc", Kind::RemoteCluster),
        ("remote_clusters", Kind::RemoteCluster),
        ("cas", Kind::CertAuthority),
        ("cert_authorities", Kind::CertAuthority),
        ("TC", Kind::TrustedCluster),
    ] {
        assert_eq!(Kind::parse(s).unwrap(), k, "{s}");
    }
    assert_eq!(Kind::TrustedCluster.as_str(), "trusted_cluster");
    assert_eq!(Kind::Role.default_version(), "v7");
    assert!(matches!(Kind::parse("bogus"), Err(TypesError::UnknownKind(s)) if s == "bogus"));
    assert_eq!(
        parse_resource_ref("rc/leaf").unwrap(),
        (Kind::RemoteCluster, Some("leaf".into()))
    );
    assert_eq!(parse_resource_ref("roles").unwrap(), (Kind::Role, None));
    assert!(parse_resource_ref("rc/").is_err());
    assert!(parse_resource_ref("").is_err());
}
