//! The disk tier (docs/DISK.md) with the real binaries: a real client with a small
//! segment and a disk tier eight times larger, a master with `--enable_offload`;
//! objects several times the memory come back from disk with the right bytes,
//! promote on repeated reads, survive kill -9 of everything, and a corrupted
//! block is a checksum error, never wrong bytes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mooncake_dummyclient::{DummyClient, HostMemAllocator, KeyRanges, ObjectRange};
use mooncake_integration::*;
use mooncake_proto::ErrorCode;

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("mc-disk-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const LEN: usize = 256 << 10;

fn metric(http: &str, name: &str) -> Option<f64> {
    let (_, body) = http_get(http, "/metrics").ok()?;
    body.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Where a real client's `/metrics` answers.
fn http_of(client: &Daemon) -> String {
    client
        .ready_field("http")
        .expect("http address")
        .replace("0.0.0.0", "127.0.0.1")
}

fn start_disk_client(paths: &Paths, master: &str, dir: &Path) -> Daemon {
    ClientBuilder::new(paths)
        .with_master(master)
        .with_size("16MB")
        .with_arg("--enable_offload=true")
        .with_arg(format!("--offload_dir={}", dir.display()))
        .with_arg("--offload_size=128MB")
        .start()
}

/// Master flags: copies to disk tiers, memory evicted at 80 %.
const OFFLOADING: &[&str] = &[
    "--enable_offload=true",
    "--eviction_high_watermark_ratio=0.8",
];
/// The same, and objects promoted back to memory on their second disk read.
const PROMOTING: &[&str] = &[
    "--enable_offload=true",
    "--promotion_on_hit=true",
    "--promotion_admission_threshold=2",
    "--eviction_high_watermark_ratio=0.8",
];

/// Where the replicas of `key` are, as `/query_key` says: `(memory, disk)`.
fn tiers_of(http: &str, key: &str) -> (usize, usize) {
    let Ok((200, body)) = http_get(http, &format!("/query_key?key={key}")) else {
        return (0, 0);
    };
    let disk = body.matches("LOCAL_DISK").count();
    let all = body.matches("segment_id").count();
    (all - disk, disk)
}

/// Puts 64 MiB (four times the segment) in rounds of 8 MiB, letting each
/// round's offload copies finish.
fn fill(dummy: &DummyClient, http: &str, prefix: &str) -> Vec<String> {
    fill_with(dummy, http, prefix, (8, 32), LEN)
}

/// Puts `rounds` rounds of `per_round` objects of `len` bytes, letting each
/// round's offload copies finish.
fn fill_with(
    dummy: &DummyClient,
    http: &str,
    prefix: &str,
    (rounds, per_round): (usize, usize),
    len: usize,
) -> Vec<String> {
    let mut keys = Vec::new();
    for round in 0..rounds {
        keys.extend(put_many(dummy, &format!("{prefix}{round}"), per_round, len));
        assert!(
            wait_until(Duration::from_secs(30), || metric(
                http,
                "master_offload_queue_depth"
            ) == Some(0.0)),
            "round {round}: offload copies did not finish"
        );
    }
    keys
}

#[test]
fn four_times_the_memory_comes_back_from_disk_and_promotes_on_hits() {
    // Bound whole: the daemons it holds live to the end of the test.
    let s = offloading("fill", PROMOTING);
    let (http, dummy) = (&s.http, &s.dummy);
    let keys = fill(dummy, http, "f");

    // Memory holds at most 16 MiB: most objects are only on disk now.
    let only_on_disk: Vec<&String> = keys
        .iter()
        .filter(|k| tiers_of(http, k) == (0, 1))
        .collect();
    assert!(
        only_on_disk.len() >= keys.len() / 2,
        "{} of {} objects only on disk",
        only_on_disk.len(),
        keys.len()
    );
    assert!(metric(http, "master_offloaded_evictions_total").unwrap_or(0.0) > 0.0);
    assert!(metric(http, "master_disk_allocated_bytes").unwrap_or(0.0) >= (32 << 20) as f64);
    // Every object reads back with its own bytes.
    assert_all_readable(dummy, &keys, LEN);

    // An object read again (its second read since it left memory) comes back
    // to memory, keeping its disk copy.
    let hot = only_on_disk[0].clone();
    let mut buf = vec![0u8; LEN];
    let got = dummy.batch_get_into_slices(std::slice::from_ref(&hot), &mut [buf.as_mut_slice()]);
    assert_eq!(got, vec![Ok(LEN as u64)]);
    assert!(
        wait_until(Duration::from_secs(10), || tiers_of(http, &hot) == (1, 1)),
        "{hot} was not promoted: {:?}",
        tiers_of(http, &hot)
    );
    assert_eq!(buf, value_for(&hot, LEN));
    assert_eq!(dummy.get(&hot).unwrap(), value_for(&hot, LEN));
}

/// Readers in three processes' worth of connections race on objects that are
/// only on disk while their hits promote them back to memory and a writer's new
/// objects evict the promoted copies again: every read has the object's own
/// bytes, and none fails (the disk copy is there throughout).
#[test]
fn racing_readers_promotions_and_evictions_never_see_wrong_bytes() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    // Bound whole: the daemons it holds live to the end of the test.
    let s = offloading("race", PROMOTING);
    let (http, dummy, paths) = (&s.http, &s.dummy, &s.paths);
    let keys = fill(dummy, http, "r");
    let on_disk: Vec<String> = keys
        .iter()
        .filter(|k| tiers_of(http, k).1 == 1)
        .cloned()
        .collect();
    assert!(on_disk.len() >= keys.len() / 2, "{} on disk", on_disk.len());
    let promotions_before = metric(http, "master_promotions_queued_total").unwrap_or(0.0);
    let stop = AtomicBool::new(false);
    let reads = AtomicU64::new(0);
    let written = AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..3usize {
            let (on_disk, stop, reads, socket) = (&on_disk, &stop, &reads, &paths.socket);
            s.spawn(move || {
                let reader = DummyClient::connect(socket, "").unwrap();
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    // A few hot keys (promoted) and a stream of cold ones.
                    let key = if i % 2 == 0 {
                        &on_disk[(i / 2) % 8]
                    } else {
                        &on_disk[(i * 7) % on_disk.len()]
                    };
                    let got = reader
                        .get(key)
                        .unwrap_or_else(|e| panic!("read {key}: {e}"));
                    assert!(got == value_for(key, LEN), "{key}: wrong bytes");
                    reads.fetch_add(1, Ordering::Relaxed);
                    i += 3;
                }
            });
        }
        let (stop, written, socket) = (&stop, &written, &paths.socket);
        s.spawn(move || {
            let writer = DummyClient::connect(socket, "").unwrap();
            // 32 MiB of new objects, twice the segment: promoted copies are
            // evicted again (their disk copies stay).
            for i in 0..128 {
                let key = format!("w-{i}");
                for _ in 0..50 {
                    match writer.put(&key, &value_for(&key, LEN), &Default::default()) {
                        Ok(()) => {
                            written.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        // Memory full of leased or not yet copied objects: retry.
                        Err(ErrorCode::NoAvailableHandle) => {
                            std::thread::sleep(Duration::from_millis(20))
                        }
                        Err(e) => panic!("put {key}: {e}"),
                    }
                }
            }
            stop.store(true, Ordering::Relaxed);
        });
    });
    assert!(reads.load(Ordering::Relaxed) >= 100, "{reads:?} reads");
    assert!(written.load(Ordering::Relaxed) >= 64, "{written:?} writes");
    assert!(
        metric(http, "master_promotions_queued_total").unwrap_or(0.0) > promotions_before,
        "no promotion happened while reading"
    );
    // Afterwards, every object still reads back with its own bytes.
    assert_all_readable(dummy, &on_disk, LEN);
}

