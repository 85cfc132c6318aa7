//! `tsh clusters`: the root cluster and the leaf clusters the proxy reports.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::Context;
use crate::cli::Format;
use crate::commands::status::pretty;
use crate::error::TshError;
use crate::http::SiteInfo;

/// One row of `tsh clusters`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterRow {
    pub cluster_name: String,
    pub status: String,
    pub cluster_type: String,
    pub labels: BTreeMap<String, String>,
    pub selected: bool,
}

/// The root first, then the leaves by name; `selected` marks the active cluster.
pub fn cluster_rows(root: &str, selected: &str, sites: Option<Vec<SiteInfo>>) -> Vec<ClusterRow> {
    let mut rows = vec![ClusterRow {
        cluster_name: root.to_string(),
        status: "online".into(),
        cluster_type: "root".into(),
        labels: BTreeMap::new(),
        selected: selected == root || selected.is_empty(),
    }];
    let mut leaves: Vec<SiteInfo> = sites
        .unwrap_or_default()
        .into_iter()
        .filter(|s| s.name != root)
        .collect();
    leaves.sort_by(|a, b| a.name.cmp(&b.name));
    for s in leaves {
        rows.push(ClusterRow {
            selected: s.name == selected,
            status: if s.status.is_empty() {
                "online".into()
            } else {
                s.status
            },
            cluster_type: "leaf".into(),
            labels: s.labels,
            cluster_name: s.name,
        });
    }
    rows
}

/// The text table.
pub fn clusters_table(rows: &[ClusterRow]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.cluster_name.clone(),
                r.status.clone(),
                r.cluster_type.clone(),
                portcullis_types::format_labels(&r.labels),
                if r.selected {
                    "*".into()
                } else {
                    String::new()
                },
            ]
        })
        .collect();
    crate::table::render(
        &[
            "Cluster Name",
            "Status",
            "Cluster Type",
            "Labels",
            "Selected",
        ],
        &cells,
    )
}

/// `tsh clusters`.
pub async fn clusters(ctx: &Context, format: Format) -> Result<(), TshError> {
    let (profile, creds) = ctx.logged_in()?;
    crate::ensure_unexpired(&creds)?;
    let web = ctx.web_as_user(&profile, &creds)?;
    let sites = web.sites().await?;
    let selected = ctx.cluster(&profile);
    let rows = cluster_rows(&profile.cluster, &selected, sites);
    match format {
        Format::Text => print!("{}", clusters_table(&rows)),
        Format::Json => println!(
            "{}",
            pretty(&serde_json::to_value(&rows).unwrap_or_default())
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_alone_and_with_leaves() {
        let rows = cluster_rows("root.example.com", "", None);
        assert_eq!(
            clusters_table(&rows),
            "Cluster Name     Status Cluster Type Labels Selected\n\
             ---------------- ------ ------------ ------ --------\n\
             root.example.com online root                *\n"
        );
        let leaf = SiteInfo {
            name: "leaf.example.com".into(),
            status: "offline".into(),
            labels: BTreeMap::from([("env".into(), "demo".into())]),
            ..Default::default()
        };
        let root_dup = SiteInfo {
            name: "root.example.com".into(),
            ..Default::default()
        };
        let rows = cluster_rows(
            "root.example.com",
            "leaf.example.com",
            Some(vec![leaf, root_dup]),
        );
        assert_eq!(rows.len(), 2);
        assert!(!rows[0].selected && rows[1].selected);
        let table = clusters_table(&rows);
        assert!(
            table.contains("leaf.example.com offline leaf         env=demo *"),
            "{table}"
        );
        let json = serde_json::to_value(&rows).unwrap();
        assert_eq!(json[1]["cluster_type"], "leaf");
    }
}
