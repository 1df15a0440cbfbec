//! `run --config FILE`: a YAML mapping whose keys are `run`'s long flag names.
//!
//! ```yaml
//! manifests: /etc/svcplane/manifests
//! mode: userspace
//! node-ip: [192.0.2.10, 2001:db8::10]
//! dns-ttl: 30
//! ```
//!
//! The file is turned into flags placed before the command line's, so the command line
//! wins: a flag given there (or through its environment variable) drops the file's key
//! entirely, lists included. Every key is checked with the flag's own parser first, so an
//! error names the file and the key.

use std::ffi::OsString;
use std::path::Path;

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command, CommandFactory as _, FromArgMatches as _};
use serde_json::Value;

use crate::cli::Cli;

/// Flags of `run` that cannot appear in the file.
const NOT_IN_FILE: [&str; 3] = ["config", "help", "version"];

/// Parses the process's arguments, merging `run --config FILE` when given; exits with a
/// usage error (status 2) naming the file and key when the file is wrong.
pub(crate) fn parse() -> Cli {
    let argv: Vec<OsString> = std::env::args_os().collect();
    match parse_from(argv, |p| std::fs::read_to_string(p)) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    }
}

/// [`parse`] over `argv`, reading the file with `read`.
pub(crate) fn parse_from(
    argv: Vec<OsString>,
    read: impl Fn(&Path) -> std::io::Result<String>,
) -> Result<Cli, clap::Error> {
    // First pass: is this `run --config FILE`? `--manifests` may come from the file, so it
    // is not required yet.
    let lenient =
        Cli::command().mut_subcommand("run", |c| c.mut_arg("manifests", |a| a.required(false)));
    let matches = lenient.try_get_matches_from(&argv)?;
    let Some(("run", run)) = matches.subcommand() else {
        return Cli::try_parse_from_argv(argv);
    };
    let Some(path) = run.get_one::<std::path::PathBuf>("config").cloned() else {
        return Cli::try_parse_from_argv(argv);
    };
    let mut cmd = Cli::command();
    let text = read(&path).map_err(|e| {
        cmd.error(
            clap::error::ErrorKind::Io,
            format!("--config {}: cannot read: {e}", path.display()),
        )
    })?;
    let run_cmd = cmd
        .find_subcommand("run")
        .cloned()
        .unwrap_or_else(|| Command::new("run"));
    let file_args = file_flags(&run_cmd, run, &text).map_err(|msg| {
        cmd.error(
            clap::error::ErrorKind::InvalidValue,
            format!("--config {}: {msg}", path.display()),
        )
    })?;
    // argv[1] is `run`: the top level has no options that take values.
    let mut merged = Vec::with_capacity(argv.len() + file_args.len());
    merged.extend(argv.iter().take(2).cloned());
    merged.extend(file_args.into_iter().map(OsString::from));
    merged.extend(argv.iter().skip(2).cloned());
    Cli::try_parse_from_argv(merged)
}

trait TryParseArgv: Sized {
    fn try_parse_from_argv(argv: Vec<OsString>) -> Result<Self, clap::Error>;
}

impl TryParseArgv for Cli {
    fn try_parse_from_argv(argv: Vec<OsString>) -> Result<Self, clap::Error> {
        let mut cmd = Cli::command();
        let m = cmd.try_get_matches_from_mut(argv)?;
        Cli::from_arg_matches(&m).map_err(|e| e.format(&mut cmd))
    }
}

/// The flags the file stands for, skipping keys the command line sets. Errors name the key.
fn file_flags(run: &Command, given: &ArgMatches, text: &str) -> Result<Vec<String>, String> {
    let docs = svcplane_config::yaml::documents(text)
        .map_err(|e| format!("line {}, column {}: {}", e.line(), e.column(), e.message()))?;
    let map = match docs.as_slice() {
        [] => return Ok(Vec::new()),
        [(_, Value::Null)] => return Ok(Vec::new()),
        [(_, Value::Object(map))] => map,
        [(line, _)] => {
            return Err(format!(
                "line {line}: expected a mapping of flag names to values"
            ));
        }
        [_, (line, _), ..] => {
            return Err(format!(
                "line {line}: expected one YAML document, found more"
            ));
        }
    };
    let mut out = Vec::new();
    for (key, value) in map {
        let arg = run
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()) && !NOT_IN_FILE.contains(&key.as_str()))
            .ok_or_else(|| unknown_key(run, key))?;
        let id = arg.get_id().as_str();
        if matches!(
            given.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        if matches!(arg.get_action(), ArgAction::SetTrue) {
            match value {
                Value::Bool(true) => out.push(format!("--{key}")),
                Value::Bool(false) => {}
                _ => return Err(format!("key `{key}`: expected true or false")),
            }
            continue;
        }
        let multiple = matches!(arg.get_action(), ArgAction::Append);
        let values: Vec<String> = match value {
            Value::Array(items) if multiple => items
                .iter()
                .map(|v| scalar(key, v))
                .collect::<Result<_, _>>()?,
            Value::Array(_) => return Err(format!("key `{key}`: takes one value, not a list")),
            v => vec![scalar(key, v)?],
        };
        // The flag's own parser, alone: its error is about this key only.
        let check = Command::new("run")
            .no_binary_name(true)
            .arg(arg.clone().required(false));
        for v in values {
            let flag = format!("--{key}={v}");
            check
                .clone()
                .try_get_matches_from([flag.as_str()])
                .map_err(|e| format!("key `{key}`: {}", clap_reason(&e, &v)))?;
            out.push(flag);
        }
    }
    Ok(out)
}

