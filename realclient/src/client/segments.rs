//! Segments mounted after start (`mount_segment`, `allocate_and_mount_segment`) and their unmounting.

use super::*;

impl RealClient {
    /// The mapping of one of this client's segments.
    pub(super) fn local_region(&self, id: &SegmentId) -> Option<Arc<Region>> {
        if let Some((r, d)) = &self.segment
            && d.id == *id
        {
            return Some(r.clone());
        }
        if let Some(disk) = &self.disk
            && disk.desc.id == *id
        {
            return Some(disk.region.clone());
        }
        self.extra_segments
            .lock()
            .iter()
            .find(|e| e.desc.id == *id)
            .map(|e| e.region.clone())
    }

    /// Contributes `region` to the pool as one more segment of this client.
    pub(super) async fn mount_extra(
        &self,
        region: Region,
        protocol: Protocol,
        allocated: bool,
    ) -> MResult<SegmentId> {
        let server = self
            .transfer_server
            .clone()
            .ok_or(ErrorCode::InternalError)?;
        let region = Arc::new(region);
        let desc = SegmentDesc {
            id: Uuid::new_v4(),
            name: self.hostname(),
            host: self.config.host.clone(),
            base: region.as_ptr() as u64,
            size: region.len() as u64,
            transport_endpoint: format!("{}:{}", self.config.host, server.local_addr().port()),
            protocol,
            medium: Default::default(),
        };
        // Peers may write as soon as the master knows the segment.
        server.add_segment(desc.id, region.clone());
        let mounted = async {
            self.master()?
                .mount_segment(self.client_id, desc.clone())
                .await
        };
        if let Err(e) = mounted.await {
            server.remove_segment(&desc.id);
            return Err(e);
        }
        let id = desc.id;
        self.extra_segments.lock().push(ExtraSegment {
            region,
            desc,
            allocated,
        });
        tracing::info!(segment = %id, allocated, "segment mounted");
        Ok(id)
    }

    pub(super) fn check_protocol(protocol: &str) -> MResult<Protocol> {
        match protocol.parse::<Protocol>() {
            Ok(Protocol::Tcp) => Ok(Protocol::Tcp),
            _ => Err(ErrorCode::InvalidParams),
        }
    }

