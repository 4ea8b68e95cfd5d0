//! [`ClientMetrics`]: operation counts, latencies, bytes and dummy connections of a
//! real client, rendered in the Prometheus text format on `--http_port`.

use mooncake_daemon::prometheus::Exposition;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Operations the real client serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Op {
    PutStart,
    PutComplete,
    PutEnd,
    PutRevoke,
    GetInto,
    GetReplicas,
    Exist,
    GetSize,
    Remove,
    RemoveByRegex,
    RemoveAll,
    TransferRanges,
}

const OPS: [(Op, &str); 12] = [
    (Op::PutStart, "put_start"),
    (Op::PutComplete, "put_complete"),
    (Op::PutEnd, "put_end"),
    (Op::PutRevoke, "put_revoke"),
    (Op::GetInto, "get_into"),
    (Op::GetReplicas, "get_replicas"),
    (Op::Exist, "exist"),
    (Op::GetSize, "get_size"),
    (Op::Remove, "remove"),
    (Op::RemoveByRegex, "remove_by_regex"),
    (Op::RemoveAll, "remove_all"),
    (Op::TransferRanges, "transfer_ranges"),
];

/// Upper bounds of the latency buckets, in microseconds.
const BUCKETS_US: [u64; 10] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 50_000, 250_000,
];

#[derive(Default)]
struct OpStats {
    calls: AtomicU64,
    keys: AtomicU64,
    key_errors: AtomicU64,
    latency_us_sum: AtomicU64,
    buckets: [AtomicU64; BUCKETS_US.len() + 1],
}

/// Counters of one real client.
#[derive(Default)]
pub struct ClientMetrics {
    ops: [OpStats; OPS.len()],
    put_bytes: AtomicU64,
    get_bytes: AtomicU64,
    transfer_read_bytes: AtomicU64,
    transfer_write_bytes: AtomicU64,
    dummy_connections: AtomicI64,
    dummy_connections_total: AtomicU64,
    peer_mappings: AtomicI64,
    ring_requests: AtomicU64,
    placed_writes: AtomicU64,
}

/// A per-operation counter family: name, help, and the value of one operation.
type PerOpFamily = (&'static str, &'static str, fn(&OpStats) -> u64);

impl ClientMetrics {
    /// Records one call of `op` over `keys` keys, `errors` of which failed.
    pub fn record(&self, op: Op, elapsed: Duration, keys: usize, errors: usize) {
        let s = &self.ops[op as usize];
        s.calls.fetch_add(1, Relaxed);
        s.keys.fetch_add(keys as u64, Relaxed);
        s.key_errors.fetch_add(errors as u64, Relaxed);
        let us = elapsed.as_micros() as u64;
        s.latency_us_sum.fetch_add(us, Relaxed);
        let b = BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(BUCKETS_US.len());
        s.buckets[b].fetch_add(1, Relaxed);
    }

    /// Bytes of objects written / read through this client.
    pub fn add_object_bytes(&self, put: u64, get: u64) {
        self.put_bytes.fetch_add(put, Relaxed);
        self.get_bytes.fetch_add(get, Relaxed);
    }

    /// Bytes moved by the transfer engine (read from / written to peers).
    pub fn add_transfer_bytes(&self, read: u64, written: u64) {
        self.transfer_read_bytes.fetch_add(read, Relaxed);
        self.transfer_write_bytes.fetch_add(written, Relaxed);
    }

    /// Writes placed in granted space and committed in one round trip.
    pub fn add_placed_writes(&self, n: u64) {
        self.placed_writes.fetch_add(n, Relaxed);
    }

    /// Writes placed in granted space and committed so far.
    pub fn placed_writes(&self) -> u64 {
        self.placed_writes.load(Relaxed)
    }

    /// A dummy connected (`+1`) or left (`-1`).
    pub fn dummy_connected(&self, delta: i64) {
        self.dummy_connections.fetch_add(delta, Relaxed);
        if delta > 0 {
            self.dummy_connections_total.fetch_add(1, Relaxed);
        }
    }

    /// A connection turned out to be another real client on this host mapping
    /// the segment (`+1`), or such a one left (`-1`).
    pub fn peer_mapping(&self, delta: i64) {
        self.peer_mappings.fetch_add(delta, Relaxed);
    }

    /// Dummies connected now.
    pub fn dummies(&self) -> u64 {
        self.dummy_connections.load(Relaxed).max(0) as u64
    }

    /// A call arrived through a shared-memory call ring.
    pub fn ring_request(&self) {
        self.ring_requests.fetch_add(1, Relaxed);
    }

    /// Dummies connected now.
    pub fn dummy_connections(&self) -> i64 {
        self.dummy_connections.load(Relaxed)
    }

