//! Logging to stderr (and, with glog's `--log_dir`, to rotated files) and fatal
//! errors.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;

use tracing::Level;
use tracing_subscriber::fmt::writer::MakeWriterExt;

use crate::gflags::GlogSettings;

/// Prints a fatal error the way every daemon here does and turns it into an exit code.
pub fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {}", chain_text(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes, joined by ": ", leaving out a cause whose text the
/// message before it already ends with (errors that print their source).
pub fn chain_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if !text.ends_with(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
    }
    text
}

/// Logs to stderr (once per process; later calls keep the first setup) at `info`
/// (`-v=0`), `debug` (`-v=1`) or `trace` (`-v≥2`), unless `MOONCAKE_LOG` gives a filter.
pub fn init_logging(verbosity: u8) {
    init_glog_logging("mooncake", verbosity, &GlogSettings::default());
}

fn glog_level(level: u8) -> Level {
    match level {
        0 => Level::INFO,
        1 => Level::WARN,
        _ => Level::ERROR,
    }
}

/// Logging as upstream's glog flags ask: `-v` and `--minloglevel` (or
/// `MOONCAKE_LOG`, a tracing filter) set how much; with `--log_dir` (and not
/// `--logtostderr`) messages go to `<log_dir>/<program>.log`, rotated at
/// `--max_log_size` MB, and those at `--stderrthreshold` or above (all with
/// `--alsologtostderr`) also to stderr. Without `--log_dir` everything goes to
/// stderr, where containers and supervisors collect it.
pub fn init_glog_logging(program: &str, verbosity: u8, glog: &GlogSettings) {
    let level = if glog.minloglevel > 0 {
        match glog.minloglevel {
            1 => "warn",
            _ => "error",
        }
    } else {
        match verbosity {
            0 => "info",
            1 => "debug",
            _ => "trace",
        }
    };
    let mut directives = level.to_string();
    for module in glog.vmodule.split(',').filter(|m| !m.is_empty()) {
        if let Some((name, v)) = module.split_once('=') {
            let l = match v.trim() {
                "0" => "info",
                "1" => "debug",
                _ => "trace",
            };
            directives.push_str(&format!(",{}={l}", name.trim()));
        }
    }
    let env_filter = tracing_subscriber::EnvFilter::try_from_env("MOONCAKE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(directives));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let to_files = glog.log_dir.as_ref().filter(|_| !glog.logtostderr);
    match to_files.map(|dir| RotatingFile::open(dir, program, glog.max_log_size_mb)) {
        Some(Ok(file)) => {
            let stderr_level = if glog.alsologtostderr {
                Level::TRACE
            } else {
                glog_level(glog.stderrthreshold)
            };
            let writer = Mutex::new(file).and(std::io::stderr.with_max_level(stderr_level));
            tracing_subscriber::fmt()
                .with_env_filter(env_filter)
                .with_writer(writer)
                .with_ansi(false)
                .try_init()
                .ok();
        }
        other => {
            tracing_subscriber::fmt()
                .with_env_filter(env_filter)
                .with_writer(std::io::stderr)
                .with_ansi(ansi)
                .try_init()
                .ok();
            if let Some(Err(e)) = other {
                tracing::warn!("--log_dir: {e}; logging to stderr");
            }
        }
    }
}

/// A log file that starts over when it reaches its size limit (the previous one
/// is kept as `<name>.log.1`).
struct RotatingFile {
    path: PathBuf,
    file: std::fs::File,
    written: u64,
    limit: u64,
}

impl RotatingFile {
    fn open(dir: &Path, program: &str, limit_mb: u64) -> std::io::Result<RotatingFile> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{program}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        let written = file.metadata()?.len();
        Ok(RotatingFile {
            path,
            file,
            written,
            limit: limit_mb.max(1) << 20,
        })
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        std::fs::rename(&self.path, old)?;
        self.file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.written = 0;
        Ok(())
    }
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.written + buf.len() as u64 > self.limit && self.written > 0 {
            self.rotate()?;
        }
        let n = self.file.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_files_rotate_at_their_limit() {
        let dir = std::env::temp_dir().join(format!("mc-logs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut f = RotatingFile::open(&dir, "prog", 1).unwrap();
        let line = vec![b'x'; 300 << 10];
        for _ in 0..5 {
            f.write_all(&line).unwrap();
        }
        let current = std::fs::metadata(dir.join("prog.log")).unwrap().len();
        let previous = std::fs::metadata(dir.join("prog.log.1")).unwrap().len();
        assert!(
            current <= 1 << 20 && previous <= 1 << 20,
            "{current} {previous}"
        );
        assert_eq!(
            current + previous,
            5 * (300 << 10),
            "nothing lost but older files"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[cfg(test)]
mod chain_tests {
    use super::chain_text;

    #[derive(Debug, thiserror::Error)]
    #[error("outer: {source}")]
    struct Outer {
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn a_cause_the_message_already_shows_is_not_repeated() {
        let inner = std::io::Error::other("disk on fire");
        let e = anyhow::Error::new(Outer { source: inner }).context("starting");
        assert_eq!(chain_text(&e), "starting: outer: disk on fire");
    }
}
