//! Checked reads from a page-cached disk file (the disk tier's path) against plain
//! copies of the same bytes, same run: `cargo run --release -p mooncake-shm
//! --example checked_read_bench [dir] [MiB per object]`.

use std::sync::Arc;
use std::time::Instant;

use mooncake_shm::blocksums::{BlockSums, Counters, sums_len};
use mooncake_shm::{Region, RegionOptions};

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| "/var/tmp".into());
    let object: u64 = args.next().map_or(1, |s| s.parse().expect("MiB")) << 20;
    let total: u64 = 512 << 20;
    let data_path = std::path::Path::new(&dir).join("checked-read-bench.disk");
    let sums_path = std::path::Path::new(&dir).join("checked-read-bench.sums");
    let data = Arc::new(Region::create_disk_file(&data_path, total).expect("data file"));
    let sums = Arc::new(Region::create_disk_file(&sums_path, sums_len(total)).expect("sums file"));
    let file =
        BlockSums::new(data.clone(), sums, Counters::create().expect("counters")).expect("sums");
    let chunk: Vec<u8> = (0..object).map(|i| (i * 131 % 251) as u8).collect();
    for at in (0..total).step_by(object as usize) {
        data.write(at, &chunk).expect("write");
        file.seal(at, object);
    }
    let dst = Region::anonymous("dst", object, &RegionOptions::default().with_prefault(true))
        .expect("dst");
    let objects = total / object;
    let round = |name: &str, f: &dyn Fn(u64) -> bool| {
        let mut per = Vec::new();
        for _ in 0..5 {
            let started = Instant::now();
            for k in 0..objects {
                assert!(f(k * object));
            }
            per.push(started.elapsed().as_secs_f64() / objects as f64);
        }
        per.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
        let t = per[2];
        println!(
            "{name:28} {:8.1} us  {:6.2} GB/s",
            t * 1e6,
            object as f64 / t / 1e9
        );
    };
    round("plain copy", &|at| {
        data.copy_to(at, &dst, 0, object).is_ok()
    });
    round("checked read", &|at| {
        file.read_checked(at, object, |pos, bytes| dst.write(pos, bytes).is_ok())
    });
    round("checked, no copy", &|at| {
        file.read_checked(at, object, |_, _| true)
    });
    round("bare crc then copy per block", &|at| {
        data.with_bytes(at, object, |b| {
            b.chunks(4096).enumerate().all(|(i, c)| {
                std::hint::black_box(crc32c::crc32c(c));
                dst.write(i as u64 * 4096, c).is_ok()
            })
        })
        .unwrap()
    });
    round("bare crc only", &|at| {
        data.with_bytes(at, object, |b| {
            b.chunks(4096)
                .all(|c| std::hint::black_box(crc32c::crc32c(c)) != 1)
        })
        .unwrap()
    });
    round("bare seeded crc only", &|at| {
        data.with_bytes(at, object, |b| {
            b.chunks(4096).enumerate().all(|(i, c)| {
                std::hint::black_box(crc32c::crc32c_append(
                    crc32c::crc32c(&(at + i as u64 * 4096).to_le_bytes()),
                    c,
                )) != 1
            })
        })
        .unwrap()
    });
    round("bare crc only 64k pieces", &|at| {
        (0..object).step_by(65536).all(|p| {
            data.with_bytes(at + p, 65536, |b| {
                b.chunks(4096)
                    .all(|c| std::hint::black_box(crc32c::crc32c(c)) != 1)
            })
            .unwrap()
        })
    });
    round("plain copy (again)", &|at| {
        data.copy_to(at, &dst, 0, object).is_ok()
    });
    round("checked read, same object", &|_| {
        file.read_checked(0, object, |pos, bytes| dst.write(pos, bytes).is_ok())
    });
    let _ = std::fs::remove_file(&data_path);
    let _ = std::fs::remove_file(&sums_path);
}
