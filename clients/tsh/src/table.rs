//! Plain-text tables as Teleport prints them: a header, a dashed rule, padded columns.

/// Renders `rows` under `headers`; widths count characters, so `⟵ Tunnel` lines up.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let width = |s: &str| s.chars().count();
    let mut widths: Vec<usize> = headers.iter().map(|h| width(h)).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(width(cell));
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let w = widths.get(i).copied().unwrap_or(0);
                format!("{c}{}", " ".repeat(w.saturating_sub(width(c))))
            })
            .collect();
        padded.join(" ").trim_end().to_string()
    };
    let mut out = String::new();
    out.push_str(&line(headers.to_vec()));
    out.push('\n');
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    out.push_str(&rule.join(" "));
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_padded_and_ruled() {
        let t = render(
            &["A", "Bee"],
            &[
                vec!["long-value".into(), "x".into()],
                vec!["y".into(), "".into()],
            ],
        );
        assert_eq!(t, "A          Bee\n---------- ---\nlong-value x\ny\n");
    }
}
