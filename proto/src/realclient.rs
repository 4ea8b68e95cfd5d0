//! The tarpc service a real client (`mooncake_client`) offers to dummy clients on its
//! Unix socket (and to tools on TCP `--host:--port`).
//!
//! Batch calls take one list of keys and return one result per key, in order. The
//! real client is the writer towards the master: dummies are stateless and may die at
//! any time without leaving writes attributed to them.

use crate::error::MResult;
use crate::types::*;
use serde::{Deserialize, Serialize};

/// What a dummy needs to know about its real client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RealClientInfo {
    /// The real client's id towards the master.
    pub client_id: ClientId,
    /// Its segment (none when it contributes no memory).
    pub segment: Option<SegmentDesc>,
    /// Name of the IPC export holding the segment's fd.
    pub segment_export: String,
    /// The hostname used as segment name (`get_hostname`).
    pub hostname: String,
}

/// The real client's RPC surface for dummies.
#[tarpc::service]
pub trait RealClientService {
    /// Connection probe; returns the version string.
    async fn service_ready() -> String;
    /// Identity, segment and export name.
    async fn info() -> RealClientInfo;
    /// `Ok` when the real client is connected to a master.
    async fn ping() -> MResult<()>;
    /// Starts writes (`upsert` replaces existing values). Existing keys give
    /// `OBJECT_ALREADY_EXISTS` for plain puts.
    async fn put_start(
        keys: Vec<String>,
        sizes: Vec<u64>,
        config: ReplicateConfig,
        upsert: bool,
    ) -> Vec<MResult<Vec<ReplicaDesc>>>;
    /// Ends writes whose bytes are in place.
    async fn put_end(keys: Vec<String>) -> Vec<MResult<()>>;
    /// Abandons writes.
    async fn put_revoke(keys: Vec<String>) -> Vec<MResult<()>>;
    /// Readable replicas, with a read lease.
    async fn get_replicas(keys: Vec<String>) -> Vec<MResult<ReplicaList>>;
    /// Existence.
    async fn exist(keys: Vec<String>) -> Vec<MResult<bool>>;
    /// Object size.
    async fn get_size(key: String) -> MResult<u64>;
    /// Removes objects.
    async fn remove(keys: Vec<String>, force: bool) -> Vec<MResult<()>>;
    /// Removes objects whose key matches; returns the count.
    async fn remove_by_regex(pattern: String, force: bool) -> MResult<u64>;
    /// Removes everything; returns the count.
    async fn remove_all(force: bool) -> MResult<u64>;
}