#[test]
fn disk_objects_survive_kill_9_of_client_and_master() {
    let master_port = test_port();
    let http_port = test_port();
    let master_args = |port: u16| {
        vec![
            "--rpc_address=127.0.0.1".to_string(),
            format!("--rpc_port={port}"),
            "--metrics_host=127.0.0.1".into(),
            format!("--metrics_port={http_port}"),
            "--enable_offload=true".into(),
            "--eviction_high_watermark_ratio=0.8".into(),
        ]
    };
    let start = || {
        Daemon::spawn(
            &workspace_bin("mooncake_master"),
            &master_args(master_port),
            "Master service started on port",
        )
    };
    let rpc = format!("127.0.0.1:{master_port}");
    let http = format!("127.0.0.1:{http_port}");
    let mut master = start();
    let dir = TempDir::new("restart");
    let paths = Paths::new("disk-restart");
    let mut client = start_disk_client(&paths, &rpc, &dir.0);
    let dummy = DummyClient::connect(&paths.socket, "").unwrap();
    let keys = fill(&dummy, &http, "r");
    let on_disk: Vec<String> = keys
        .iter()
        .filter(|k| tiers_of(&http, k).1 == 1)
        .cloned()
        .collect();
    assert!(on_disk.len() >= keys.len() / 2);
    drop(dummy);

    client.kill9();
    master.kill9();
    let _master = start();
    let _client = start_disk_client(&paths, &rpc, &dir.0);
    let dummy = wait_readable(&paths.socket, &on_disk[0]);
    // Everything that was on disk reads back (from the disk tier, or from the
    // segment the restarted client re-attached).
    assert_all_readable(&dummy, &on_disk, LEN);
    assert!(
        on_disk.iter().all(|k| tiers_of(&http, k).1 == 1),
        "disk copies are known to the new master"
    );
}