    /// Calls of `op` so far.
    pub fn calls(&self, op: Op) -> u64 {
        self.ops[op as usize].calls.load(Relaxed)
    }

    /// The Prometheus text exposition.
    pub fn render(&self, served: (u64, u64), same_host: (u64, u64)) -> String {
        let mut e = Exposition::new();
        let families: [PerOpFamily; 3] = [
            (
                "mooncake_client_requests_total",
                "Calls served, per operation.",
                |s| s.calls.load(Relaxed),
            ),
            (
                "mooncake_client_keys_total",
                "Keys handled, per operation.",
                |s| s.keys.load(Relaxed),
            ),
            (
                "mooncake_client_key_errors_total",
                "Keys that failed, per operation.",
                |s| s.key_errors.load(Relaxed),
            ),
        ];
        for (name, help, value) in families {
            e.family(name, "counter", help);
            for (op, label) in OPS {
                e.sample(name, &[("op", label)], value(&self.ops[op as usize]));
            }
        }
        let hist = "mooncake_client_request_latency_microseconds";
        e.family(hist, "histogram", "Call latency.");
        for (op, label) in OPS {
            let s = &self.ops[op as usize];
            e.histogram(
                hist,
                &[("op", label)],
                &BUCKETS_US,
                s.buckets.iter().map(|b| b.load(Relaxed)),
                s.latency_us_sum.load(Relaxed),
                s.calls.load(Relaxed),
            );
        }
        for (name, help, v) in [
            (
                "mooncake_client_put_bytes_total",
                "Bytes of objects written through this client.",
                self.put_bytes.load(Relaxed),
            ),
            (
                "mooncake_client_get_bytes_total",
                "Bytes of objects read through this client.",
                self.get_bytes.load(Relaxed),
            ),
            (
                "mooncake_client_transfer_read_bytes_total",
                "Bytes read from other hosts' segments.",
                self.transfer_read_bytes.load(Relaxed),
            ),
            (
                "mooncake_client_transfer_write_bytes_total",
                "Bytes written to other hosts' segments.",
                self.transfer_write_bytes.load(Relaxed),
            ),
            (
                "mooncake_client_same_host_read_bytes_total",
                "Of the bytes read from other real clients, those copied from their segments mapped here (same host).",
                same_host.0,
            ),
            (
                "mooncake_client_same_host_write_bytes_total",
                "Of the bytes written to other real clients, those copied into their segments mapped here (same host).",
                same_host.1,
            ),
            (
                "mooncake_client_served_read_bytes_total",
                "Bytes other hosts read from this segment.",
                served.0,
            ),
            (
                "mooncake_client_served_write_bytes_total",
                "Bytes other hosts wrote into this segment.",
                served.1,
            ),
            (
                "mooncake_client_placed_writes_total",
                "Writes placed in space the master granted this client ahead of time and committed in one round trip.",
                self.placed_writes.load(Relaxed),
            ),
            (
                "mooncake_client_ring_requests_total",
                "Calls that came through a dummy's shared-memory call ring.",
                self.ring_requests.load(Relaxed),
            ),
            (
                "mooncake_client_dummy_connections_total",
                "Dummy clients that ever connected.",
                self.dummy_connections_total.load(Relaxed),
            ),
            (
                "mooncake_client_shared_memory_faults_repaired_total",
                "Faults in shared memory a local process shrank, repaired by growing it back (bytes cut are lost).",
                mooncake_shm::guard::repaired_faults(),
            ),
        ] {
            e.counter(name, help, v);
        }
        e.gauge(
            "mooncake_client_dummy_connections",
            "Dummy clients connected now.",
            self.dummy_connections(),
        );
        e.gauge(
            "mooncake_client_peer_mappings",
            "Other real clients on this host that map this segment now (same-host transfers).",
            self.peer_mappings.load(Relaxed),
        );
        e.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_land_in_cumulative_buckets() {
        let m = ClientMetrics::default();
        m.record(Op::Exist, Duration::from_micros(40), 128, 0);
        m.record(Op::Exist, Duration::from_micros(700), 1, 1);
        let text = m.render((0, 0), (0, 0));
        assert!(text.contains("mooncake_client_requests_total{op=\"exist\"} 2"));
        assert!(text.contains("mooncake_client_keys_total{op=\"exist\"} 129"));
        assert!(text.contains("mooncake_client_key_errors_total{op=\"exist\"} 1"));
        assert!(text.contains(
            "mooncake_client_request_latency_microseconds_bucket{op=\"exist\",le=\"50\"} 1"
        ));
        assert!(text.contains(
            "mooncake_client_request_latency_microseconds_bucket{op=\"exist\",le=\"1000\"} 2"
        ));
        assert!(text.contains(
            "mooncake_client_request_latency_microseconds_bucket{op=\"exist\",le=\"+Inf\"} 2"
        ));
    }
}
