//! `mooncake`: the operator's command. It asks the master's admin HTTP port
//! (`status`, `health`, `keys`, `query`, `remove`, `drain`) and looks after this
//! host's segment files (`segments`). Every subcommand takes `--json` for scripts.
//!
//! The master is `--master HOST:PORT` or `MOONCAKE_MASTER` (its RPC address, as
//! the clients are given it; `etcd://h1:2379;h2:2379` finds an HA cluster's
//! leader, of `--cluster_id` / `MC_STORE_CLUSTER_ID`); the admin port on that host
//! is `--admin_port` (9003, the master's `--metrics_port` default). Changes (`remove`, `drain`)
//! present the credential: `--token` / `MOONCAKE_CLUSTER_TOKEN`, or on the
//! master's own host the host secret.

mod http;

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use serde_json::{Value, json};

use crate::segfiles;

const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Parser, Debug)]
#[command(
    name = "mooncake",
    version,
    about = "Look at and operate a mooncake-rs store: segments, keys, drains, segment files"
)]
struct Args {
    /// The master (`host:rpc_port`); the admin port on that host is asked.
    #[arg(
        long,
        env = "MOONCAKE_MASTER",
        default_value = "127.0.0.1:50051",
        global = true
    )]
    master: String,
    /// The master's admin HTTP port (its `--metrics_port`).
    #[arg(long = "admin_port", default_value_t = 9003, global = true)]
    admin_port: u16,
    /// With an `etcd://` master: the HA cluster.
    #[arg(
        long = "cluster_id",
        env = "MC_STORE_CLUSTER_ID",
        default_value = mooncake_daemon::ha::DEFAULT_CLUSTER_ID,
        global = true
    )]
    cluster_id: String,
    /// Credential for changes: the cluster token (default: the host secret).
    #[arg(
        long,
        env = "MOONCAKE_CLUSTER_TOKEN",
        default_value = "",
        hide_env_values = true,
        global = true
    )]
    token: String,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Segments with capacity and usage, clients, keys.
    Status,
    /// The master's health.
    Health,
    /// Every key (one per line).
    Keys {
        /// Print at most this many.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Where an object's replicas are.
    Query {
        /// The key.
        key: String,
    },
    /// Removes objects (`--force`: also leased or pinned ones).
    Remove {
        /// The keys.
        #[arg(required = true)]
        keys: Vec<String>,
        /// Remove even while read or hard-pinned.
        #[arg(long)]
        force: bool,
    },
    /// Moves every object off SEGMENT... and waits, with a progress bar.
    Drain {
        /// Segments to empty (names as `status` shows them).
        #[arg(required = true)]
        segments: Vec<String>,
        /// Segments to move to (default: wherever the master places them).
        #[arg(long = "to", num_args = 1..)]
        targets: Vec<String>,
        /// Moves at a time.
        #[arg(long = "max_concurrency", default_value_t = 4)]
        max_concurrency: u32,
        /// Start the job and print its id without waiting.
        #[arg(long = "no_wait")]
        no_wait: bool,
    },
    /// Segment files of real clients on this host, and whether their owner runs.
    Segments {
        /// Where the segment files are.
        #[arg(long, default_value = "/dev/shm")]
        dir: PathBuf,
        /// Remove the files no running real client holds.
        #[arg(long)]
        reclaim: bool,
    },
}

/// Runs `mooncake` with `argv` (program name first).
pub fn admin_main<I, T>(argv: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = match Args::try_parse_from(argv) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mooncake: {e:#}");
            ExitCode::FAILURE
        }
    }
}

struct Master {
    addr: String,
    token: String,
}

impl Master {
    fn of(args: &Args) -> anyhow::Result<Master> {
        use mooncake_daemon::ha::{self, MasterAddress};
        let rpc = match MasterAddress::parse(&args.master)? {
            MasterAddress::Direct(a) => a,
            MasterAddress::Etcd(endpoints) => {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let key = ha::master_view_key(&args.cluster_id);
                let (view, _) = runtime.block_on(async {
                    let mut client = ha::connect(&endpoints).await?;
                    ha::read_leader(&mut client, &key).await
                })?;
                view.ok_or_else(|| anyhow::anyhow!("no leader in etcd under {key}"))?
                    .address
            }
            MasterAddress::Unsupported(a) => {
                anyhow::bail!("{a}: upstream's redis:// and k8s:// backends are not built here")
            }
        };
        let host = match rpc.rsplit_once(':') {
            Some((h, _)) => h,
            None => rpc.as_str(),
        };
        let token = if args.token.is_empty() {
            mooncake_proto::auth::shared_host_secret().unwrap_or_default()
        } else {
            args.token.clone()
        };
        Ok(Master {
            addr: format!("{host}:{}", args.admin_port),
            token,
        })
    }

