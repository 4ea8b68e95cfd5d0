//! [`GuardedListener`]: a TCP listener within connection limits that backs off on
//! accept errors and rate-limits its warnings.

use std::sync::Arc;
use std::time::Duration;

use mooncake_proto::limits::{ConnectionLimiter, ConnectionPermit, LogGate, accept_backoff};

/// A TCP listener that admits connections within a [`ConnectionLimiter`], backs
/// off when `accept` fails, and logs refusals and failures through [`LogGate`]s.
pub struct GuardedListener {
    listener: tokio::net::TcpListener,
    limiter: ConnectionLimiter,
    what: &'static str,
    failures: u32,
    accept_errors: LogGate,
    refusals: LogGate,
}

impl GuardedListener {
    /// Guards `listener` (named `what` in logs) with `limiter`.
    pub fn new(
        listener: tokio::net::TcpListener,
        limiter: ConnectionLimiter,
        what: &'static str,
    ) -> Self {
        GuardedListener {
            listener,
            limiter,
            what,
            failures: 0,
            accept_errors: LogGate::new(Duration::from_secs(1)),
            refusals: LogGate::new(Duration::from_secs(1)),
        }
    }

    /// The next admitted connection, its peer and its place under the limits.
    pub async fn accept(
        &mut self,
    ) -> (
        tokio::net::TcpStream,
        std::net::SocketAddr,
        ConnectionPermit,
    ) {
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    self.failures = 0;
                    if let Some(permit) = self.limiter.admit(peer.ip()) {
                        return (stream, peer, permit);
                    }
                    self.refused(peer, "too many connections");
                }
                Err(e) => {
                    // Out of fds: sleep instead of spinning on the same error.
                    if let Some(held_back) = self.accept_errors.admit() {
                        tracing::warn!(error = %e, held_back, "{}: accept failed", self.what);
                    }
                    tokio::time::sleep(accept_backoff(self.failures)).await;
                    self.failures += 1;
                }
            }
        }
    }

    /// Logs (rate-limited) that `peer` was refused for `reason`.
    pub fn refused(&self, peer: std::net::SocketAddr, reason: impl std::fmt::Display) {
        if let Some(held_back) = self.refusals.admit() {
            tracing::warn!(%peer, held_back, "{}: connection refused: {reason}", self.what);
        }
    }

    /// A handle for logging refusals from the tasks serving connections.
    pub fn refusal_log(&self) -> RefusalLog {
        RefusalLog::new(self.what)
    }
}

/// Rate-limited refusal logging for connection tasks (handshake failures).
#[derive(Clone)]
pub struct RefusalLog {
    what: &'static str,
    gate: Arc<LogGate>,
}

impl RefusalLog {
    /// Refusals of the listener named `what`.
    pub fn new(what: &'static str) -> Self {
        RefusalLog {
            what,
            gate: Arc::new(LogGate::new(Duration::from_secs(1))),
        }
    }

    /// Logs (at most once a second) that `peer` was refused for `reason`.
    pub fn refused(&self, peer: std::net::SocketAddr, reason: impl std::fmt::Display) {
        if let Some(held_back) = self.gate.admit() {
            tracing::warn!(%peer, held_back, "{}: connection refused: {reason}", self.what);
        }
    }
}
