//! The tarpc service dummies call ([`RealClientService`]), one handler per connection.

use std::sync::Arc;

use tarpc::context::Context;

use mooncake_ipc::Session;
use mooncake_proto::realclient::{RealClientInfo, RealClientService};
use mooncake_proto::*;

use crate::client::RealClient;

/// Name under which the segment's fd is exported on the IPC socket.
pub const SEGMENT_EXPORT: &str = "segment";

/// Serves one dummy connection.
#[derive(Clone)]
pub struct Handler {
    client: Arc<RealClient>,
    /// The dummy's IPC session (registered buffers), when connected over the socket.
    #[allow(dead_code)]
    session: Option<Arc<Session>>,
}

impl Handler {
    /// A handler for one connection.
    pub fn new(client: Arc<RealClient>, session: Option<Arc<Session>>) -> Self {
        Handler { client, session }
    }
}

impl RealClientService for Handler {
    async fn service_ready(self, _: Context) -> String {
        VERSION.to_string()
    }

    async fn info(self, _: Context) -> RealClientInfo {
        RealClientInfo {
            client_id: self.client.client_id(),
            segment: self.client.segment().cloned(),
            segment_export: SEGMENT_EXPORT.to_string(),
            hostname: self.client.hostname(),
        }
    }

    async fn ping(self, _: Context) -> MResult<()> {
        if self.client.healthy() {
            Ok(())
        } else {
            Err(ErrorCode::RpcFail)
        }
    }

    async fn put_start(
        self,
        _: Context,
        keys: Vec<String>,
        sizes: Vec<u64>,
        config: ReplicateConfig,
        upsert: bool,
    ) -> Vec<MResult<Vec<ReplicaDesc>>> {
        self.client.put_start(keys, sizes, config, upsert).await
    }

    async fn put_end(self, _: Context, keys: Vec<String>) -> Vec<MResult<()>> {
        self.client.put_end(keys).await
    }

    async fn put_revoke(self, _: Context, keys: Vec<String>) -> Vec<MResult<()>> {
        self.client.put_revoke(keys).await
    }

    async fn get_replicas(self, _: Context, keys: Vec<String>) -> Vec<MResult<ReplicaList>> {
        self.client.get_replicas(keys).await
    }

    async fn exist(self, _: Context, keys: Vec<String>) -> Vec<MResult<bool>> {
        self.client.exist(keys).await
    }

    async fn get_size(self, _: Context, key: String) -> MResult<u64> {
        self.client.get_size(key).await
    }

    async fn remove(self, _: Context, keys: Vec<String>, force: bool) -> Vec<MResult<()>> {
        self.client.remove(keys, force).await
    }

    async fn remove_by_regex(self, _: Context, pattern: String, force: bool) -> MResult<u64> {
        self.client.remove_by_regex(pattern, force).await
    }

    async fn remove_all(self, _: Context, force: bool) -> MResult<u64> {
        self.client.remove_all(force).await
    }
}