    fn get(&self, path: &str) -> anyhow::Result<http::Answer> {
        Ok(http::request(
            &self.addr,
            "GET",
            path,
            &self.token,
            b"",
            TIMEOUT,
        )?)
    }

    fn post(&self, path: &str, body: &Value) -> anyhow::Result<http::Answer> {
        let body = if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        Ok(http::request(
            &self.addr,
            "POST",
            path,
            &self.token,
            &body,
            TIMEOUT,
        )?)
    }

    fn json(&self, path: &str) -> anyhow::Result<Value> {
        let a = self.get(path)?;
        anyhow::ensure!(a.status == 200, "{path}: HTTP {} {}", a.status, a.text());
        Ok(a.json())
    }
}

fn run(args: &Args) -> anyhow::Result<ExitCode> {
    if let Command::Segments { dir, reclaim } = &args.command {
        // This host's files: no master needed.
        return segment_files(dir, *reclaim, args.json);
    }
    let master = Master::of(args)?;
    match &args.command {
        Command::Status => status(&master, args.json),
        Command::Health => {
            let h = master.json("/health")?;
            if args.json {
                println!("{h}");
            } else {
                println!(
                    "{}: {} ({}), {} segments, {} clients, {} keys",
                    master.addr, h["status"], h["role"], h["segments"], h["clients"], h["keys"]
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys { limit } => {
            let a = master.get("/get_all_keys")?;
            anyhow::ensure!(a.status == 200, "HTTP {}: {}", a.status, a.text());
            let text = a.text();
            let keys: Vec<&str> = text.lines().take(limit.unwrap_or(usize::MAX)).collect();
            if args.json {
                println!("{}", json!(keys));
            } else {
                for k in keys {
                    println!("{k}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Query { key } => {
            let a = master.get(&format!("/query_key?key={}", encode(key)))?;
            let v = a.json();
            if args.json {
                println!("{v}");
            } else if a.status == 200 {
                println!("{key}:");
                for r in v["data"].as_array().into_iter().flatten() {
                    println!(
                        "  {} bytes on {} ({}), {}",
                        r["size_"],
                        r["segment_name"].as_str().unwrap_or("?"),
                        r["transport_endpoint_"].as_str().unwrap_or("?"),
                        r["status"].as_str().unwrap_or("?")
                    );
                }
            } else {
                println!(
                    "{key}: {}",
                    v["error_message"].as_str().unwrap_or("not found")
                );
            }
            Ok(if a.status == 200 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Remove { keys, force } => {
            let list: Vec<String> = keys.iter().map(|k| encode(k)).collect();
            let a = master.post(
                &format!("/api/v1/remove?keys={}&force={force}", list.join(",")),
                &Value::Null,
            )?;
            anyhow::ensure!(a.status == 200, "HTTP {}: {}", a.status, a.text());
            let v = a.json();
            let mut failed = false;
            if args.json {
                println!("{v}");
            }
            for k in keys {
                let code = v["results"][k].as_i64().unwrap_or(-1);
                failed |= code != 0;
                if !args.json {
                    match code {
                        0 => println!("{k}: removed"),
                        c => println!("{k}: {} ({c})", error_name(c)),
                    }
                }
            }
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Drain {
            segments,
            targets,
            max_concurrency,
            no_wait,
        } => drain(
            &master,
            args.json,
            segments,
            targets,
            *max_concurrency,
            *no_wait,
        ),
        Command::Segments { .. } => unreachable!("answered above"),
    }
}

fn status(master: &Master, as_json: bool) -> anyhow::Result<ExitCode> {
    let health = master.json("/health")?;
    let detail = master.json("/get_segments_detail")?;
    if as_json {
        println!(
            "{}",
            json!({"health": health, "segments": detail["segments"]})
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "master {}: {} ({}), {} clients, {} keys",
        master.addr, health["status"], health["role"], health["clients"], health["keys"]
    );
    let mut rows = vec![vec![
        "SEGMENT".to_string(),
        "ENDPOINT".into(),
        "CAPACITY".into(),
        "USED".into(),
        "USE%".into(),
        "STATUS".into(),
    ]];
    for s in detail["segments"].as_array().into_iter().flatten() {
        let capacity = s["size_bytes"].as_u64().unwrap_or(0);
        let used = s["allocator_used_bytes"].as_u64().unwrap_or(0);
        rows.push(vec![
            s["segment_name"].as_str().unwrap_or("?").to_string(),
            s["te_endpoint"].as_str().unwrap_or("?").to_string(),
            human(capacity),
            human(used),
            format!(
                "{:.1}%",
                s["allocator_usage_percent"].as_f64().unwrap_or(0.0)
            ),
            s["status"].as_str().unwrap_or("?").to_string(),
        ]);
    }
    print_table(&rows);
    Ok(ExitCode::SUCCESS)
}

fn drain(
    master: &Master,
    as_json: bool,
    segments: &[String],
    targets: &[String],
    max_concurrency: u32,
    no_wait: bool,
) -> anyhow::Result<ExitCode> {
    let body = json!({
        "segments": segments,
        "target_segments": targets,
        "max_concurrency": max_concurrency,
    });
    let a = master.post("/api/v1/drain_jobs", &body)?;
    let v = a.json();
    anyhow::ensure!(
        a.status == 200 && v["success"] == true,
        "the master refused the drain: HTTP {} {}",
        a.status,
        a.text()
    );
    let id = v["job_id"].as_str().unwrap_or_default().to_string();
    if no_wait {
        if as_json {
            println!("{v}");
        } else {
            println!("drain job {id} started");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let tty = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut last_line = Instant::now() - Duration::from_secs(10);
    loop {
        let q = master.json(&format!("/api/v1/drain_jobs/query?job_id={id}"))?;
        let done =
            q["succeeded_units"].as_u64().unwrap_or(0) + q["failed_units"].as_u64().unwrap_or(0);
        let total = done
            + q["active_units"].as_u64().unwrap_or(0)
            + q["pending_units"].as_u64().unwrap_or(0);
        let status = q["status"].as_i64().unwrap_or(0);
        let finished = status >= 3;
        // A bar on a terminal; a line every 5 s (and at the end) otherwise.
        if tty || finished || last_line.elapsed() >= Duration::from_secs(5) {
            let line = progress_line(&q, done, total, started.elapsed());
            if tty {
                eprint!("\r{line}\x1b[K");
            } else {
                eprintln!("{line}");
            }
            let _ = std::io::stderr().flush();
            last_line = Instant::now();
        }
        if finished {
            if tty {
                eprintln!();
            }
            if as_json {
                println!("{q}");
            } else {
                println!(
                    "drain job {id}: {} ({})",
                    q["status_name"].as_str().unwrap_or("?"),
                    q["message"].as_str().unwrap_or("")
                );
            }
            return Ok(if status == 3 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn progress_line(q: &Value, done: u64, total: u64, elapsed: Duration) -> String {
    const WIDTH: usize = 30;
    let filled = if total == 0 {
        0
    } else {
        (done as usize * WIDTH / total as usize).min(WIDTH)
    };
    format!(
        "[{}{}] {done}/{total} objects, {} moved, {} failed, {} running, {:.0} s {}",
        "#".repeat(filled),
        " ".repeat(WIDTH - filled),
        human(q["migrated_bytes"].as_u64().unwrap_or(0)),
        q["failed_units"].as_u64().unwrap_or(0),
        q["active_units"].as_u64().unwrap_or(0),
        elapsed.as_secs_f64(),
        q["status_name"].as_str().unwrap_or(""),
    )
}

fn segment_files(dir: &std::path::Path, reclaim: bool, as_json: bool) -> anyhow::Result<ExitCode> {
    let files =
        segfiles::scan(dir).map_err(|e| anyhow::anyhow!("cannot list {}: {e}", dir.display()))?;
    let mut out = Vec::new();
    let mut rows = vec![vec![
        "SEGMENT FILE".to_string(),
        "SIZE".into(),
        "OBJECTS".into(),
        "AGE".into(),
        "OWNER".into(),
        "ACTION".into(),
    ]];
    let mut failed = false;
    for f in &files {
        let age = f.modified.and_then(|m| m.elapsed().ok());
        let action = if reclaim && !f.owner_alive {
            match segfiles::reclaim(f) {
                Ok(()) => "reclaimed".to_string(),
                Err(e) => {
                    failed = true;
                    format!("kept: {e}")
                }
            }
        } else {
            String::new()
        };
        out.push(json!({
            "path": f.path.display().to_string(),
            "size_bytes": f.size,
            "objects": f.objects,
            "age_seconds": age.map(|a| a.as_secs()),
            "owner_alive": f.owner_alive,
            "action": action,
        }));
        rows.push(vec![
            f.path.display().to_string(),
            human(f.size),
            f.objects.map_or("?".into(), |n| n.to_string()),
            age.map_or("?".into(), |a| format!("{} s", a.as_secs())),
            if f.owner_alive { "running" } else { "none" }.to_string(),
            action,
        ]);
    }
    if as_json {
        println!("{}", json!(out));
    } else {
        print_table(&rows);
        let stale: u64 = files
            .iter()
            .filter(|f| !f.owner_alive)
            .map(|f| f.size)
            .sum();
        if !reclaim && stale > 0 {
            println!(
                "{} in files no running real client holds; --reclaim removes them",
                human(stale)
            );
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn print_table(rows: &[Vec<String>]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(c, s)| format!("{s:<w$}", w = widths[c]))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn error_name(code: i64) -> &'static str {
    i32::try_from(code)
        .ok()
        .and_then(mooncake_proto::ErrorCode::from_i32)
        .map_or("UNKNOWN", |c| c.name())
}

/// Percent-encodes a query value.
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
