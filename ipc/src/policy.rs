//! [`PeerPolicy`]: which local users may connect.

/// Credentials of a connected peer (from `SO_PEERCRED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerInfo {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Process id, when the kernel reports it.
    pub pid: Option<i32>,
}

/// A uid allow-list. The default admits the daemon's own uid and root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPolicy {
    allowed_uids: Vec<u32>,
}

impl Default for PeerPolicy {
    fn default() -> Self {
        let me = rustix::process::getuid().as_raw();
        let mut allowed_uids = vec![me];
        if me != 0 {
            allowed_uids.push(0);
        }
        PeerPolicy { allowed_uids }
    }
}

impl PeerPolicy {
    /// Admits exactly these uids.
    pub fn only(uids: impl IntoIterator<Item = u32>) -> Self {
        PeerPolicy {
            allowed_uids: uids.into_iter().collect(),
        }
    }

    /// Also admits `uid`.
    pub fn with_uid(mut self, uid: u32) -> Self {
        if !self.allowed_uids.contains(&uid) {
            self.allowed_uids.push(uid);
        }
        self
    }

    /// An error naming the peer when it is not admitted.
    pub fn check(&self, peer: &PeerInfo) -> Result<(), PeerRejected> {
        if self.allowed_uids.contains(&peer.uid) {
            Ok(())
        } else {
            Err(PeerRejected {
                uid: peer.uid,
                pid: peer.pid,
                allowed: self.allowed_uids.clone(),
            })
        }
    }
}

/// A peer whose uid is not in the allow-list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("peer uid {uid} (pid {pid:?}) is not in the allow-list {allowed:?}")]
pub struct PeerRejected {
    /// The peer's uid.
    pub uid: u32,
    /// The peer's pid, when the kernel gave it.
    pub pid: Option<i32>,
    /// The uids admitted.
    pub allowed: Vec<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_admits_self_and_root_only() {
        let me = rustix::process::getuid().as_raw();
        let p = PeerPolicy::default();
        assert!(
            p.check(&PeerInfo {
                uid: me,
                gid: 0,
                pid: None
            })
            .is_ok()
        );
        assert!(
            p.check(&PeerInfo {
                uid: 0,
                gid: 0,
                pid: None
            })
            .is_ok()
        );
        let stranger = if me == 4242 { 4243 } else { 4242 };
        let err = p
            .check(&PeerInfo {
                uid: stranger,
                gid: 0,
                pid: Some(7),
            })
            .unwrap_err();
        assert_eq!(err.uid, stranger);
        assert!(err.to_string().contains("not in the allow-list"));
        assert!(
            PeerPolicy::only([5])
                .with_uid(6)
                .check(&PeerInfo {
                    uid: 6,
                    gid: 0,
                    pid: None
                })
                .is_ok()
        );
    }
}
