//! Two hosts in separate network namespaces joined by a veth pair: the master and
//! real client A in one, real client B in the other. Transfers between A and B
//! cross the veth link (not loopback). Needs root; skipped with the reason otherwise.
//! The dummies run in this process: Unix sockets on the filesystem are reachable
//! from any network namespace.

use mooncake_dummyclient::HostMemAllocator;
use mooncake_integration::netns::{NetnsPair, skip_reason};
use mooncake_integration::*;
use mooncake_proto::ReplicateConfig;

#[test]
fn cross_host_transfer_over_a_veth_link() {
    if let Some(reason) = skip_reason() {
        println!("SKIPPED cross_host_transfer_over_a_veth_link: {reason}");
        return;
    }
    let net = match NetnsPair::create() {
        Ok(n) => n,
        Err(e) => {
            println!("SKIPPED cross_host_transfer_over_a_veth_link: cannot create namespaces: {e}");
            return;
        }
    };
    let (_master, master_addr) = start_master_on(Some(&net.a), &net.ip_a, 0);
    let (pa, pb) = (Paths::new("nsa"), Paths::new("nsb"));
    let _a = ClientBuilder::new(&pa)
        .with_master(&master_addr)
        .with_host(&net.ip_a)
        .in_netns(&net.a)
        .start();
    let _b = ClientBuilder::new(&pb)
        .with_master(&master_addr)
        .with_host(&net.ip_b)
        .in_netns(&net.b)
        .start();
    let a = wait_dummy(&pa);
    let b = wait_dummy(&pb);

    // Written on A (its own segment), read on B over the link.
    let keys = put_many(&a, "veth", 16, 1 << 20);
    let list = b.batch_get_replicas(&keys[..1]).remove(0).unwrap();
    assert!(
        list.replicas[0]
            .transport_endpoint
            .starts_with(&format!("{}:", net.ip_a)),
        "A's transfer port is advertised on its link address: {:?}",
        list.replicas[0]
    );
    assert_all_readable(&b, &keys, 1 << 20);

    // 16 MiB from B's registered memory into A's segment, read back on B.
    let mem = HostMemAllocator::new();
    let len = 16u64 << 20;
    let src = mem.alloc(len).unwrap();
    let dst = mem.alloc(len).unwrap();
    b.register_buffer(src, len).unwrap();
    b.register_buffer(dst, len).unwrap();
    mem.write(src, &value_for("big", len as usize)).unwrap();
    let on_a = ReplicateConfig::default().with_preferred_segments(vec![a.hostname()]);
    b.put_from("big", src, len, &on_a).unwrap();
    let list = a.batch_get_replicas(&["big".into()]).remove(0).unwrap();
    assert_eq!(list.replicas[0].segment_name, a.hostname());
    assert_eq!(b.get_into("big", dst, len), Ok(len));
    let mut back = vec![0u8; len as usize];
    mem.read(dst, &mut back).unwrap();
    assert!(back == value_for("big", len as usize));
    // And A reads it locally from its own segment.
    assert!(a.get("big").unwrap() == value_for("big", len as usize));
}

fn wait_dummy(p: &Paths) -> mooncake_dummyclient::DummyClient {
    let mut d = None;
    assert!(wait_until(std::time::Duration::from_secs(20), || {
        d = mooncake_dummyclient::DummyClient::connect(&p.socket, "")
            .ok()
            .filter(|d| d.health() == Ok(()));
        d.is_some()
    }));
    d.unwrap()
}
