//! What every mooncake-rs daemon binary does the same way: glog-style verbosity
//! (`-v=1`, or `MOONCAKE_LOG` as a tracing filter) and shutdown on SIGTERM / Ctrl-C.

use tokio_util::sync::CancellationToken;

/// Logs to stderr at `info` (`-v=0`), `debug` (`-v=1`) or `trace` (`-v≥2`), unless
/// `MOONCAKE_LOG` gives a filter.
pub fn init_logging(verbosity: u8) {
    let level = match verbosity {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MOONCAKE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// A token cancelled on SIGTERM or Ctrl-C. Call inside a tokio runtime.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!("no SIGTERM handler ({e}); stopping on Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        tracing::info!("shutting down");
        cancel.cancel();
    });
    token
}
