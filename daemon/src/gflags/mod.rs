//! Upstream's command lines, verbatim: gflags spellings and built-ins, glog's
//! logging flags, and every other upstream flag accepted.
//!
//! [`normalize`] turns a gflags-style command line into one clap parses:
//! `-name=value` and `-name value` become `--name=value`; `--noname` becomes
//! `--name=false` for a boolean; `--flagfile=FILE` is replaced by the flags in the
//! file; `--fromenv=a,b` / `--tryfromenv=a,b` take `FLAGS_a`, `FLAGS_b` from the
//! environment; `--helpfull` and friends become `--help`. glog's flags are taken out
//! into [`GlogSettings`]; an upstream flag this build has nothing for is taken out
//! and listed in [`Normalized::ignored`], so the command can say once that it has no
//! effect here. A flag upstream does not have either is left for clap to refuse.

pub mod upstream;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use upstream::UpstreamFlag;

/// glog's settings, from `--logtostderr`, `--log_dir`, `--minloglevel`, ...
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlogSettings {
    /// Log only to stderr (our default unless `--log_dir` is given).
    pub logtostderr: bool,
    /// Log to stderr as well as to the files in `log_dir`.
    pub alsologtostderr: bool,
    /// With `log_dir`, messages at or above this level also go to stderr
    /// (0 INFO, 1 WARNING, 2 ERROR, 3 FATAL).
    pub stderrthreshold: u8,
    /// Messages below this level are dropped (0 INFO, 1 WARNING, 2 ERROR, 3 FATAL).
    pub minloglevel: u8,
    /// Directory for log files.
    pub log_dir: Option<PathBuf>,
    /// A log file is rotated when it reaches this many MB.
    pub max_log_size_mb: u64,
    /// Per-module verbosity (`module=level,...`), as a tracing filter.
    pub vmodule: String,
}

impl Default for GlogSettings {
    fn default() -> Self {
        GlogSettings {
            logtostderr: false,
            alsologtostderr: false,
            stderrthreshold: 2,
            minloglevel: 0,
            log_dir: None,
            max_log_size_mb: 1800,
            vmodule: String::new(),
        }
    }
}

/// A command line made ready for clap.
#[derive(Debug, Default)]
pub struct Normalized {
    /// The arguments clap parses (program name first).
    pub argv: Vec<OsString>,
    /// glog's settings.
    pub glog: GlogSettings,
    /// Upstream flags given that have no effect here, as given (`--name=value`).
    pub ignored: Vec<String>,
}

/// What clap knows of a flag of ours: its long name, and whether it is a boolean
/// (its value may be left out, and `--noname` is its negation).
#[derive(Debug, Clone)]
pub struct OurFlag {
    /// Long name.
    pub name: String,
    /// Boolean.
    pub boolean: bool,
}

/// The flags of a clap command.
pub fn our_flags(cmd: &clap::Command) -> Vec<OurFlag> {
    cmd.get_arguments()
        .flat_map(|a| {
            let boolean = !a.get_action().takes_values()
                || a.get_num_args().is_some_and(|n| n.min_values() == 0);
            let mut names: Vec<String> = a.get_long().map(str::to_string).into_iter().collect();
            names.extend(
                a.get_all_aliases()
                    .unwrap_or_default()
                    .into_iter()
                    .map(str::to_string),
            );
            if let Some(s) = a.get_short() {
                names.push(s.to_string());
            }
            names.into_iter().map(move |name| OurFlag { name, boolean })
        })
        .collect()
}

const GLOG_BOOLS: &[&str] = &[
    "logtostderr",
    "alsologtostderr",
    "colorlogtostderr",
    "log_prefix",
    "drop_log_memory",
    "stop_logging_if_full_disk",
    "symbolize_stacktrace",
];
const HELP: &[&str] = &[
    "helpfull",
    "helpshort",
    "helpxml",
    "helppackage",
    "helpmatch",
    "helpon",
];

