//! Markdown tables.

/// A GitHub-flavoured markdown table; numeric-looking cells are right-aligned by the header rule.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = String::new();
    s.push_str(&format!("| {} |\n", headers.join(" | ")));
    let rule: Vec<&str> = (0..headers.len())
        .map(|i| {
            let numeric = !rows.is_empty()
                && rows.iter().all(|r| {
                    r.get(i)
                        .map(|c| c.trim_end_matches(['x', '%']).parse::<f64>().is_ok())
                        .unwrap_or(false)
                });
            if numeric {
                "---:"
            } else {
                "---"
            }
        })
        .collect();
    s.push_str(&format!("| {} |\n", rule.join(" | ")));
    for r in rows {
        s.push_str(&format!("| {} |\n", r.join(" | ")));
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn numeric_columns_right_aligned() {
        let t = super::table(
            &["name", "GB/s", "x"],
            &[vec!["a".into(), "12.5".into(), "3.9x".into()]],
        );
        assert_eq!(
            t,
            "| name | GB/s | x |\n| --- | ---: | ---: |\n| a | 12.5 | 3.9x |\n"
        );
    }

    /// Percentages are numbers too; a column with a missing cell, or a table without rows, has
    /// no numbers to align.
    #[test]
    fn percent_cells_are_numeric_and_missing_cells_or_no_rows_are_not() {
        let t = super::table(
            &["a", "b", "c"],
            &[
                vec!["1".into(), "50.0%".into(), "2".into()],
                vec!["3".into(), "7%".into()],
            ],
        );
        assert!(t.contains("\n| ---: | ---: | --- |\n"), "{t}");
        assert_eq!(
            super::table(&["GB/s", "x"], &[]),
            "| GB/s | x |\n| --- | --- |\n"
        );
    }
}
