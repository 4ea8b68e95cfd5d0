//! Same-host copy throughput between two shared regions: `Region::copy_to` (which
//! splits large copies over a helper thread) against one-thread `ptr::copy`, 16 MiB.

use std::time::Instant;

use mooncake_shm::{Region, RegionOptions};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let size: u64 = 16 << 20;
    let slots = 16;
    let opts = RegionOptions::default().with_prefault(true);
    let a = Region::anonymous("bench-a", size * slots, &opts).unwrap();
    let b = Region::anonymous("bench-b", size * slots, &opts).unwrap();
    a.write(0, &vec![7u8; (size * slots) as usize]).unwrap();
    for round in 0..3 {
        let (mut one, mut two) = (Vec::new(), Vec::new());
        for i in 0..32u64 {
            let off = (i % slots) * size;
            let t = Instant::now();
            // SAFETY: both ranges lie inside live mappings of `size * slots` bytes.
            unsafe {
                std::ptr::copy(
                    a.as_ptr().add(off as usize),
                    b.as_ptr().add(off as usize),
                    size as usize,
                )
            };
            one.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            a.copy_to(off, &b, off, size).unwrap();
            two.push(t.elapsed().as_secs_f64());
        }
        let gbs = |s: f64| size as f64 / s / 1e9;
        println!(
            "round {round}: one thread {:.2} GB/s, copy_to {:.2} GB/s ({:.2}x)",
            gbs(median(one.clone())),
            gbs(median(two.clone())),
            median(one) / median(two)
        );
    }
}