/// Flips the byte `at` bytes into `key`'s disk copy, in the disk tier's file
/// under `dir`, underneath the store.
fn flip_disk_byte(master_http: &str, dir: &Path, key: &str, at: u64) {
    let (_, body) = http_get(master_http, &format!("/query_key?key={key}")).unwrap();
    let offset: u64 = body
        .split("\"offset\":")
        .nth(1)
        .and_then(|s| s.split([',', '}']).next())
        .and_then(|s| s.trim().parse().ok())
        .expect("offset in /query_key");
    let data = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "disk"))
        .expect("the disk tier's data file");
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&data)
        .unwrap();
    let mut byte = [0u8; 1];
    f.read_exact_at(&mut byte, offset + at).unwrap();
    f.write_all_at(&[byte[0] ^ 0xff], offset + at).unwrap();
}

/// A master copying to disk tiers, one real client with a disk tier, a dummy.
struct Offloading {
    _master: Daemon,
    /// The master's HTTP address.
    http: String,
    dir: TempDir,
    _client: Daemon,
    /// The real client's HTTP address.
    client_http: String,
    dummy: DummyClient,
    /// Removed (socket, segment) when dropped: kept as long as the client runs.
    paths: Paths,
}

fn offloading(tag: &str, master_flags: &[&str]) -> Offloading {
    let (master, rpc, http) = start_master_with_http(master_flags);
    let dir = TempDir::new(tag);
    let paths = Paths::new(&format!("disk-{tag}"));
    let client = start_disk_client(&paths, &rpc, &dir.0);
    let client_http = http_of(&client);
    let dummy = DummyClient::connect(&paths.socket, "").unwrap();
    Offloading {
        _master: master,
        http,
        dir,
        _client: client,
        client_http,
        dummy,
        paths,
    }
}

#[test]
fn a_corrupted_block_is_a_checksum_error_never_wrong_bytes() {
    // Bound whole: the daemons it holds live to the end of the test.
    let s = offloading("corrupt", OFFLOADING);
    let (http, dir, client_http, dummy) = (&s.http, &s.dir, &s.client_http, &s.dummy);
    let keys = fill(dummy, http, "c");
    let victim = keys
        .iter()
        .find(|k| tiers_of(http, k) == (0, 1))
        .expect("an object only on disk")
        .clone();
    // Flip one byte in the middle of the object, in the file, underneath.
    flip_disk_byte(http, &dir.0, &victim, LEN as u64 / 2);
    let mut buf = vec![0u8; LEN];
    let got = dummy.batch_get_into_slices(std::slice::from_ref(&victim), &mut [buf.as_mut_slice()]);
    assert_eq!(got, vec![Err(ErrorCode::ChecksumMismatch)]);
    assert!(
        dummy.get(&victim).is_err(),
        "no bytes for a corrupted object"
    );
    assert!(
        metric(client_http, "mooncake_client_disk_checksum_failures_total").unwrap_or(0.0) >= 1.0
    );
    // The others still read back whole.
    let others: Vec<String> = keys.iter().filter(|k| **k != victim).cloned().collect();
    assert_all_readable(dummy, &others, LEN);
    assert!(metric(client_http, "mooncake_client_disk_read_bytes_total").unwrap_or(0.0) > 0.0);
}