fn scalar(key: &str, v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Null => Err(format!("key `{key}`: has no value")),
        Value::Array(_) | Value::Object(_) => Err(format!(
            "key `{key}`: expected a string or a number, found a {}",
            if v.is_array() { "list" } else { "mapping" }
        )),
    }
}

/// The reason in a value parser's error, without clap's `error:` prefix and usage tips.
fn clap_reason(e: &clap::Error, value: &str) -> String {
    use clap::error::{ContextKind, ContextValue};
    let valid = match e.get(ContextKind::ValidValue) {
        Some(ContextValue::Strings(v)) => format!(" (expected one of: {})", v.join(", ")),
        _ => String::new(),
    };
    match e.get(ContextKind::Custom) {
        Some(ContextValue::String(s)) => format!("invalid value {value:?}: {s}"),
        _ => {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default();
            let first = first.strip_prefix("error: ").unwrap_or(first);
            format!("{first}{valid}")
        }
    }
}

fn unknown_key(run: &Command, key: &str) -> String {
    let known: Vec<&str> = run
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|l| !NOT_IN_FILE.contains(l))
        .collect();
    let hint = if known.contains(&key.replace('_', "-").as_str()) {
        format!("; did you mean `{}`?", key.replace('_', "-"))
    } else {
        String::new()
    };
    format!(
        "unknown key `{key}`{hint} (keys are run's flag names: {})",
        known.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Command as Cmd, Mode};

    fn parse_with(args: &[&str], file: &str) -> Result<Cli, String> {
        let mut argv = vec!["svcplane", "run", "--config", "/etc/sp.yaml"];
        argv.extend(args);
        let file = file.to_owned();
        parse_from(argv.into_iter().map(OsString::from).collect(), move |p| {
            assert_eq!(p, Path::new("/etc/sp.yaml"));
            Ok(file.clone())
        })
        .map_err(|e| e.to_string())
    }

    fn run_args(cli: Cli) -> crate::cli::RunArgs {
        match cli.command {
            Cmd::Run(r) => *r,
            _ => panic!("not run"),
        }
    }

    #[test]
    fn file_supplies_flags_and_the_command_line_wins() {
        let file = "manifests: /m\nmode: none\nnode-ip: [10.0.0.1, '::1']\ndns-ttl: 30\nadmin-listen: 127.0.0.1:1\nbpf-tcp-getpeername-vip: true\n";
        let r = run_args(parse_with(&[], file).unwrap());
        assert_eq!(r.manifests, Path::new("/m"));
        assert_eq!(r.mode, Mode::None);
        assert_eq!(r.node_ips.len(), 2);
        assert_eq!(r.dns_ttl, 30);
        assert!(r.bpf_tcp_getpeername_vip);
        let r = run_args(
            parse_with(
                &[
                    "--node-ip",
                    "10.9.9.9",
                    "--dns-ttl",
                    "7",
                    "--manifests",
                    "/x",
                ],
                file,
            )
            .unwrap(),
        );
        assert_eq!(r.manifests, Path::new("/x"));
        assert_eq!(
            r.node_ips,
            vec!["10.9.9.9".parse::<std::net::IpAddr>().unwrap()]
        );
        assert_eq!(r.dns_ttl, 7);
        assert_eq!(
            r.admin_listen.port(),
            1,
            "keys the command line leaves alone stay"
        );
    }

    #[test]
    fn errors_name_the_file_and_the_key() {
        for (file, want) in [
            (
                "manifests: /m\ndns_ttl: 3\n",
                "unknown key `dns_ttl`; did you mean `dns-ttl`?",
            ),
            ("manifests: /m\nbogus: 1\n", "unknown key `bogus`"),
            (
                "manifests: /m\ndns-ttl: lots\n",
                "key `dns-ttl`: invalid value",
            ),
            ("manifests: /m\ndns-ttl: 99999\n", "key `dns-ttl`"),
            ("manifests: /m\nmode: fast\n", "key `mode`"),
            (
                "manifests: /m\nadmin-listen: [1, 2]\n",
                "key `admin-listen`: takes one value",
            ),
            (
                "manifests: /m\nnode-ip: {a: 1}\n",
                "key `node-ip`: expected a string",
            ),
            (
                "manifests: /m\nnode-ip: [10.0.0.1, 300.0.0.1]\n",
                "key `node-ip`",
            ),
            ("manifests: [/m\n", "--config /etc/sp.yaml: line"),
            ("- manifests\n", "expected a mapping"),
            ("config: other.yaml\n", "unknown key `config`"),
            (
                "manifests: /m\nbpf-tcp-getpeername-vip: sure\n",
                "expected true or false",
            ),
        ] {
            let err = parse_with(&[], file)
                .err()
                .unwrap_or_else(|| panic!("{file:?} parsed"));
            assert!(err.contains("--config /etc/sp.yaml"), "{file:?}: {err}");
            assert!(err.contains(want), "{file:?}: want {want:?} in {err}");
        }
    }

    #[test]
    fn manifests_is_still_required_from_somewhere() {
        let err = parse_with(&[], "mode: none\n").err().unwrap();
        assert!(err.contains("--manifests"), "{err}");
        assert!(parse_with(&["--manifests", "/m"], "").is_ok());
    }

    #[test]
    fn an_unreadable_file_is_an_error() {
        let argv = ["svcplane", "run", "--config", "/nope.yaml"];
        let err = parse_from(argv.into_iter().map(OsString::from).collect(), |_| {
            Err(std::io::Error::from(std::io::ErrorKind::NotFound))
        })
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("--config /nope.yaml: cannot read"), "{err}");
    }
}
