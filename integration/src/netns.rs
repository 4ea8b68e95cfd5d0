//! Two network namespaces joined by a veth pair: two "hosts" on one machine, whose
//! traffic crosses a real link instead of loopback. Needs root and `ip`.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Why namespaces cannot be used here, if they cannot.
pub fn skip_reason() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(str::to_string));
    if uid.as_deref() != Some("0") {
        return Some("not running as root (network namespaces need CAP_SYS_ADMIN)".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("the `ip` command (iproute2) is not installed".into());
    }
    None
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Namespaces `a` and `b`, addresses `ip_a` / `ip_b` on the veth link between them.
pub struct NetnsPair {
    /// First namespace.
    pub a: String,
    /// Second namespace.
    pub b: String,
    /// Address of `a` on the link.
    pub ip_a: String,
    /// Address of `b` on the link.
    pub ip_b: String,
}

impl NetnsPair {
    /// Creates both namespaces and the link (removed on drop).
    pub fn create() -> Result<NetnsPair, String> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}{n}", std::process::id() % 100_000);
        let subnet = format!("10.{}.{}", 200 + std::process::id() % 50, n % 250);
        let pair = NetnsPair {
            a: format!("mc-{tag}-a"),
            b: format!("mc-{tag}-b"),
            ip_a: format!("{subnet}.1"),
            ip_b: format!("{subnet}.2"),
        };
        let (va, vb) = (format!("mcv{tag}a"), format!("mcv{tag}b"));
        ip(&["netns", "add", &pair.a])?;
        ip(&["netns", "add", &pair.b])?;
        ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb])?;
        ip(&["link", "set", &va, "netns", &pair.a])?;
        ip(&["link", "set", &vb, "netns", &pair.b])?;
        for (ns, dev, addr) in [(&pair.a, &va, &pair.ip_a), (&pair.b, &vb, &pair.ip_b)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(pair)
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        // Deleting a namespace removes its end of the veth pair, and with it the other.
        let _ = ip(&["netns", "del", &self.a]);
        let _ = ip(&["netns", "del", &self.b]);
    }
}