/// A boolean flag's value for clap (`value_parser = bool_value`), in every
/// spelling gflags takes (`true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off`).
pub fn bool_value(s: &str) -> Result<bool, String> {
    parse_bool(s).ok_or_else(|| format!("expected true or false, got {s:?}"))
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "" | "true" | "1" | "yes" | "on" | "t" | "y" => Some(true),
        "false" | "0" | "no" | "off" | "f" | "n" => Some(false),
        _ => None,
    }
}

/// Normalizes `argv` (program name first) for a command with `ours` flags, on
/// behalf of upstream's `upstream` flags; `env` looks up `FLAGS_*` variables for
/// `--fromenv`. Errors name the flag and why (a missing flag file, an unset
/// variable for `--fromenv`, a value a boolean cannot take).
pub fn normalize<I, T>(
    argv: I,
    ours: &[OurFlag],
    upstream: &[UpstreamFlag],
    env: impl Fn(&str) -> Option<String>,
) -> Result<Normalized, String>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let mut args: Vec<OsString> = argv.into_iter().map(Into::into).collect();
    let mut out = Normalized::default();
    if args.is_empty() {
        return Ok(out);
    }
    out.argv.push(args.remove(0));
    let mut queue: std::collections::VecDeque<OsString> = args.into();
    let ours_named = |n: &str| ours.iter().find(|f| f.name == n);
    let upstream_named = |n: &str| upstream.iter().find(|f| f.0 == n);
    let mut flagfiles = 0;
    // `--config_path` settings: applied after the command line, each only when
    // the command line did not set that flag (upstream's order of precedence).
    let mut from_config: Vec<(String, String)> = Vec::new();
    let mut config_applied = false;
    let mut on_command_line = std::collections::HashSet::new();
    loop {
        if queue.is_empty() && !config_applied && !from_config.is_empty() {
            config_applied = true;
            for (name, value) in std::mem::take(&mut from_config) {
                if !on_command_line.contains(&name) {
                    queue.push_back(format!("--{name}={value}").into());
                }
            }
        }
        let Some(raw) = queue.pop_front() else { break };
        {
            let Some(text) = raw.to_str().map(str::to_string) else {
                out.argv.push(raw);
                continue;
            };
            if text == "--" {
                out.argv.push(raw);
                out.argv.extend(queue.drain(..));
                break;
            }
            let Some(body) = text
                .strip_prefix("--")
                .or_else(|| text.strip_prefix('-'))
                .filter(|b| !b.is_empty())
            else {
                out.argv.push(raw);
                continue;
            };
            let (mut name, mut value) = match body.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (body.to_string(), None),
            };
            // `--noname` negates a boolean.
            let is_bool = |n: &str| {
                ours_named(n).is_some_and(|f| f.boolean)
                    || upstream_named(n).is_some_and(|f| f.2 == "bool")
                    || GLOG_BOOLS.contains(&n)
            };
            if value.is_none()
                && ours_named(&name).is_none()
                && upstream_named(&name).is_none()
                && let Some(base) = name.strip_prefix("no")
                && is_bool(base)
            {
                name = base.to_string();
                value = Some("false".into());
            }
            if !config_applied {
                on_command_line.insert(name.clone());
            }
            let boolean = is_bool(&name);
            // A value in the next argument, for flags that take one.
            let mut take_value = |value: &mut Option<String>| {
                if value.is_none()
                    && !boolean
                    && let Some(next) = queue.front().and_then(|v| v.to_str())
                    && !(next.starts_with('-')
                        && next.len() > 1
                        && !next[1..].starts_with(|c: char| c.is_ascii_digit()))
                {
                    *value = queue.pop_front().and_then(|v| v.into_string().ok());
                }
            };
            match name.as_str() {
                "flagfile" => {
                    take_value(&mut value);
                    let path = value.ok_or("--flagfile needs a file")?;
                    flagfiles += 1;
                    if flagfiles > 32 {
                        return Err("--flagfile: too many nested flag files".into());
                    }
                    let text = std::fs::read_to_string(&path)
                        .map_err(|e| format!("--flagfile={path}: {e}"))?;
                    let flags: Vec<OsString> = text
                        .lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty() && !l.starts_with('#'))
                        .map(OsString::from)
                        .collect();
                    for f in flags.into_iter().rev() {
                        queue.push_front(f);
                    }
                }
                "config_path" if upstream_named("config_path").is_some() => {
                    take_value(&mut value);
                    let path = value.unwrap_or_default();
                    if !path.is_empty() {
                        from_config.extend(read_config_file(Path::new(&path))?);
                    }
                }
                "fromenv" | "tryfromenv" => {
                    take_value(&mut value);
                    for flag in value
                        .unwrap_or_default()
                        .split(',')
                        .filter(|f| !f.is_empty())
                    {
                        match env(&format!("FLAGS_{flag}")) {
                            Some(v) => queue.push_back(format!("--{flag}={v}").into()),
                            None if name == "tryfromenv" => {}
                            None => return Err(format!("--fromenv: FLAGS_{flag} is not set")),
                        }
                    }
                }
                "undefok" | "tab_completion_columns" | "tab_completion_word" => {
                    take_value(&mut value);
                }
                "help" | "h" => out.argv.push("--help".into()),
                "version" | "V" => out.argv.push("--version".into()),
                h if HELP.contains(&h) => {
                    take_value(&mut value);
                    out.argv.push("--help".into());
                }
                "logtostderr" | "alsologtostderr" => {
                    let on = parse_bool(value.as_deref().unwrap_or(""))
                        .ok_or_else(|| format!("--{name}: not a boolean"))?;
                    if name == "logtostderr" {
                        out.glog.logtostderr = on;
                    } else {
                        out.glog.alsologtostderr = on;
                    }
                }
                "stderrthreshold" | "minloglevel" | "max_log_size" | "log_dir" | "vmodule" => {
                    take_value(&mut value);
                    let v = value.unwrap_or_default();
                    let level = |v: &str| -> Result<u8, String> {
                        v.trim()
                            .parse::<u8>()
                            .map(|l| l.min(3))
                            .map_err(|_| format!("--{name}={v}: expected 0 to 3"))
                    };
                    match name.as_str() {
                        "stderrthreshold" => out.glog.stderrthreshold = level(&v)?,
                        "minloglevel" => out.glog.minloglevel = level(&v)?,
                        "max_log_size" => {
                            out.glog.max_log_size_mb = v
                                .trim()
                                .parse()
                                .map_err(|_| format!("--max_log_size={v}: expected MB"))?
                        }
                        "log_dir" => out.glog.log_dir = (!v.is_empty()).then(|| PathBuf::from(v)),
                        _ => out.glog.vmodule = v,
                    }
                }
                _ if ours_named(&name).is_some() => {
                    if boolean {
                        match value {
                            Some(v) => {
                                let b = parse_bool(&v)
                                    .ok_or_else(|| format!("--{name}={v}: not a boolean"))?;
                                out.argv.push(format!("--{name}={b}").into());
                            }
                            None => out.argv.push(format!("--{name}").into()),
                        }
                    } else {
                        take_value(&mut value);
                        match value {
                            Some(v) => out.argv.push(format!("--{name}={v}").into()),
                            None => out.argv.push(format!("--{name}").into()),
                        }
                    }
                }
                _ if upstream_named(&name).is_some() || GLOG_BOOLS.contains(&name.as_str()) => {
                    take_value(&mut value);
                    out.ignored.push(match value {
                        Some(v) => format!("--{name}={v}"),
                        None => format!("--{name}"),
                    });
                }
                _ => out.argv.push(raw),
            }
        }
    }
    Ok(out)
}

