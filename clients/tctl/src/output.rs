//! Output formatting: aligned text tables as Teleport prints them, YAML documents, JSON.

use serde_json::Value;

use crate::error::TctlError;

/// A text table: a header row, a row of dashes, then the rows; columns are as wide as their
/// widest cell and separated by one space.
#[derive(Debug, Clone, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Table { headers: headers.iter().map(|h| h.to_string()).collect(), rows: Vec::new() }
    }

    /// Adds a row; missing cells are empty, extra cells are dropped.
    pub fn push(&mut self, mut row: Vec<String>) {
        row.resize(self.headers.len(), String::new());
        self.rows.push(row);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self) -> String {
        // Character counts, not bytes: cells such as "⟵ Tunnel" are not ASCII.
        let width = |s: &str| s.chars().count();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(cell));
            }
        }
        let line = |cells: &mut dyn Iterator<Item = String>| -> String {
            let joined: Vec<String> = cells.zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
            let mut s = joined.join(" ").trim_end().to_string();
            s.push('\n');
            s
        };
        let mut out = line(&mut self.headers.iter().cloned());
        out.push_str(&line(&mut widths.iter().map(|w| "-".repeat(*w))));
        for row in &self.rows {
            out.push_str(&line(&mut row.iter().cloned()));
        }
        out
    }
}

/// Resources as YAML documents separated by `---`, as `tctl get` prints them.
pub fn yaml_documents(resources: &[Value]) -> Result<String, TctlError> {
    let mut out = String::new();
    for (i, r) in resources.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        let doc = serde_norway::to_string(r).map_err(|e| TctlError::Protocol(format!("cannot print as YAML: {e}")))?;
        out.push_str(&doc);
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}

/// Resources as a pretty JSON array.
pub fn json_array(resources: &[Value]) -> Result<String, TctlError> {
    let mut s = serde_json::to_string_pretty(resources)
        .map_err(|e| TctlError::Protocol(format!("cannot print as JSON: {e}")))?;
    s.push('\n');
    Ok(s)
}

/// Any serialisable value as pretty JSON with a final newline.
pub fn json_value<T: serde::Serialize>(v: &T) -> Result<String, TctlError> {
    let mut s = serde_json::to_string_pretty(v).map_err(|e| TctlError::Protocol(e.to_string()))?;
    s.push('\n');
    Ok(s)
}

/// Any serialisable value as YAML.
pub fn yaml_value<T: serde::Serialize>(v: &T) -> Result<String, TctlError> {
    serde_norway::to_string(v).map_err(|e| TctlError::Protocol(e.to_string()))
}

/// Splits a comma-separated flag value into trimmed, non-empty items.
pub fn split_list(s: &str) -> Vec<String> {
    s.split(',').map(str::trim).filter(|p| !p.is_empty()).map(str::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_columns_are_aligned() {
        let mut t = Table::new(&["Token", "Type", "Labels", "Expiry Time (UTC)"]);
        t.push(vec![
            "abcd123-insecure-do-not-use-this".into(),
            "trusted_cluster".into(),
            "".into(),
            "28 Apr 22 19:19 UTC (4m48s)".into(),
        ]);
        t.push(vec!["short".into(), "node".into(), "env=prod".into(), "never".into()]);
        let want = "\
Token                            Type            Labels   Expiry Time (UTC)
-------------------------------- --------------- -------- ---------------------------
abcd123-insecure-do-not-use-this trusted_cluster          28 Apr 22 19:19 UTC (4m48s)
short                            node            env=prod never
";
        assert_eq!(t.render(), want);
    }

    #[test]
    fn unicode_cells_and_short_rows() {
        let mut t = Table::new(&["Node Name", "Address", "Labels"]);
        t.push(vec!["db".into(), "⟵ Tunnel".into()]);
        t.push(vec!["web-1".into(), "10.0.0.1:3022".into(), "env=prod".into()]);
        let out = t.render();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "Node Name Address       Labels");
        assert_eq!(lines[2], "db        ⟵ Tunnel");
        assert_eq!(lines[3], "web-1     10.0.0.1:3022 env=prod");
        assert!(Table::new(&["A"]).is_empty());
    }

    #[test]
    fn yaml_and_json() {
        let a = serde_json::json!({"kind": "role", "metadata": {"name": "a"}});
        let b = serde_json::json!({"kind": "role", "metadata": {"name": "b"}});
        let y = yaml_documents(&[a.clone(), b]).unwrap();
        assert_eq!(y.matches("---\n").count(), 1, "{y}");
        assert!(y.contains("name: a") && y.contains("name: b"));
        assert_eq!(yaml_documents(&[]).unwrap(), "");
        let j = json_array(&[a]).unwrap();
        assert!(j.starts_with('[') && j.ends_with("]\n"));
        assert_eq!(split_list(" a, b,,c "), vec!["a", "b", "c"]);
    }
}
