//! Bounds every listener shares: how many connections a peer and everyone
//! together may hold, how fast a listener retries after `accept` fails (out of
//! fds), and how often a repeated warning may be logged.
//!
//! Pure bookkeeping, no I/O: `mooncake_daemon::GuardedListener` puts it together
//! for tokio TCP listeners; the blocking transfer port and the Unix socket use the
//! pieces on their own.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Connections one peer address may hold open on one listener.
pub const MAX_CONNECTIONS_PER_PEER: usize = 256;
/// Connections all peers together may hold open on one listener.
pub const MAX_CONNECTIONS: usize = 4096;

/// Counts open connections per peer address and in total.
#[derive(Clone)]
pub struct ConnectionLimiter {
    inner: Arc<Mutex<LimiterState>>,
    per_peer: usize,
    total: usize,
}

#[derive(Default)]
struct LimiterState {
    by_peer: HashMap<IpAddr, usize>,
    total: usize,
}

/// One admitted connection; dropping it gives its place back.
pub struct ConnectionPermit {
    limiter: ConnectionLimiter,
    peer: IpAddr,
}

impl Default for ConnectionLimiter {
    fn default() -> Self {
        ConnectionLimiter::new(MAX_CONNECTIONS_PER_PEER, MAX_CONNECTIONS)
    }
}

impl ConnectionLimiter {
    /// A limiter admitting `per_peer` connections per address, `total` in all.
    pub fn new(per_peer: usize, total: usize) -> Self {
        ConnectionLimiter {
            inner: Arc::new(Mutex::new(LimiterState::default())),
            per_peer: per_peer.max(1),
            total: total.max(1),
        }
    }

    /// A permit for a new connection from `peer`, or `None` when over a limit.
    pub fn admit(&self, peer: IpAddr) -> Option<ConnectionPermit> {
        let mut st = self.inner.lock();
        if st.total >= self.total {
            return None;
        }
        let n = st.by_peer.entry(peer).or_insert(0);
        if *n >= self.per_peer {
            return None;
        }
        *n += 1;
        st.total += 1;
        Some(ConnectionPermit {
            limiter: self.clone(),
            peer,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.inner.lock().total
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut st = self.limiter.inner.lock();
        st.total -= 1;
        if let Some(n) = st.by_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                st.by_peer.remove(&self.peer);
            }
        }
    }
}

/// Lets a repeated message through at most once per interval and counts the
/// ones held back, so a flood of refusals costs one log line a second.
pub struct LogGate {
    interval: Duration,
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl LogGate {
    /// A gate letting one message through per `interval`.
    pub const fn new(interval: Duration) -> Self {
        LogGate {
            interval,
            last: Mutex::new(None),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when this message may be logged, `n` being how many were held
    /// back since the last one; `None` when it must be dropped.
    pub fn admit(&self) -> Option<u64> {
        let now = Instant::now();
        let mut last = self.last.lock();
        match *last {
            Some(t) if now.duration_since(t) < self.interval => {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                None
            }
            _ => {
                *last = Some(now);
                Some(self.suppressed.swap(0, Ordering::Relaxed))
            }
        }
    }
}

/// Wait before retrying after the `failures`-th `accept` error in a row (out of
/// fds, out of memory): doubles from 10 ms up to 1 s, so a listener at the fd
/// limit sleeps instead of spinning.
pub fn accept_backoff(failures: u32) -> Duration {
    Duration::from_millis(10u64 << failures.min(7)).min(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_peer_and_in_total_and_gives_places_back() {
        let l = ConnectionLimiter::new(2, 3);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let p1 = l.admit(a).unwrap();
        let _p2 = l.admit(a).unwrap();
        assert!(l.admit(a).is_none(), "per-peer cap");
        let _p3 = l.admit(b).unwrap();
        assert!(l.admit(b).is_none(), "total cap");
        drop(p1);
        assert!(l.admit(a).is_some());
    }

    #[test]
    fn log_gate_counts_what_it_holds_back() {
        let g = LogGate::new(Duration::from_secs(3600));
        assert_eq!(g.admit(), Some(0));
        for _ in 0..5 {
            assert_eq!(g.admit(), None);
        }
        let g = LogGate::new(Duration::ZERO);
        assert_eq!(g.admit(), Some(0));
    }

    #[test]
    fn accept_backoff_grows_and_is_capped() {
        assert_eq!(accept_backoff(0), Duration::from_millis(10));
        assert!(accept_backoff(3) > accept_backoff(2));
        assert_eq!(accept_backoff(40), Duration::from_secs(1));
    }
}