/// Dummies on the disk tier's host map its files and read objects there
/// themselves, checking every block (large ones on two threads): into
/// registered memory, plain slices and new bytes, with the right bytes, counted
/// in the real client's metrics, and a flipped byte anywhere is an error.
#[test]
fn a_dummy_reads_large_disk_objects_itself_checked() {
    const BIG: usize = 3 << 20;
    // Bound whole: the daemons it holds live to the end of the test.
    let s = offloading("big", OFFLOADING);
    let (http, dir, client_http, dummy) = (&s.http, &s.dir, &s.client_http, &s.dummy);
    let keys = fill_with(dummy, http, "big", (4, 4), BIG);
    let on_disk: Vec<String> = keys
        .iter()
        .filter(|k| tiers_of(http, k) == (0, 1))
        .cloned()
        .collect();
    assert!(on_disk.len() >= 4, "{} objects only on disk", on_disk.len());
    let read_before = metric(client_http, "mooncake_client_disk_read_bytes_total").unwrap_or(0.0);

    // Registered memory, in two registrations' worth of one buffer.
    let mem = HostMemAllocator::new();
    let addr = mem.alloc(BIG as u64).unwrap();
    dummy.register_buffer(addr, BIG as u64).unwrap();
    for key in &on_disk {
        // SAFETY: `addr` is a live allocation of `BIG` bytes from `mem`.
        unsafe { std::ptr::write_bytes(addr as *mut u8, 0, BIG) };
        assert_eq!(
            dummy.get_into(key, addr, BIG as u64),
            Ok(BIG as u64),
            "{key}"
        );
        // SAFETY: as above; the read has ended.
        let got = unsafe { std::slice::from_raw_parts(addr as *const u8, BIG) };
        assert!(got == value_for(key, BIG).as_slice(), "bytes of {key}");
    }
    // Plain slices and new bytes.
    assert_all_readable(dummy, &on_disk, BIG);
    assert_eq!(dummy.get(&on_disk[0]).unwrap(), value_for(&on_disk[0], BIG));
    let read = metric(client_http, "mooncake_client_disk_read_bytes_total").unwrap_or(0.0);
    assert!(
        read - read_before >= (2 * on_disk.len() * BIG) as f64,
        "reads made in the dummy count in the real client's metrics: {read_before} -> {read}"
    );

    // A flipped byte early (this thread's part) or late (the helper's part).
    let failures =
        || metric(client_http, "mooncake_client_disk_checksum_failures_total").unwrap_or(0.0);
    for (key, at) in [(&on_disk[1], 100u64), (&on_disk[2], BIG as u64 - 100)] {
        let before = failures();
        flip_disk_byte(http, &dir.0, key, at);
        assert_eq!(
            dummy.get_into(key, addr, BIG as u64),
            Err(ErrorCode::ChecksumMismatch),
            "{key} with byte {at} flipped"
        );
        assert!(dummy.get(key).is_err(), "no bytes for {key}");
        assert!(failures() >= before + 2.0, "failures counted");
    }
    // The rest still read back whole.
    assert_all_readable(dummy, &on_disk[3..], BIG);
    dummy.unregister_buffer(addr).unwrap();
}

#[test]
fn a_disk_tier_that_cannot_start_leaves_the_memory_tier_serving() {
    let (_master, rpc, http) = start_master_with_http(&["--enable_offload=true"]);
    // A directory nothing can be created in, and a size no disk here has.
    let full = TempDir::new("enospc");
    for (tag, dir, size) in [
        ("disk-ro", PathBuf::from("/proc/sys"), "64MB"),
        ("disk-enospc", full.0.clone(), "900TB"),
    ] {
        let paths = Paths::new(tag);
        let client = ClientBuilder::new(&paths)
            .with_master(&rpc)
            .with_size("16MB")
            .with_arg("--enable_offload=true")
            .with_arg(format!("--offload_dir={}", dir.display()))
            .with_arg(format!("--offload_size={size}"))
            .start();
        let client_http = http_of(&client);
        assert_eq!(
            metric(&client_http, "mooncake_client_disk_capacity_bytes"),
            None,
            "{tag}: no disk tier"
        );
        assert_eq!(metric(&http, "master_disk_capacity_bytes"), Some(0.0));
        let dummy = DummyClient::connect(&paths.socket, "").unwrap();
        let keys = put_many(&dummy, tag, 8, LEN);
        assert_all_readable(&dummy, &keys, LEN);
    }
    assert!(
        std::fs::read_dir(&full.0).unwrap().all(|e| {
            let e = e.unwrap();
            e.metadata().unwrap().len() < (1 << 30)
        }),
        "nothing large was left behind"
    );
}

