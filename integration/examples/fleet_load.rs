//! `fleet_load`: one engine-like dummy process of the simulated fleet
//! (`scripts/bench/fleet.sh`). Against its host's real client it runs a mixed,
//! paced workload over a key space shared by the whole fleet, so reads often cross
//! hosts: existence checks of 16 keys (the most frequent call, as a prefix lookup
//! is), puts of 4–64 KiB values, zero-copy reads into registered memory with every
//! byte checked, batch reads, removes. Prints one JSON line: per operation the count,
//! p50 and p99 in µs, plus errors and wrong reads (both must be 0).
//!
//! Usage: `fleet_load SOCKET SECONDS OPS_PER_SECOND KEYS`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use mooncake_dummyclient::{DummyClient, HostMemAllocator, Item};
use mooncake_integration::value_for;
use mooncake_proto::{ErrorCode, ReplicateConfig};

fn arg(i: usize, default: u64) -> u64 {
    std::env::args()
        .nth(i)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A small xorshift generator: the workload needs no crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The value size of a key: fixed per key, 4–64 KiB, so any reader can check it.
fn size_of(key: &str) -> usize {
    let h = key.bytes().fold(1469598103934665603u64, |h, b| {
        (h ^ b as u64).wrapping_mul(1099511628211)
    });
    4096 + (h % 15) as usize * 4096
}

fn percentile(v: &mut [u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let socket = PathBuf::from(std::env::args().nth(1).expect("SOCKET"));
    let seconds = arg(2, 60);
    let rate = arg(3, 50).max(1);
    let key_space = arg(4, 2000);
    let dummy = DummyClient::connect(&socket, "").expect("connect to the real client");
    let alloc = HostMemAllocator::new();
    let buf_len = 16 * 64 * 1024;
    let buf = alloc.alloc(buf_len).expect("buffer");
    dummy.register_buffer(buf, buf_len).expect("register");
    let config = ReplicateConfig::default();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ std::process::id() as u64);
    let key = |i: u64| format!("fleet-{i}");
    let names = ["exist16", "put", "get_into", "batch_get_into4", "remove"];
    let mut lat: Vec<Vec<u64>> = vec![Vec::new(); names.len()];
    let (mut errors, mut wrong, mut misses) = (0u64, 0u64, 0u64);
    let mut last_error = String::new();
    let started = Instant::now();
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let mut next = Instant::now();
    while started.elapsed() < Duration::from_secs(seconds) {
        let now = Instant::now();
        if now < next {
            std::thread::sleep(next - now);
        }
        next += period;
        let pick = rng.below(100);
        let t = Instant::now();
        let op = match pick {
            0..40 => {
                let keys: Vec<String> = (0..16).map(|_| key(rng.below(key_space))).collect();
                for r in dummy.batch_is_exist(&keys) {
                    if let Err(e) = r {
                        errors += 1;
                        last_error = format!("exist: {e}");
                    }
                }
                0
            }
            40..65 => {
                let k = key(rng.below(key_space));
                match dummy.put(&k, &value_for(&k, size_of(&k)), &config) {
                    Ok(()) | Err(ErrorCode::NoAvailableHandle) => {}
                    Err(e) => {
                        errors += 1;
                        last_error = format!("put: {e}");
                    }
                }
                1
            }
            65..90 => {
                let k = key(rng.below(key_space));
                match dummy.get_into(&k, buf, buf_len) {
                    Ok(n) => {
                        // SAFETY: `buf` is `buf_len` bytes of live memory this
                        // thread alone uses, and `n` bytes of it were just filled.
                        let got =
                            unsafe { std::slice::from_raw_parts(buf as *const u8, n as usize) };
                        if got != value_for(&k, size_of(&k)).as_slice() {
                            wrong += 1;
                        }
                    }
                    // Not there, or its put still in flight: a miss to the engine.
                    Err(ErrorCode::ObjectNotFound | ErrorCode::ReplicaIsNotReady) => misses += 1,
                    Err(e) => {
                        errors += 1;
                        last_error = format!("get: {e}");
                    }
                }
                2
            }
            90..95 => {
                let items: Vec<Item> = (0..4)
                    .map(|j| Item::new(key(rng.below(key_space)), buf + j * 65536 * 4, 65536 * 4))
                    .collect();
                for (it, r) in items.iter().zip(dummy.batch_get_into(&items)) {
                    match r {
                        Ok(n) => {
                            let at = it.buffers[0].addr;
                            // SAFETY: as above, within this item's part of `buf`.
                            let got =
                                unsafe { std::slice::from_raw_parts(at as *const u8, n as usize) };
                            if got != value_for(&it.key, size_of(&it.key)).as_slice() {
                                wrong += 1;
                            }
                        }
                        Err(ErrorCode::ObjectNotFound | ErrorCode::ReplicaIsNotReady) => {
                            misses += 1
                        }
                        Err(e) => {
                            errors += 1;
                            last_error = format!("batch get: {e}");
                        }
                    }
                }
                3
            }
            _ => {
                let k = key(rng.below(key_space));
                match dummy.remove(&k, false) {
                    Ok(())
                    | Err(ErrorCode::ObjectNotFound)
                    | Err(ErrorCode::ObjectHasLease)
                    | Err(ErrorCode::ReplicaIsNotReady) => {}
                    Err(e) => {
                        errors += 1;
                        last_error = format!("remove: {e}");
                    }
                }
                4
            }
        };
        lat[op].push(t.elapsed().as_micros() as u64);
    }
    let ops: Vec<String> = names
        .iter()
        .zip(lat.iter_mut())
        .map(|(n, v)| {
            format!(
                "\"{n}\": {{\"count\": {}, \"p50_us\": {}, \"p99_us\": {}}}",
                v.len(),
                percentile(v, 0.5),
                percentile(v, 0.99)
            )
        })
        .collect();
    println!(
        "{{\"pid\": {}, \"seconds\": {:.1}, \"ops\": {{{}}}, \"misses\": {misses}, \"errors\": {errors}, \"wrong\": {wrong}, \"last_error\": {:?}}}",
        std::process::id(),
        started.elapsed().as_secs_f64(),
        ops.join(", "),
        last_error
    );
}
