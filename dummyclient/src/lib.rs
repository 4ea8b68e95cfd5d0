//! The dummy client: the light, stateless client an inference process embeds. It
//! talks to the host's real client over its Unix socket and moves bytes through the
//! real client's segment, which it maps: a same-host put or get is one copy made in
//! the caller's own process, and bytes never cross a socket.
//!
//! The API is blocking (it owns a small runtime) so it can back the Python module
//! directly; every batch call returns one result per key.
//!
//! # Layout
//!
//! Everything is in this file: [`DummyClient`] and [`DummyError`].
//!
//! Not yet: replicas on other hosts (the TCP transfer engine), reconnecting after a
//! real-client restart, registered-buffer transfers by the real client.

use std::path::Path;
use std::time::{Duration, Instant};

use mooncake_ipc::IpcClient;
use mooncake_ipc::client::control_transport;
use mooncake_proto::realclient::{RealClientInfo, RealClientServiceClient};
use mooncake_proto::*;
use mooncake_shm::{Region, RegionOptions};
use tarpc::context;

/// Errors of connecting.
#[derive(Debug, thiserror::Error)]
pub enum DummyError {
    /// The real client could not be reached or refused us.
    #[error("cannot connect to the real client: {0}")]
    Connect(#[from] mooncake_ipc::IpcError),
    /// The runtime could not start.
    #[error("runtime: {0}")]
    Runtime(#[from] std::io::Error),
    /// The real client did not answer.
    #[error("real client did not answer: {0}")]
    Rpc(String),
}

impl DummyError {
    /// The upstream error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            DummyError::Connect(e) => e.code(),
            _ => ErrorCode::RpcFail,
        }
    }
}

fn rpc_code(e: &tarpc::client::RpcError) -> ErrorCode {
    match e {
        tarpc::client::RpcError::DeadlineExceeded => ErrorCode::RpcTimeout,
        _ => ErrorCode::RpcFail,
    }
}

/// One result per key from a batch call to the real client.
fn batch<T>(len: usize, call: Result<Vec<MResult<T>>, tarpc::client::RpcError>) -> Vec<MResult<T>> {
    per_key(len, call.map_err(|e| rpc_code(&e)))
}

fn ctx() -> context::Context {
    context::current()
}

/// A connection to the local real client.
pub struct DummyClient {
    runtime: tokio::runtime::Runtime,
    ipc: IpcClient,
    rpc: RealClientServiceClient,
    info: RealClientInfo,
    segment: Option<Region>,
}