#[test]
fn with_offload_on_evict_nothing_is_dropped_only_copied_first() {
    let (_master, rpc, http) = start_master_with_http(&[
        "--enable_offload=true",
        "--offload_on_evict=true",
        "--eviction_high_watermark_ratio=0.8",
    ]);
    let dir = TempDir::new("on-evict");
    let paths = Paths::new("disk-on-evict");
    let _client = start_disk_client(&paths, &rpc, &dir.0);
    let dummy = DummyClient::connect(&paths.socket, "").unwrap();
    // 48 MiB through a 16 MiB segment. While eviction waits for copies, a put
    // may find no room yet (NO_AVAILABLE_HANDLE): the writer retries.
    let keys: Vec<String> = (0..192).map(|i| format!("e-{i}")).collect();
    for k in &keys {
        let value = value_for(k, LEN);
        assert!(
            wait_until(Duration::from_secs(30), || {
                dummy.put(k, &value, &Default::default()).is_ok()
            }),
            "put {k}"
        );
    }
    // Copies are made at eviction, not at every write.
    let queued = metric(&http, "master_offload_queued_total").unwrap_or(0.0);
    assert!(
        queued > 0.0 && queued < keys.len() as f64,
        "{queued} copies"
    );
    assert_eq!(metric(&http, "master_evicted_key_count"), Some(0.0));
    assert_all_readable(&dummy, &keys, LEN);
}

#[test]
fn a_disk_file_deleted_under_a_stopped_client_is_a_miss_never_wrong_bytes() {
    let (_master, rpc, http) = start_master_with_http(&[
        "--enable_offload=true",
        "--eviction_high_watermark_ratio=0.8",
    ]);
    let dir = TempDir::new("deleted");
    let paths = Paths::new("disk-deleted");
    let mut client = start_disk_client(&paths, &rpc, &dir.0);
    let dummy = DummyClient::connect(&paths.socket, "").unwrap();
    let keys = fill(&dummy, &http, "x");
    drop(dummy);
    client.kill9();
    for e in std::fs::read_dir(&dir.0).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|e| e == "disk") {
            std::fs::remove_file(p).unwrap();
        }
    }
    let _client = start_disk_client(&paths, &rpc, &dir.0);
    let dummy = DummyClient::connect(&paths.socket, "").unwrap();
    // Objects still in the re-attached memory segment read back; the ones that
    // were only on disk are gone: a miss, never bytes of something else.
    let mut found = 0;
    for k in &keys {
        let mut buf = vec![0u8; LEN];
        let got = dummy.batch_get_into_slices(std::slice::from_ref(k), &mut [buf.as_mut_slice()]);
        match &got[0] {
            Ok(n) => {
                assert_eq!(*n, LEN as u64);
                assert!(buf == value_for(k, LEN), "wrong bytes for {k}");
                found += 1;
            }
            Err(e) => assert_ne!(*e, ErrorCode::InvalidParams, "{k}"),
        }
    }
    assert!(
        found > 0 && found < keys.len(),
        "{found} of {} read back",
        keys.len()
    );
    // The master serves the new, empty disk tier and forgot the old one.
    let (_, segments) = http_get(&http, "/get_all_segments").unwrap();
    assert_eq!(segments.matches("/disk").count(), 1, "{segments}");
    assert_eq!(
        metric(&http, "master_disk_capacity_bytes"),
        Some((128u64 << 20) as f64)
    );
}