    /// Maps `size` bytes at `offset` of the shared-memory file `path` (tmpfs,
    /// hugetlbfs, `/dev/shm`) and contributes them as a segment. `caller` is the
    /// `(uid, gid)` of a dummy asking over the Unix socket: this daemon opens only
    /// files that caller could open for reading and writing itself, so it cannot
    /// be used to reach another user's memory (`None`: a caller that proved it
    /// holds this daemon's credential).
    pub async fn mount_file_segment(
        &self,
        path: String,
        size: u64,
        offset: u64,
        protocol: String,
        caller: Option<(u32, u32)>,
    ) -> MResult<Vec<SegmentId>> {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let protocol = Self::check_protocol(&protocol)?;
        if size == 0 {
            return Err(ErrorCode::InvalidParams);
        }
        let fd = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| {
                tracing::warn!("mount_segment: cannot open {path}: {e}");
                ErrorCode::InvalidParams
            })?;
        if let Some((uid, gid)) = caller {
            let meta = fd.metadata().map_err(|e| {
                tracing::warn!("mount_segment: cannot stat {path}: {e}");
                ErrorCode::InvalidParams
            })?;
            if !may_read_write(uid, gid, meta.uid(), meta.gid(), meta.mode()) {
                tracing::warn!(
                    uid,
                    "mount_segment: refused {path}: the caller may not read and write it"
                );
                return Err(ErrorCode::IllegalClient);
            }
        }
        let options = self.config.region.clone();
        let region = Region::from_fd(fd.into(), offset, size, &options).map_err(|e| {
            tracing::warn!("mount_segment: cannot map {path}: {e}");
            ErrorCode::InvalidParams
        })?;
        Ok(vec![self.mount_extra(region, protocol, false).await?])
    }

    /// Allocates `size` bytes (rounded up to whole pages) and contributes them as
    /// a segment: the ids and the size allocated.
    pub async fn allocate_and_mount_segment(
        &self,
        size: u64,
        protocol: String,
    ) -> MResult<(Vec<SegmentId>, u64)> {
        let protocol = Self::check_protocol(&protocol)?;
        const PAGE: u64 = 4096;
        let rounded = size
            .checked_next_multiple_of(PAGE)
            .filter(|&s| s > 0)
            .ok_or(ErrorCode::InvalidParams)?;
        let options = self.config.region.clone().with_prefault(true);
        let region =
            Region::anonymous("mooncake-extra-segment", rounded, &options).map_err(|e| {
                tracing::warn!("allocate_and_mount_segment({size}): {e}");
                ErrorCode::InvalidParams
            })?;
        let id = self.mount_extra(region, protocol, true).await?;
        Ok((vec![id], rounded))
    }

    /// Unmounts segments mounted with `mount_segment` (`allocated = false`) or
    /// `allocate_and_mount_segment` (`allocated = true`): their objects leave the
    /// pool and, for allocated ones, the memory is freed. With a grace period the
    /// segments are unmounted that long after the call, which returns at once.
    pub async fn unmount_extra_segments(
        self: &Arc<Self>,
        ids: Vec<SegmentId>,
        grace: Duration,
        allocated: bool,
    ) -> MResult<()> {
        {
            let extra = self.extra_segments.lock();
            for (i, id) in ids.iter().enumerate() {
                if ids[..i].contains(id) {
                    return Err(ErrorCode::InvalidParams);
                }
                match extra.iter().find(|e| e.desc.id == *id) {
                    None => return Err(ErrorCode::SegmentNotFound),
                    Some(e) if e.allocated != allocated => return Err(ErrorCode::InvalidParams),
                    Some(_) => {}
                }
            }
        }
        if grace.is_zero() {
            return self.unmount_now(&ids).await;
        }
        let me = self.clone();
        self.spawn_task(async move {
            tokio::select! {
                _ = tokio::time::sleep(grace) => {}
                _ = me.shutdown.cancelled() => {}
            }
            if let Err(e) = me.unmount_now(&ids).await {
                tracing::warn!("delayed unmount failed: {e}");
            }
        });
        Ok(())
    }

    pub(super) async fn unmount_now(&self, ids: &[SegmentId]) -> MResult<()> {
        let master = self.master()?;
        let mut result = Ok(());
        for id in ids {
            match master.unmount_segment(self.client_id, *id).await {
                Ok(()) | Err(ErrorCode::SegmentNotFound) => {}
                Err(e) => {
                    result = Err(e);
                    continue;
                }
            }
            if let Some(server) = &self.transfer_server {
                server.remove_segment(id);
            }
            self.extra_segments.lock().retain(|e| e.desc.id != *id);
            // Its objects left the pool with it.
            self.exist_index.lock().forget_segment(*id);
            tracing::info!(segment = %id, "segment unmounted");
        }
        result
    }
}

/// Whether a process of `uid`/`gid` may read and write a file owned by
/// `owner`/`group` with `mode`, going by the permission bits alone (supplementary
/// groups and ACLs are not consulted: when unsure, no).
pub(super) fn may_read_write(uid: u32, gid: u32, owner: u32, group: u32, mode: u32) -> bool {
    let rw = |shift: u32| (mode >> shift) & 0o6 == 0o6;
    if uid == 0 {
        true
    } else if uid == owner {
        rw(6)
    } else if gid == group {
        rw(3)
    } else {
        rw(0)
    }
}

#[cfg(test)]
mod permission_tests {
    use super::may_read_write;

    #[test]
    fn only_callers_the_mode_lets_in_may_mount_a_file() {
        assert!(may_read_write(1000, 1000, 1000, 1000, 0o600));
        assert!(
            !may_read_write(1000, 1000, 0, 0, 0o600),
            "root's private file"
        );
        assert!(
            !may_read_write(1000, 1000, 0, 0, 0o644),
            "readable is not writable"
        );
        assert!(may_read_write(1000, 50, 0, 50, 0o660));
        assert!(may_read_write(1000, 1000, 0, 0, 0o666));
        assert!(
            !may_read_write(1000, 1000, 1000, 1000, 0o066),
            "owner bits rule the owner"
        );
        assert!(may_read_write(0, 0, 1000, 1000, 0o600), "root may");
    }
}