/// Reads upstream's `--config_path` file: a flat JSON object (`.json`) or flat
/// YAML mapping (`.yaml` / `.yml`) of flag names to values.
fn read_config_file(path: &Path) -> Result<Vec<(String, String)>, String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("--config_path={shown}: {e}"))?;
    let yaml = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    );
    if yaml {
        let mut out = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split(" #").next().unwrap_or("").trim_end();
            if line.trim().is_empty() || line.trim_start().starts_with('#') || line == "---" {
                continue;
            }
            let Some((key, value)) = line.split_once(':') else {
                return Err(format!(
                    "--config_path={shown}: line {}: expected `name: value`",
                    n + 1
                ));
            };
            if key.starts_with(char::is_whitespace) || value.trim().is_empty() {
                return Err(format!(
                    "--config_path={shown}: line {}: only flat `name: value` settings are supported",
                    n + 1
                ));
            }
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(value);
            out.push((key.trim().to_string(), value.to_string()));
        }
        return Ok(out);
    }
    let parsed: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("--config_path={shown}: {e}"))?;
    let serde_json::Value::Object(map) = parsed else {
        return Err(format!("--config_path={shown}: expected a JSON object"));
    };
    map.into_iter()
        .map(|(key, value)| {
            let value = match value {
                serde_json::Value::String(s) => s,
                serde_json::Value::Bool(b) => b.to_string(),
                serde_json::Value::Number(n) => n.to_string(),
                other => {
                    return Err(format!(
                        "--config_path={shown}: `{key}` is {other}; only strings, numbers and booleans are supported"
                    ));
                }
            };
            Ok((key, value))
        })
        .collect()
}

