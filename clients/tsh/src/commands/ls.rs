//! `tsh ls`: the nodes of a cluster the user may see, filtered by labels.

use std::collections::BTreeMap;

use crate::Context;
use crate::cli::{Format, LsArgs};
use crate::commands::status::pretty;
use crate::error::TshError;
use crate::http::NodeInfo;

/// What the Address column shows for a node reached through a reverse tunnel.
pub const TUNNEL_ADDR: &str = "⟵ Tunnel";

/// Parses `k=v` arguments (each may also be `k=v,k2=v2`).
pub fn parse_label_filter(args: &[String]) -> Result<BTreeMap<String, String>, TshError> {
    let mut out = BTreeMap::new();
    for a in args {
        let parsed =
            portcullis_types::parse_labels_arg(a).map_err(|e| TshError::Usage(e.to_string()))?;
        out.extend(parsed);
    }
    Ok(out)
}

/// Nodes carrying every label of `filter`, sorted by name.
pub fn filter_nodes(mut nodes: Vec<NodeInfo>, filter: &BTreeMap<String, String>) -> Vec<NodeInfo> {
    nodes.retain(|n| filter.iter().all(|(k, v)| n.labels.get(k) == Some(v)));
    nodes.sort_by(|a, b| node_name(a).cmp(node_name(b)).then_with(|| a.id.cmp(&b.id)));
    nodes
}

fn node_name(n: &NodeInfo) -> &str {
    if n.hostname.is_empty() {
        &n.id
    } else {
        &n.hostname
    }
}

/// The text table (`Node Name  Address  Labels`).
pub fn nodes_table(nodes: &[NodeInfo]) -> String {
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            let addr = if n.tunnel {
                TUNNEL_ADDR.to_string()
            } else {
                n.addr.clone()
            };
            vec![
                node_name(n).to_string(),
                addr,
                portcullis_types::format_labels(&n.labels),
            ]
        })
        .collect();
    crate::table::render(&["Node Name", "Address", "Labels"], &rows)
}

/// The JSON form: node resources as Teleport prints them.
pub fn nodes_json(nodes: &[NodeInfo]) -> serde_json::Value {
    let items: Vec<serde_json::Value> = nodes
        .iter()
        .map(|n| {
            serde_json::json!({
                "kind": "node",
                "version": "v2",
                "metadata": { "name": n.id, "labels": n.labels },
                "spec": { "hostname": n.hostname, "addr": n.addr },
            })
        })
        .collect();
    serde_json::Value::Array(items)
}

/// `tsh ls`.
pub async fn ls(ctx: &Context, args: &LsArgs) -> Result<(), TshError> {
    let filter = parse_label_filter(&args.labels)?;
    let (profile, creds) = ctx.logged_in()?;
    crate::ensure_unexpired(&creds)?;
    let web = ctx.web_as_user(&profile, &creds)?;
    let nodes = filter_nodes(web.nodes(&ctx.cluster(&profile)).await?, &filter);
    match args.format {
        Format::Text => print!("{}", nodes_table(&nodes)),
        Format::Json => println!("{}", pretty(&nodes_json(&nodes))),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, host: &str, addr: &str, tunnel: bool, labels: &[(&str, &str)]) -> NodeInfo {
        NodeInfo {
            id: id.into(),
            hostname: host.into(),
            addr: addr.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            tunnel,
        }
    }

    fn sample() -> Vec<NodeInfo> {
        vec![
            node(
                "b2",
                "ip-172-3-2-205",
                "",
                true,
                &[("hostname", "ip-172-3-2-205")],
            ),
            node(
                "a1",
                "ip-172-3-1-242",
                "127.0.0.1:3022",
                false,
                &[("hostname", "ip-172-3-1-242"), ("env", "prod")],
            ),
        ]
    }

    #[test]
    fn table_shows_tunnel_nodes_and_sorted_labels() {
        let table = nodes_table(&filter_nodes(sample(), &BTreeMap::new()));
        let expected = "\
Node Name      Address        Labels
-------------- -------------- --------------------------------
ip-172-3-1-242 127.0.0.1:3022 env=prod,hostname=ip-172-3-1-242
ip-172-3-2-205 ⟵ Tunnel       hostname=ip-172-3-2-205
";
        assert_eq!(table, expected);
    }

    #[test]
    fn labels_filter_and_json_shape() {
        let filter = parse_label_filter(&["env=prod".to_string()]).unwrap();
        let nodes = filter_nodes(sample(), &filter);
        assert_eq!(nodes.len(), 1);
        let v = nodes_json(&nodes);
        assert_eq!(v[0]["kind"], "node");
        assert_eq!(v[0]["metadata"]["name"], "a1");
        assert_eq!(v[0]["metadata"]["labels"]["env"], "prod");
        assert_eq!(v[0]["spec"]["hostname"], "ip-172-3-1-242");
        assert_eq!(v[0]["spec"]["addr"], "127.0.0.1:3022");
        assert!(parse_label_filter(&["nokey".to_string()]).is_err());
    }
}
