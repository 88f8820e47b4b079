//! Table and JSON output.
use serde_json::Value;

use crate::cli::{Global, Output};

/// An error with what to do about it: printed as `error: …` and
/// `  hint: …`, or `{"error": …, "hint": …}` on stderr with `--output json`.
#[derive(Debug)]
pub(crate) struct Hinted {
    pub message: String,
    pub hint: String,
}

impl Hinted {
    pub(crate) fn error(message: impl Into<String>, hint: impl Into<String>) -> anyhow::Error {
        anyhow::Error::new(Hinted {
            message: message.into(),
            hint: hint.into(),
        })
    }
}

impl std::fmt::Display for Hinted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Hinted {}

/// Prints a command's error on stderr, as text or as one JSON object.
pub(crate) fn report_error(json: bool, e: &anyhow::Error) {
    let message = format!("{e:#}");
    let hint = e.downcast_ref::<Hinted>().map(|h| h.hint.as_str());
    if json {
        eprintln!("{}", serde_json::json!({ "error": message, "hint": hint }));
    } else {
        eprintln!("error: {message}");
        if let Some(h) = hint {
            eprintln!("  hint: {h}");
        }
    }
}

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
                println!("{k}: {}", field(k, v));
            }
        }
        other => println!("{}", cell(other)),
    }
}

/// A field for people: times (`*_at`, Unix seconds in JSON) as RFC 3339.
fn field(key: &str, v: &Value) -> String {
    match v.as_i64() {
        Some(secs) if key.ends_with("_at") => time(secs),
        _ => cell(v),
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
        .map(|r| columns.iter().map(|c| field(c, &r[*c])).collect())
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