/// Parses upstream-style `argv` (program name first) into `P`: gflags spellings
/// normalized, logging set up as its glog flags ask (at `verbosity(&P)`), one
/// warning for each upstream flag that has no effect here. Exits like clap on a
/// flag neither side has, or on `--help`.
pub fn parse_command<P: clap::Parser>(
    argv: Vec<OsString>,
    upstream: &[UpstreamFlag],
    program: &str,
    verbosity: impl Fn(&P) -> u8,
    env: impl Fn(&str) -> Option<String>,
) -> Result<P, String> {
    let n = normalize(argv, &our_flags(&P::command()), upstream, env)?;
    let parsed = P::parse_from(n.argv);
    crate::logging::init_glog_logging(program, verbosity(&parsed), &n.glog);
    for flag in &n.ignored {
        tracing::warn!(
            "{flag}: an upstream flag with no effect in this build (accepted and ignored)"
        );
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours() -> Vec<OurFlag> {
        [
            ("rpc_port", false),
            ("enable_ha", true),
            ("v", false),
            ("cluster_token", false),
        ]
        .iter()
        .map(|(n, b)| OurFlag {
            name: n.to_string(),
            boolean: *b,
        })
        .collect()
    }

    fn run(args: &[&str]) -> Normalized {
        let mut argv = vec!["prog"];
        argv.extend(args);
        normalize(argv, &ours(), upstream::MASTER, |k| {
            (k == "FLAGS_rpc_port").then(|| "6000".to_string())
        })
        .unwrap()
    }

    fn strs(n: &Normalized) -> Vec<String> {
        n.argv
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn every_gflags_spelling_reaches_clap_as_one() {
        for form in [
            &["--rpc_port=5"][..],
            &["--rpc_port", "5"],
            &["-rpc_port=5"],
            &["-rpc_port", "5"],
        ] {
            assert_eq!(strs(&run(form)), ["prog", "--rpc_port=5"], "{form:?}");
        }
        assert_eq!(
            strs(&run(&["--noenable_ha"])),
            ["prog", "--enable_ha=false"]
        );
        assert_eq!(strs(&run(&["-enable_ha"])), ["prog", "--enable_ha"]);
        assert_eq!(
            strs(&run(&["--enable_ha=yes"])),
            ["prog", "--enable_ha=true"]
        );
        assert_eq!(strs(&run(&["-v=1"])), ["prog", "--v=1"]);
        assert_eq!(
            strs(&run(&["--fromenv=rpc_port"])),
            ["prog", "--rpc_port=6000"]
        );
        assert_eq!(strs(&run(&["--tryfromenv=enable_oplog"])), ["prog"]);
        assert_eq!(strs(&run(&["--helpfull"])), ["prog", "--help"]);
        assert_eq!(strs(&run(&["--help"])), ["prog", "--help"]);
        assert_eq!(strs(&run(&["-h"])), ["prog", "--help"]);
        assert_eq!(strs(&run(&["--version"])), ["prog", "--version"]);
        assert_eq!(
            strs(&run(&["--made_up=1"])),
            ["prog", "--made_up=1"],
            "clap refuses"
        );
    }

    #[test]
    fn config_path_settings_apply_unless_the_command_line_sets_them() {
        let dir = std::env::temp_dir().join(format!("gflags-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let json = dir.join("master.json");
        std::fs::write(
            &json,
            r#"{"rpc_port": 7000, "enable_ha": true, "cluster_id": "c9"}"#,
        )
        .unwrap();
        let path = json.to_str().unwrap();
        let n = run(&["--config_path", path, "--rpc_port=99"]);
        assert_eq!(strs(&n), ["prog", "--rpc_port=99", "--enable_ha=true"]);
        assert_eq!(n.ignored, ["--cluster_id=c9"]);
        // the command line wins wherever it stands relative to --config_path
        let n = run(&["--noenable_ha", &format!("--config_path={path}")]);
        assert_eq!(strs(&n), ["prog", "--enable_ha=false", "--rpc_port=7000"]);

        let yaml = dir.join("master.yaml");
        std::fs::write(&yaml, "# master\nrpc_port: 7100\nenable_ha: 'false'\n").unwrap();
        let n = run(&[&format!("--config_path={}", yaml.display())]);
        assert_eq!(strs(&n), ["prog", "--rpc_port=7100", "--enable_ha=false"]);

        for (name, text, why) in [
            (
                "bad.json",
                "{\"rpc_port\": [1]}",
                "only strings, numbers and booleans",
            ),
            ("list.json", "[1]", "expected a JSON object"),
            ("nested.yaml", "ha:\n  enable: true\n", "only flat"),
        ] {
            let file = dir.join(name);
            std::fs::write(&file, text).unwrap();
            let err = normalize(
                [
                    "prog".to_string(),
                    format!("--config_path={}", file.display()),
                ],
                &ours(),
                upstream::MASTER,
                |_| None,
            )
            .unwrap_err();
            assert!(err.contains(why), "{name}: {err}");
        }
        let err = normalize(
            ["prog", "--config_path=/nonexistent.json"],
            &ours(),
            upstream::MASTER,
            |_| None,
        )
        .unwrap_err();
        assert!(err.contains("/nonexistent.json"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn glog_flags_become_settings_and_upstream_only_flags_are_listed() {
        let n = run(&[
            "--logtostderr=true",
            "-logtostderr",
            "--log_dir",
            "/tmp/x",
            "--max_log_size=10",
            "--minloglevel=1",
            "--enable_oplog=true",
            "--cluster_id",
            "c1",
            "--nokv_events_emit_legacy_compat",
        ]);
        assert_eq!(strs(&n), ["prog"]);
        assert!(n.glog.logtostderr);
        assert_eq!(n.glog.log_dir, Some(PathBuf::from("/tmp/x")));
        assert_eq!((n.glog.max_log_size_mb, n.glog.minloglevel), (10, 1));
        assert_eq!(
            n.ignored,
            [
                "--enable_oplog=true",
                "--cluster_id=c1",
                "--kv_events_emit_legacy_compat=false"
            ]
        );
    }

    #[test]
    fn flag_files_are_read_in_place() {
        let path = std::env::temp_dir().join(format!("mc-flagfile-{}", std::process::id()));
        std::fs::write(&path, "# comment\n--rpc_port=7\n\n-enable_ha\n").unwrap();
        let n = run(&[&format!("--flagfile={}", path.display()), "--v=2"]);
        assert_eq!(strs(&n), ["prog", "--rpc_port=7", "--enable_ha", "--v=2"]);
        std::fs::remove_file(&path).unwrap();
        assert!(normalize(["p", "--flagfile=/nonexistent"], &ours(), &[], |_| None).is_err());
    }
}