#[test]
fn another_host_reads_disk_tier_objects_through_the_transfer_port_checked() {
    let (_master, rpc, http) = start_master_with_http(&[
        "--enable_offload=true",
        "--eviction_high_watermark_ratio=0.8",
    ]);
    let dir = TempDir::new("cross");
    let holder_paths = Paths::new("disk-holder");
    let holder = start_disk_client(&holder_paths, &rpc, &dir.0);
    let holder_http = http_of(&holder);
    let reader_paths = Paths::new("disk-reader");
    let _reader = ClientBuilder::new(&reader_paths)
        .with_master(&rpc)
        .with_size("16MB")
        .start();
    let writer = DummyClient::connect(&holder_paths.socket, "").unwrap();
    let config = mooncake_proto::ReplicateConfig {
        preferred_segments: vec![format!("127.0.0.1:{}", holder_paths.port)],
        ..Default::default()
    };
    let mut keys = Vec::new();
    for round in 0..6 {
        keys.extend(put_many_with(
            &writer,
            &format!("h{round}"),
            32,
            LEN,
            &config,
        ));
        assert!(wait_until(Duration::from_secs(30), || metric(
            &http,
            "master_offload_queue_depth"
        ) == Some(0.0)));
    }
    let only_on_disk: Vec<String> = keys
        .iter()
        .filter(|k| tiers_of(&http, k) == (0, 1))
        .cloned()
        .collect();
    assert!(
        only_on_disk.len() >= 16,
        "{} only on disk",
        only_on_disk.len()
    );
    // The other host reads them with their own bytes, from the holder's disk.
    let reader = DummyClient::connect(&reader_paths.socket, "").unwrap();
    assert_all_readable(&reader, &only_on_disk, LEN);
    assert_eq!(
        reader.get(&only_on_disk[0]).unwrap(),
        value_for(&only_on_disk[0], LEN)
    );
    // Ranges of a disk-only object, starting and ending inside blocks, come
    // back checked too.
    let key = &only_on_disk[1];
    let mem = HostMemAllocator::new();
    let addr = mem.alloc(LEN as u64).unwrap();
    reader.register_buffer(addr, LEN as u64).unwrap();
    let ranges = [(1000u64, 5000u64), (LEN as u64 - 100, 100), (8192, 4096)];
    let reads = [KeyRanges::new(
        key.clone(),
        ranges
            .iter()
            .scan(0u64, |at, &(offset, len)| {
                let r = ObjectRange {
                    addr: addr + *at,
                    offset,
                    len,
                };
                *at += len;
                Some(r)
            })
            .collect(),
    )];
    let total: u64 = ranges.iter().map(|r| r.1).sum();
    assert_eq!(reader.get_into_ranges(&reads), vec![Ok(total)]);
    let mut got = vec![0u8; total as usize];
    mem.read(addr, &mut got).unwrap();
    let value = value_for(key, LEN);
    let want: Vec<u8> = ranges
        .iter()
        .flat_map(|&(o, l)| value[o as usize..(o + l) as usize].to_vec())
        .collect();
    assert!(got == want, "ranged bytes of {key} differ");
    // The holder checked every block it served.
    let served = metric(&holder_http, "mooncake_client_disk_read_bytes_total").unwrap_or(0.0);
    assert!(served >= (only_on_disk.len() * LEN) as f64, "{served}");
}

#[test]
fn a_client_with_its_own_master_copies_to_its_disk_tier() {
    let dir = TempDir::new("embedded");
    let paths = Paths::new("disk-embedded");
    let _client = ClientBuilder::new(&paths)
        .with_size("16MB")
        .with_arg("--enable_offload=true")
        .with_arg(format!("--offload_dir={}", dir.0.display()))
        .with_arg("--offload_size=64MB")
        .start();
    let dummy = DummyClient::connect(&paths.socket, "").unwrap();
    let keys = put_many(&dummy, "m", 8, LEN);
    let media = |k: &String| -> Vec<mooncake_proto::Medium> {
        dummy.batch_get_replicas(std::slice::from_ref(k))[0]
            .as_ref()
            .map(|l| l.replicas.iter().map(|r| r.medium).collect())
            .unwrap_or_default()
    };
    assert!(
        wait_until(Duration::from_secs(10), || keys.iter().all(|k| media(k)
            == vec![
                mooncake_proto::Medium::Memory,
                mooncake_proto::Medium::Disk
            ])),
        "{:?}",
        media(&keys[0])
    );
}
