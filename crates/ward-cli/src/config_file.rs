//! `ward server --config FILE`: every flag of `ward server` (and the
//! global ones) as a YAML mapping, keyed by the long flag's name
//! (`svid-ttl: 12h`, `dns-name: [a, b]`, `data-dir: /var/lib/ward`).
//! Flags on the command line and environment variables win over the file;
//! the file wins over the defaults. The file's settings become flags
//! before clap parses them, so they are checked exactly as flags are.
use std::ffi::OsString;

use clap::{ArgAction, CommandFactory};

use crate::cli::Cli;

/// `args` with the settings of the `--config` file of `ward server`
/// added as flags, when there is one.
pub(crate) fn expand(args: Vec<OsString>) -> Result<Vec<OsString>, String> {
    let strs: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let Some(at) = strs.iter().position(|a| a == "server") else {
        return Ok(args);
    };
    let path = strs[at + 1..].iter().enumerate().find_map(|(i, a)| {
        if a == "--config" {
            strs.get(at + 2 + i).cloned()
        } else {
            a.strip_prefix("--config=").map(str::to_string)
        }
    });
    let Some(path) = path else {
        return Ok(args);
    };
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("reading --config {path}: {e}"))?;
    let settings: serde_yaml_ng::Mapping = if text.trim().is_empty() {
        Default::default()
    } else {
        serde_yaml_ng::from_str(&text).map_err(|e| {
            format!("--config {path}: {e} (the file is a YAML mapping of flag names to values)")
        })?
    };
    let cmd = Cli::command();
    let server = cmd
        .find_subcommand("server")
        .expect("ward has a server command");
    let flags: Vec<&clap::Arg> = server
        .get_arguments()
        .chain(cmd.get_arguments().filter(|a| a.is_global_set()))
        .collect();
    let mut added: Vec<OsString> = Vec::new();
    for (key, value) in settings {
        let key = match key.as_str() {
            Some(k) => k.replace('_', "-"),
            None => {
                return Err(format!(
                    "--config {path}: setting names are strings ({key:?})"
                ))
            }
        };
        let Some(arg) = flags.iter().find(|a| {
            a.get_long() == Some(key.as_str()) && key != "config" && key != "print-config"
        }) else {
            return Err(format!(
                "--config {path}: no setting {key:?} (the settings are the long flags of `ward server --help` and the global ones)"
            ));
        };
        if value.is_null() {
            // Not set (as `--print-config` shows an unset setting).
            continue;
        }
        let flag = format!("--{key}");
        let given = strs
            .iter()
            .any(|a| *a == flag || a.starts_with(&format!("{flag}=")));
        let from_env = arg
            .get_env()
            .is_some_and(|e| std::env::var_os(e).is_some_and(|v| !v.is_empty()));
        if given || from_env {
            continue;
        }
        let values = match value {
            serde_yaml_ng::Value::Sequence(items) => {
                if !matches!(arg.get_action(), ArgAction::Append) {
                    return Err(format!(
                        "--config {path}: {key} takes one value, not a list"
                    ));
                }
                items
                    .iter()
                    .map(|v| scalar(&path, &key, v))
                    .collect::<Result<Vec<_>, _>>()?
            }
            v => vec![scalar(&path, &key, &v)?],
        };
        match arg.get_action() {
            ArgAction::SetTrue => match values.as_slice() {
                [v] if v == "true" => added.push(flag.into()),
                [v] if v == "false" => {}
                _ => return Err(format!("--config {path}: {key} is true or false")),
            },
            _ => {
                for v in values {
                    added.push(flag.clone().into());
                    added.push(v.into());
                }
            }
        }
    }
    let mut out = args;
    out.splice(at + 1..at + 1, added);
    Ok(out)
}

/// A YAML scalar as the text a flag takes.
fn scalar(path: &str, key: &str, v: &serde_yaml_ng::Value) -> Result<String, String> {
    use serde_yaml_ng::Value;
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err(format!("--config {path}: {key} needs a plain value")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(yaml: &str, argv: &[&str]) -> Result<Vec<String>, String> {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("ward.yaml");
        std::fs::write(&f, yaml).unwrap();
        let mut args: Vec<OsString> = vec!["ward".into()];
        args.extend(argv.iter().map(OsString::from));
        args.extend([
            "server".into(),
            "--config".into(),
            f.clone().into_os_string(),
        ]);
        expand(args).map(|v| v.iter().map(|a| a.to_string_lossy().into_owned()).collect())
    }

    #[test]
    fn settings_become_flags_that_the_command_line_overrides() {
        let got = run(
            "listen: 127.0.0.1:0\nsvid_ttl: 2h\ndns-name: [a.example, b.example]\ntrust-domain: example.org\n",
            &["--output", "json"],
        )
        .unwrap();
        let at = got.iter().position(|a| a == "server").unwrap();
        assert_eq!(
            &got[at + 1..at + 11],
            [
                "--listen",
                "127.0.0.1:0",
                "--svid-ttl",
                "2h",
                "--dns-name",
                "a.example",
                "--dns-name",
                "b.example",
                "--trust-domain",
                "example.org"
            ]
        );
        let got = run("svid-ttl: 2h\n", &[]).unwrap();
        assert!(got.contains(&"2h".to_string()));
        // Given on the command line: the file's value is not added.
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("w.yaml");
        std::fs::write(&f, "svid-ttl: 2h\n").unwrap();
        let args: Vec<OsString> = [
            "ward",
            "server",
            "--svid-ttl",
            "3h",
            "--config",
            f.to_str().unwrap(),
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let got = expand(args).unwrap();
        assert!(!got.iter().any(|a| a == "2h"), "{got:?}");
    }

    #[test]
    fn unknown_or_malformed_settings_are_refused_by_name() {
        let e = run("svid-tll: 2h\n", &[]).unwrap_err();
        assert!(e.contains("no setting \"svid-tll\""), "{e}");
        let e = run("listen: [a, b]\n", &[]).unwrap_err();
        assert!(e.contains("listen takes one value"), "{e}");
        let e = run("- just a list\n", &[]).unwrap_err();
        assert!(e.contains("YAML mapping"), "{e}");
        let e = run("config: other.yaml\n", &[]).unwrap_err();
        assert!(e.contains("no setting \"config\""), "{e}");
    }
}
