//! Generic resource commands: `tctl create`, `get`, `rm`, `edit`, `update`.

use std::io::{Read, Write};
use std::path::Path;

use portcullis_config::settings::parse_labels;
use portcullis_types::{Kind, Resource, parse_resource_ref, parse_yaml_documents};
use time::OffsetDateTime;
use tonic::Code;

use crate::cli::Format;
use crate::client::AuthApi;
use crate::error::TctlError;
use crate::output::{json_array, yaml_documents};
use crate::tables::{decode_all, resource_table};
use crate::write_out;

/// Reads `file`, or standard input for `-`.
pub fn read_input(file: &str) -> Result<String, TctlError> {
    if file == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| TctlError::io("cannot read standard input", e))?;
        return Ok(s);
    }
    std::fs::read_to_string(file).map_err(|e| TctlError::io(format!("cannot read {file}"), e))
}

/// Parses every document first, so a bad one stops the command before anything is stored.
pub fn parse_documents(text: &str, source: &str) -> Result<Vec<Resource>, TctlError> {
    let resources = parse_yaml_documents(text).map_err(|e| TctlError::usage(format!("{source}: {e}")))?;
    if resources.is_empty() {
        return Err(TctlError::usage(format!("{source} contains no resources")));
    }
    Ok(resources)
}

fn resource_json(r: &Resource) -> Result<String, TctlError> {
    serde_json::to_string(r).map_err(|e| TctlError::Protocol(format!("cannot encode {}: {e}", r.kind())))
}

/// `<kind> "<name>" has been created|updated`.
pub fn upserted_line(kind: Kind, name: &str, created: bool) -> String {
    format!("{kind} \"{name}\" has been {}\n", if created { "created" } else { "updated" })
}

/// Reads and checks the documents of `tctl create FILE` (before connecting).
pub fn load_documents(file: &str) -> Result<Vec<Resource>, TctlError> {
    let text = read_input(file)?;
    let source = if file == "-" { "standard input" } else { file };
    parse_documents(&text, source)
}

pub async fn create(api: &mut AuthApi, out: &mut dyn Write, resources: &[Resource], force: bool) -> Result<(), TctlError> {
    for r in resources {
        let (kind, name) = (r.kind(), r.name().to_string());
        let resp = match api.upsert(resource_json(r)?, !force).await {
            Ok(resp) => resp,
            Err(s) if s.code() == Code::AlreadyExists => {
                return Err(TctlError::usage(format!("{kind} \"{name}\" already exists; use -f to overwrite")));
            }
            Err(s) => return Err(api.err(&s)),
        };
        write_out(out, &upserted_line(kind, &name, resp.created))?;
    }
    Ok(())
}

/// Renders resources of `kind` as `tctl get` prints them.
pub fn render(kind: Kind, values: &[serde_json::Value], format: Format) -> Result<String, TctlError> {
    match format {
        Format::Yaml => yaml_documents(values),
        Format::Json => json_array(values),
        Format::Text => Ok(resource_table(kind, &decode_all(values)?, OffsetDateTime::now_utc())),
    }
}

pub async fn get(api: &mut AuthApi, out: &mut dyn Write, reference: &str, format: Format) -> Result<(), TctlError> {
    let (kind, name) = parse_resource_ref(reference)?;
    let values = api.get_resources(kind, name.as_deref()).await?;
    if let (Some(name), true) = (&name, values.is_empty()) {
        return Err(TctlError::Api(format!("{kind} \"{name}\" not found")));
    }
    write_out(out, &render(kind, &values, format)?)
}

/// `KIND/NAME` for commands that act on one resource.
pub fn parse_named_ref(reference: &str) -> Result<(Kind, String), TctlError> {
    match parse_resource_ref(reference)? {
        (kind, Some(name)) => Ok((kind, name)),
        (kind, None) => Err(TctlError::usage(format!(
            "{reference:?} names no resource: use KIND/NAME, e.g. {kind}/example"
        ))),
    }
}

pub async fn rm(api: &mut AuthApi, out: &mut dyn Write, reference: &str) -> Result<(), TctlError> {
    let (kind, name) = parse_named_ref(reference)?;
    api.delete(kind, &name).await?;
    write_out(out, &format!("{kind} \"{name}\" has been deleted\n"))
}

/// Fetches exactly one resource.
async fn get_one(api: &mut AuthApi, kind: Kind, name: &str) -> Result<serde_json::Value, TctlError> {
    let values = api.get_resources(kind, Some(name)).await?;
    values
        .into_iter()
        .next()
        .ok_or_else(|| TctlError::Api(format!("{kind} \"{name}\" not found")))
}

/// Sets the labels of a resource (`tctl update rc/NAME --set-labels=...`).
pub fn set_labels(value: serde_json::Value, labels: &str) -> Result<Resource, TctlError> {
    let labels = parse_labels(labels)?;
    let mut r = Resource::from_json_value(value)
        .map_err(|e| TctlError::Protocol(format!("cannot read the resource: {e}")))?;
    r.metadata_mut().labels = labels;
    Ok(r)
}

pub async fn update(api: &mut AuthApi, out: &mut dyn Write, reference: &str, labels: &str) -> Result<(), TctlError> {
    let (kind, name) = parse_named_ref(reference)?;
    // Check the flag before talking to the auth service.
    parse_labels(labels)?;
    let current = get_one(api, kind, &name).await?;
    let r = set_labels(current, labels)?;
    api.upsert(resource_json(&r)?, false).await.map_err(|s| api.err(&s))?;
    write_out(out, &upserted_line(kind, &name, false))
}

