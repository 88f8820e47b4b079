//! Table and JSON output.
use serde_json::Value;

use crate::cli::{Global, Output};

/// Prints `value` as JSON, or as a table of `columns` (JSON keys) when the
/// value is an array, or as `key: value` lines.
pub(crate) fn print(g: &Global, value: &Value, columns: &[&str]) {
    if g.output == Output::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
        return;
    }
    match value {
        Value::Array(rows) => print_table(rows, columns),
        Value::Object(map) => {
            for (k, v) in map {
                println!("{k}: {}", cell(v));
            }
        }
        other => println!("{}", cell(other)),
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

fn print_table(rows: &[Value], columns: &[&str]) {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| columns.iter().map(|c| cell(&r[*c])).collect())
        .collect();
    let header: Vec<String> = columns.iter().map(|c| c.to_uppercase()).collect();
    print_grid(&header, &cells);
}

/// Aligned columns separated by two spaces.
pub(crate) fn print_grid(header: &[String], cells: &[Vec<String>]) {
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            cells
                .iter()
                .map(|r| r[i].len())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |vals: &[String]| {
        let parts: Vec<String> = vals
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(header);
    for r in cells {
        line(r);
    }
}

/// A unix timestamp as RFC 3339.
pub(crate) fn time(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}
