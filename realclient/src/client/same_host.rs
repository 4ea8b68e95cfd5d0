//! The real clients on this host, seen from one in an inference process: a
//! `setup()` that contributes no segment sends its calls to one of them, as a
//! dummy would, instead of moving every value to it from here (docs/PYTHON.md,
//! "In-process mode without a segment").

use std::net::{IpAddr, ToSocketAddrs, UdpSocket};
use std::path::PathBuf;

use super::*;

/// Whether `endpoint` (`host:port`) names an address of this host: loopback, or
/// an address a socket here can bind.
fn is_this_host(endpoint: &str) -> bool {
    let Ok(addrs) = endpoint.to_socket_addrs() else {
        return false;
    };
    addrs.map(|a| a.ip()).any(|ip: IpAddr| {
        ip.is_loopback() || (!ip.is_unspecified() && UdpSocket::bind((ip, 0)).is_ok())
    })
}

impl RealClient {
    /// Every segment the master has mounted.
    pub async fn all_segments(&self) -> MResult<Vec<SegmentDesc>> {
        self.master()?.get_all_segments().await
    }

    /// The Unix socket of a real client on this host (same network namespace,
    /// its socket reachable from here) whose memory segment this client's
    /// master has mounted; the owner of the largest such segment first.
    /// Blocking: call it off the client's runtime. `None` when there is none,
    /// or same-host transfers are off.
    pub fn same_host_real_client(&self, within: Duration) -> Option<(PathBuf, SegmentId)> {
        let deadline = Instant::now() + within;
        let segments = self
            .runtime
            .block_on(async { tokio::time::timeout(within, self.all_segments()).await })
            .ok()?
            .ok()?;
        let own = self.segment().map(|d| d.id);
        let mut candidates: Vec<SegmentDesc> = segments
            .into_iter()
            .filter(|d| d.medium == Medium::Memory && Some(d.id) != own)
            .filter(|d| is_this_host(&d.transport_endpoint))
            .collect();
        candidates.sort_by(|a, b| {
            b.size
                .cmp(&a.size)
                .then_with(|| a.transport_endpoint.cmp(&b.transport_endpoint))
        });
        // The transport's connections are tokio's.
        let _context = self.runtime.enter();
        candidates.into_iter().find_map(|d| {
            let socket = self
                .transport
                .local_socket(&d.transport_endpoint, deadline)?;
            Some((socket, d.id))
        })
    }
}

#[cfg(test)]
mod unit {
    #[test]
    fn loopback_and_own_addresses_are_this_host_and_others_are_not() {
        assert!(super::is_this_host("127.0.0.1:1"));
        assert!(super::is_this_host("localhost:1"));
        // TEST-NET-1 (RFC 5737): never assigned to a host.
        assert!(!super::is_this_host("192.0.2.1:1"));
        assert!(!super::is_this_host("not an endpoint"));
    }
}