impl DummyClient {
    /// Connects to the real client listening on `socket`.
    pub fn connect(socket: &Path, token: &str) -> Result<DummyClient, DummyError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let (ipc, rpc, info, segment) = runtime.block_on(async {
            let (ipc, control) = IpcClient::connect(socket, token).await?;
            let rpc = RealClientServiceClient::new(Default::default(), control_transport(control))
                .spawn();
            let info = rpc
                .info(ctx())
                .await
                .map_err(|e| DummyError::Rpc(e.to_string()))?;
            // Populate the page tables now so no copy pays first-touch faults.
            let options = RegionOptions::default().with_prefault(true);
            let segment = match &info.segment {
                Some(_) => Some(ipc.open(&info.segment_export, &options).await?),
                None => None,
            };
            Ok::<_, DummyError>((ipc, rpc, info, segment))
        })?;
        Ok(DummyClient {
            runtime,
            ipc,
            rpc,
            info,
            segment,
        })
    }

    /// The real client's segment name (upstream `get_hostname`).
    pub fn hostname(&self) -> &str {
        &self.info.hostname
    }

    /// The IPC session id.
    pub fn session(&self) -> u64 {
        self.ipc.session()
    }

    /// Whether the real client is up and connected to its master.
    pub fn health(&self) -> MResult<()> {
        self.runtime
            .block_on(self.rpc.ping(ctx()))
            .map_err(|e| rpc_code(&e))?
    }

    fn local_replica<'a>(&self, replicas: &'a [ReplicaDesc]) -> Option<&'a ReplicaDesc> {
        let local = self.info.segment.as_ref()?.id;
        replicas.iter().find(|r| r.segment_id == local)
    }

    /// Puts one object (a copy of `value`).
    pub fn put(&self, key: &str, value: &[u8], config: &ReplicateConfig) -> MResult<()> {
        self.batch_put(&[key.to_string()], &[value], config, false)
            .remove(0)
    }

    /// Puts objects; each value is copied into its replicas by this process.
    /// `upsert` replaces existing values; a plain put of an existing key succeeds and
    /// keeps the old value.
    pub fn batch_put(
        &self,
        keys: &[String],
        values: &[&[u8]],
        config: &ReplicateConfig,
        upsert: bool,
    ) -> Vec<MResult<()>> {
        if keys.len() != values.len() {
            return keys.iter().map(|_| Err(ErrorCode::InvalidParams)).collect();
        }
        let sizes: Vec<u64> = values.iter().map(|v| v.len() as u64).collect();
        let call = self
            .rpc
            .put_start(ctx(), keys.to_vec(), sizes, config.clone(), upsert);
        let started = batch(keys.len(), self.runtime.block_on(call));
        let mut results: Vec<MResult<()>> = Vec::with_capacity(keys.len());
        let (mut to_end, mut to_revoke) = (Vec::new(), Vec::new());
        for (i, r) in started.into_iter().enumerate() {
            match r {
                Err(ErrorCode::ObjectAlreadyExists) => results.push(Ok(())),
                Err(e) => results.push(Err(e)),
                Ok(replicas) => {
                    let written = self.write_replicas(&replicas, values[i]);
                    match written {
                        Ok(()) => to_end.push(i),
                        Err(e) => to_revoke.push((i, e)),
                    }
                    results.push(Ok(()));
                }
            }
        }
        if !to_end.is_empty() {
            let end_keys: Vec<String> = to_end.iter().map(|&i| keys[i].clone()).collect();
            let ends = batch(
                to_end.len(),
                self.runtime.block_on(self.rpc.put_end(ctx(), end_keys)),
            );
            for (&i, r) in to_end.iter().zip(ends) {
                results[i] = r;
            }
        }
        if !to_revoke.is_empty() {
            let revoke_keys: Vec<String> =
                to_revoke.iter().map(|(i, _)| keys[*i].clone()).collect();
            let _ = self
                .runtime
                .block_on(self.rpc.put_revoke(ctx(), revoke_keys));
            for (i, e) in to_revoke {
                results[i] = Err(e);
            }
        }
        results
    }

    fn write_replicas(&self, replicas: &[ReplicaDesc], value: &[u8]) -> MResult<()> {
        let segment = self.segment.as_ref().ok_or(ErrorCode::TransferFail)?;
        let local = self.info.segment.as_ref().map(|s| s.id);
        for r in replicas {
            if Some(r.segment_id) != local {
                // Replicas on other hosts need the transfer engine (not built yet).
                return Err(ErrorCode::TransferFail);
            }
            segment.write(r.offset, value).map_err(|e| e.code())?;
        }
        Ok(())
    }

    /// Reads a whole object.
    pub fn get(&self, key: &str) -> MResult<Vec<u8>> {
        let list = self
            .runtime
            .block_on(self.rpc.get_replicas(ctx(), vec![key.to_string()]))
            .map_err(|e| rpc_code(&e))?;
        let list = list.into_iter().next().ok_or(ErrorCode::RpcFail)??;
        let started = Instant::now();
        let mut out = vec![0u8; list.size as usize];
        self.read_replica(&list, &mut out)?;
        Self::check_lease(started, &list)?;
        Ok(out)
    }

    /// Reads objects into caller buffers; per key the object size, `INVALID_PARAMS` when
    /// the buffer is too small, `OBJECT_NOT_FOUND` when missing.
    pub fn batch_get_into(&self, keys: &[String], buffers: &mut [&mut [u8]]) -> Vec<MResult<u64>> {
        if keys.len() != buffers.len() {
            return keys.iter().map(|_| Err(ErrorCode::InvalidParams)).collect();
        }
        let started = Instant::now();
        let lists = batch(
            keys.len(),
            self.runtime
                .block_on(self.rpc.get_replicas(ctx(), keys.to_vec())),
        );
        lists
            .into_iter()
            .zip(buffers.iter_mut())
            .map(|(list, buf)| {
                let list = list?;
                if (buf.len() as u64) < list.size {
                    return Err(ErrorCode::InvalidParams);
                }
                self.read_replica(&list, &mut buf[..list.size as usize])?;
                Self::check_lease(started, &list)?;
                Ok(list.size)
            })
            .collect()
    }

    fn read_replica(&self, list: &ReplicaList, out: &mut [u8]) -> MResult<()> {
        let segment = self.segment.as_ref().ok_or(ErrorCode::TransferFail)?;
        let replica = self
            .local_replica(&list.replicas)
            .ok_or(ErrorCode::TransferFail)?;
        segment.read(replica.offset, out).map_err(|e| e.code())
    }

    fn check_lease(started: Instant, list: &ReplicaList) -> MResult<()> {
        // The bytes may have been reused if the lease ran out during the copy.
        if started.elapsed() > Duration::from_millis(list.lease_ttl_ms) {
            return Err(ErrorCode::LeaseExpired);
        }
        Ok(())
    }

    /// Whether each key exists.
    pub fn batch_is_exist(&self, keys: &[String]) -> Vec<MResult<bool>> {
        batch(
            keys.len(),
            self.runtime.block_on(self.rpc.exist(ctx(), keys.to_vec())),
        )
    }

    /// Whether a key exists.
    pub fn is_exist(&self, key: &str) -> MResult<bool> {
        self.batch_is_exist(&[key.to_string()]).remove(0)
    }

    /// Size of an object.
    pub fn get_size(&self, key: &str) -> MResult<u64> {
        self.runtime
            .block_on(self.rpc.get_size(ctx(), key.to_string()))
            .map_err(|e| rpc_code(&e))?
    }

    /// Removes objects.
    pub fn batch_remove(&self, keys: &[String], force: bool) -> Vec<MResult<()>> {
        batch(
            keys.len(),
            self.runtime
                .block_on(self.rpc.remove(ctx(), keys.to_vec(), force)),
        )
    }

    /// Removes one object.
    pub fn remove(&self, key: &str, force: bool) -> MResult<()> {
        self.batch_remove(&[key.to_string()], force).remove(0)
    }

    /// Removes objects whose key matches.
    pub fn remove_by_regex(&self, pattern: &str, force: bool) -> MResult<u64> {
        self.runtime
            .block_on(self.rpc.remove_by_regex(ctx(), pattern.to_string(), force))
            .map_err(|e| rpc_code(&e))?
    }

    /// Removes everything.
    pub fn remove_all(&self, force: bool) -> MResult<u64> {
        self.runtime
            .block_on(self.rpc.remove_all(ctx(), force))
            .map_err(|e| rpc_code(&e))?
    }
}
