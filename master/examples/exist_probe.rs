//! Probe: batch_exist_key latency by batch size against a running master.
use mooncake_proto::codec::connect_master;
use std::time::Instant;
#[tokio::main(flavor = "current_thread")]
async fn main() {
    let addr = std::env::args().nth(1).unwrap_or("127.0.0.1:59081".into());
    let c = connect_master(&addr, "").await.unwrap();
    for n in [1usize, 16, 128, 1024] {
        let keys: Vec<String> = (0..n).map(|i| format!("{:064x}_0_k{i}", i)).collect();
        let mut lat = Vec::new();
        for _ in 0..3000 {
            let k = keys.clone();
            let t = Instant::now();
            let _ = c
                .batch_exist_key(tarpc::context::current(), k)
                .await
                .unwrap();
            lat.push(t.elapsed().as_secs_f64() * 1e6);
        }
        lat.sort_by(f64::total_cmp);
        println!("n={n}: p50 {:.1} us", lat[lat.len() / 2]);
    }
}