/// Checks an edited document: one resource, same kind and name as the one being edited.
pub fn check_edited(text: &str, kind: Kind, name: &str) -> Result<Resource, TctlError> {
    let unchanged = format!("{kind} \"{name}\" was not changed");
    let mut docs = parse_yaml_documents(text).map_err(|e| TctlError::usage(format!("{e}; {unchanged}")))?;
    if docs.len() != 1 {
        return Err(TctlError::usage(format!(
            "the edited file must hold exactly one resource, it holds {}; {unchanged}",
            docs.len()
        )));
    }
    let r = docs.remove(0);
    if r.kind() != kind || r.name() != name {
        return Err(TctlError::usage(format!(
            "the kind and name cannot be changed by edit (got {} \"{}\"); {unchanged}",
            r.kind(),
            r.name()
        )));
    }
    Ok(r)
}

/// Runs `$EDITOR` (default `vi`) on `path`; the variable may carry arguments, as with git.
async fn run_editor(path: &Path) -> Result<(), TctlError> {
    let editor = std::env::var("VISUAL")
        .ok()
        .or_else(|| std::env::var("EDITOR").ok())
        .filter(|e| !e.trim().is_empty())
        .unwrap_or_else(|| "vi".into());
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$@\""))
        .arg(&editor)
        .arg(path)
        .status()
        .await
        .map_err(|e| TctlError::io(format!("cannot run the editor {editor:?}"), e))?;
    if !status.success() {
        return Err(TctlError::usage(format!("the editor {editor:?} failed ({status}); nothing was changed")));
    }
    Ok(())
}

pub async fn edit(api: &mut AuthApi, out: &mut dyn Write, reference: &str) -> Result<(), TctlError> {
    let (kind, name) = parse_named_ref(reference)?;
    let current = get_one(api, kind, &name).await?;
    let original = yaml_documents(std::slice::from_ref(&current))?;
    let file = tempfile::Builder::new()
        .prefix("tctl-edit-")
        .suffix(".yaml")
        .tempfile()
        .map_err(|e| TctlError::io("cannot create a temporary file", e))?;
    std::fs::write(file.path(), &original).map_err(|e| TctlError::io("cannot write the temporary file", e))?;
    run_editor(file.path()).await?;
    let edited = std::fs::read_to_string(file.path())
        .map_err(|e| TctlError::io("cannot read the edited file", e))?;
    if edited == original {
        return write_out(out, &format!("{kind} \"{name}\" was not changed\n"));
    }
    let r = check_edited(&edited, kind, &name)?;
    api.upsert(resource_json(&r)?, false).await.map_err(|s| api.err(&s))?;
    write_out(out, &upserted_line(kind, &name, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = "\
kind: role
version: v7
metadata:
  name: visitor
spec:
  allow:
    logins: [visitor]
    node_labels:
      '*': '*'
---
kind: trusted_cluster
version: v2
metadata:
  name: rootcluster.example.com
spec:
  enabled: true
  token: abcd123
  role_map:
    - remote: access
      local: [visitor]
";

    #[test]
    fn documents_are_all_checked_first() {
        let rs = parse_documents(TWO, "f.yaml").unwrap();
        assert_eq!(rs.len(), 2);
        assert_eq!(upserted_line(rs[0].kind(), rs[0].name(), true), "role \"visitor\" has been created\n");
        assert_eq!(
            upserted_line(rs[1].kind(), rs[1].name(), true),
            "trusted_cluster \"rootcluster.example.com\" has been created\n"
        );
        let bad = format!("{TWO}---\nkind: role\nversion: v7\nmetadata:\n  name: x\nspec:\n  alow: {{}}\n");
        let e = parse_documents(&bad, "f.yaml").unwrap_err().to_string();
        assert!(e.starts_with("f.yaml: ") && e.contains("alow"), "{e}");
        let e = parse_documents("kind: role\n  bad: [", "f.yaml").unwrap_err().to_string();
        assert!(e.contains("line"), "{e}");
        assert!(parse_documents("", "f.yaml").unwrap_err().to_string().contains("no resources"));
    }

    #[test]
    fn resource_json_round_trips() {
        let rs = parse_documents(TWO, "f").unwrap();
        let j = resource_json(&rs[1]).unwrap();
        let back = Resource::from_json_value(serde_json::from_str(&j).unwrap()).unwrap();
        assert_eq!(back, rs[1]);
    }

    #[test]
    fn named_refs() {
        assert_eq!(parse_named_ref("rc/leaf").unwrap(), (Kind::RemoteCluster, "leaf".to_string()));
        assert!(parse_named_ref("rc").unwrap_err().to_string().contains("KIND/NAME"));
        assert!(parse_named_ref("bogus/x").unwrap_err().to_string().contains("bogus"));
    }

    #[test]
    fn update_labels_replaces_them() {
        let rc = serde_json::json!({
            "kind": "remote_cluster", "version": "v3",
            "metadata": {"name": "leaf", "labels": {"old": "x"}},
            "status": {"connection": "online", "last_heartbeat": "2022-04-29T19:45:35.052864534Z"}
        });
        let r = set_labels(rc, "env=demo").unwrap();
        assert_eq!(r.metadata().labels.len(), 1);
        assert_eq!(r.metadata().labels["env"], "demo");
        let v = r.to_json_value().unwrap();
        assert_eq!(v["status"]["connection"], "online");
    }

    #[test]
    fn edited_resource_checks() {
        let one = "kind: role\nversion: v7\nmetadata:\n  name: visitor\nspec: {}\n";
        assert!(check_edited(one, Kind::Role, "visitor").is_ok());
        let e = check_edited(one, Kind::Role, "other").unwrap_err().to_string();
        assert!(e.contains("was not changed"), "{e}");
        let e = check_edited("kind: role\n x: [", Kind::Role, "visitor").unwrap_err().to_string();
        assert!(e.contains("malformed YAML") && e.contains("was not changed"), "{e}");
    }
}
