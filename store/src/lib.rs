//! `mooncake_store` for Rust: the names and shapes of upstream's Rust crate of the
//! same name (`MooncakeStore::new`, `setup`, `put`, `get`, `get_into`, `is_exist`,
//! `remove`, the batch forms, `Result<_, StoreError>`), so a Rust user of upstream
//! finds what they know, over this project's clients.
//!
//! Two ways to be set up, as in Python:
//! - [`MooncakeStore::setup`] (upstream's arguments) runs a real client inside this
//!   process: it contributes `global_segment_size` bytes to the pool and talks to
//!   the master at `master_server_addr`;
//! - [`MooncakeStore::setup_dummy`] connects to the host's `mooncake_client` over
//!   its Unix socket and moves bytes through its shared segment.
//!
//! ```no_run
//! use mooncake_store::{MooncakeStore, ReplicateConfig};
//!
//! let store = MooncakeStore::new()?;
//! store.setup("localhost", "P2PHANDSHAKE", 512 << 20, 128 << 20, "tcp", "", "127.0.0.1:50051")?;
//! store.put("hello", b"world", None)?;
//! assert_eq!(store.get("hello")?, b"world");
//! store.remove("hello", false)?;
//! # Ok::<(), mooncake_store::StoreError>(())
//! ```
//!
//! # Layout
//!
//! - this file: [`MooncakeStore`] and [`StoreError`];
//! - [`setup`]: upstream's `setup` arguments and the real client they configure
//!   (shared with the Python package);
//! - [`inprocess`]: the clients of a `setup()` store (this process's real client,
//!   and a real client on this host when this process has no segment).

pub mod inprocess;
pub mod setup;

use std::ffi::c_void;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;

use mooncake_dummyclient::{ConnectOptions, DummyClient};
use mooncake_proto::ErrorCode;
use mooncake_realclient::background::BackgroundClient;

use inprocess::Clients;

pub use inprocess::HostRoute;
pub use mooncake_proto::{ReplicateConfig, SoftPinAction};
pub use setup::SetupArgs;

/// How long `setup` waits for the master.
const MASTER_WAIT: Duration = Duration::from_secs(5);

/// Errors of [`MooncakeStore`], as upstream's crate names them.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store is not set up (or was closed).
    #[error("the store is not set up")]
    NullHandle,
    /// The store answered with one of upstream's error codes.
    #[error("store operation failed with code {0}: {name}", name = code_name(*.0))]
    OperationFailed(i32),
    /// The key does not exist.
    #[error("key not found")]
    NotFound,
    /// An argument is invalid (mismatched batch lengths, a setting this build
    /// cannot honour, a second `setup`).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

fn code_name(code: i32) -> &'static str {
    ErrorCode::from_i32(code).map_or("unknown", |c| c.name())
}

impl StoreError {
    /// Upstream's numeric code of this error.
    pub fn code(&self) -> i32 {
        match self {
            StoreError::NullHandle => ErrorCode::UnavailableInCurrentStatus.as_i32(),
            StoreError::OperationFailed(c) => *c,
            StoreError::NotFound => ErrorCode::ObjectNotFound.as_i32(),
            StoreError::InvalidArgument(_) => ErrorCode::InvalidParams.as_i32(),
        }
    }
}

impl From<ErrorCode> for StoreError {
    fn from(code: ErrorCode) -> Self {
        match code {
            ErrorCode::ObjectNotFound => StoreError::NotFound,
            other => StoreError::OperationFailed(other.as_i32()),
        }
    }
}

struct Connected {
    clients: Clients,
    /// The in-process real client, for `setup`; dropped (stopped) after the clients.
    _background: Option<BackgroundClient>,
}

/// A handle to the store. Cheap to share between threads (`&self` everywhere).
#[derive(Default)]
pub struct MooncakeStore {
    state: RwLock<Option<Arc<Connected>>>,
    cluster_token: String,
    host_route: HostRoute,
}

impl MooncakeStore {
    /// A store handle, not set up yet.
    pub fn new() -> Result<Self, StoreError> {
        Ok(MooncakeStore::default())
    }

    /// Presents `token` to the master, the real client and peers (upstream's
    /// `MOONCAKE_CLUSTER_TOKEN`); without one, processes on this host use the host
    /// secret.
    pub fn with_cluster_token(mut self, token: impl Into<String>) -> Self {
        self.cluster_token = token.into();
        self
    }

    /// Whether a `setup` with no segment sends its calls to a real client on
    /// this host (default [`HostRoute::Auto`]; Python reads
    /// `MC_HOST_REAL_CLIENT`): see [`inprocess`].
    pub fn with_host_route(mut self, route: HostRoute) -> Self {
        self.host_route = route;
        self
    }

    fn connected(&self) -> Result<Arc<Connected>, StoreError> {
        self.state.read().clone().ok_or(StoreError::NullHandle)
    }

    fn install(&self, connected: Connected) -> Result<(), StoreError> {
        let mut state = self.state.write();
        if state.is_some() {
            return Err(StoreError::InvalidArgument(
                "already set up; close() it first".into(),
            ));
        }
        *state = Some(Arc::new(connected));
        Ok(())
    }

    /// Upstream's `setup`: runs a real client in this process that contributes
    /// `global_segment_size` bytes (0: none) and talks to the master at
    /// `master_server_addr`. `metadata_server` and `device_name` are accepted
    /// (this implementation needs neither); `protocol` must be `tcp`.
    #[allow(clippy::too_many_arguments)]
    pub fn setup(
        &self,
        local_hostname: &str,
        metadata_server: &str,
        global_segment_size: u64,
        local_buffer_size: u64,
        protocol: &str,
        device_name: &str,
        master_server_addr: &str,
    ) -> Result<(), StoreError> {
        let args = SetupArgs::new(
            local_hostname,
            metadata_server,
            global_segment_size,
            local_buffer_size,
            protocol,
            device_name,
            master_server_addr,
        );
        self.setup_with(&args)
    }

    /// [`setup`](Self::setup) with every setting upstream's `setup` takes.
    pub fn setup_with(&self, args: &SetupArgs) -> Result<(), StoreError> {
        if self.state.read().is_some() {
            return Err(StoreError::InvalidArgument(
                "already set up; close() it first".into(),
            ));
        }
        let mut config = args
            .client_config()
            .map_err(|e| StoreError::InvalidArgument(e.to_string()))?;
        config.cluster_token = self.cluster_token.clone();
        let background = BackgroundClient::start(config, 2, MASTER_WAIT).map_err(|e| {
            tracing::error!("setup failed: {e:#}");
            StoreError::OperationFailed(ErrorCode::InternalError.as_i32())
        })?;
        let options = ConnectOptions::default().with_staging_budget(Some(args.local_buffer_size));
        // SAFETY: the real client was just started in this process. Memory reaches
        // it only through `register_buffer`, whose own contract (an `unsafe fn`)
        // makes the caller vouch for it.
        let clients = unsafe {
            Clients::connect(
                &background,
                &self.cluster_token,
                options,
                args.global_segment_size == 0,
                self.host_route.clone(),
            )
        }
        .map_err(|e| StoreError::OperationFailed(e.code().as_i32()))?;
        self.install(Connected {
            clients,
            _background: Some(background),
        })
    }

    /// Connects to the host's `mooncake_client` through its Unix socket `socket`
    /// (upstream's `setup_dummy` names the real client by `host:port`; the socket
    /// of a real client started with `--port P` is
    /// `mooncake_realclient::config::default_socket_path(P)`).
    pub fn setup_dummy(&self, socket: &Path) -> Result<(), StoreError> {
        let dummy = DummyClient::connect(socket, &self.cluster_token)
            .map_err(|e| StoreError::OperationFailed(e.code().as_i32()))?;
        self.install(Connected {
            clients: Clients::single(dummy),
            _background: None,
        })
    }

    /// Disconnects (and stops the in-process real client of `setup`).
    pub fn close(&self) {
        self.state.write().take();
    }

    /// Whether the store can serve calls.
    pub fn health_check(&self) -> Result<(), StoreError> {
        Ok(self.connected()?.clients.data().health()?)
    }

    /// The segment name of this client (upstream's `get_hostname`).
    pub fn get_hostname(&self) -> Result<String, StoreError> {
        Ok(self.connected()?.clients.own().hostname())
    }

    /// Stores `value` under `key` (a key that exists keeps its value, as upstream).
    pub fn put(
        &self,
        key: &str,
        value: &[u8],
        config: Option<&ReplicateConfig>,
    ) -> Result<(), StoreError> {
        let default = ReplicateConfig::default();
        Ok(self
            .connected()?
            .clients
            .data()
            .put(key, value, config.unwrap_or(&default))?)
    }

    /// Stores or replaces the value of `key`.
    pub fn upsert(
        &self,
        key: &str,
        value: &[u8],
        config: Option<&ReplicateConfig>,
    ) -> Result<(), StoreError> {
        let default = ReplicateConfig::default();
        Ok(self.connected()?.clients.data().upsert_parts(
            key,
            &[value],
            config.unwrap_or(&default),
        )?)
    }

    /// Stores the `size` bytes at `buffer`, which must lie in memory registered
    /// with [`register_buffer`](Self::register_buffer).
    ///
    /// # Safety
    ///
    /// `buffer` must point to at least `size` readable bytes that nothing writes
    /// while the call runs.
    pub unsafe fn put_from(
        &self,
        key: &str,
        buffer: *mut c_void,
        size: usize,
        config: Option<&ReplicateConfig>,
    ) -> Result<(), StoreError> {
        let default = ReplicateConfig::default();
        Ok(self.connected()?.clients.data().put_from(
            key,
            buffer as u64,
            size as u64,
            config.unwrap_or(&default),
        )?)
    }

    /// Reads the value of `key` into `buffer` (registered memory); the bytes read.
    ///
    /// # Safety
    ///
    /// `buffer` must point to at least `size` writable bytes that nothing else
    /// reads or writes while the call runs.
    pub unsafe fn get_into(
        &self,
        key: &str,
        buffer: *mut c_void,
        size: usize,
    ) -> Result<i64, StoreError> {
        let n = self
            .connected()?
            .clients
            .data()
            .get_into(key, buffer as u64, size as u64)?;
        Ok(n as i64)
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        Ok(self.connected()?.clients.data().get(key)?)
    }

    /// Whether `key` exists.
    pub fn is_exist(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self.connected()?.clients.data().is_exist(key)?)
    }

    /// The size in bytes of the value of `key`.
    pub fn get_size(&self, key: &str) -> Result<i64, StoreError> {
        Ok(self.connected()?.clients.data().get_size(key)? as i64)
    }

    /// Removes `key` (`force`: even while readers hold a lease).
    pub fn remove(&self, key: &str, force: bool) -> Result<(), StoreError> {
        Ok(self.connected()?.clients.data().remove(key, force)?)
    }

    /// Removes the keys matching the regular expression; how many.
    pub fn remove_by_regex(&self, pattern: &str, force: bool) -> Result<i64, StoreError> {
        Ok(self
            .connected()?
            .clients
            .data()
            .remove_by_regex(pattern, force)? as i64)
    }

    /// Removes every key; how many.
    pub fn remove_all(&self, force: bool) -> Result<i64, StoreError> {
        Ok(self.connected()?.clients.data().remove_all(force)? as i64)
    }

    /// Registers memory for [`put_from`](Self::put_from) and
    /// [`get_into`](Self::get_into). With `setup_dummy` it must come from
    /// `mooncake_dummyclient::HostMemAllocator` (the real client maps it); with
    /// `setup` any memory of this process will do.
    ///
    /// # Safety
    ///
    /// `buffer` must point to at least `size` bytes that stay allocated until
    /// [`unregister_buffer`](Self::unregister_buffer), and that no Rust reference
    /// points into while a read may write them.
    pub unsafe fn register_buffer(
        &self,
        buffer: *mut c_void,
        size: usize,
    ) -> Result<(), StoreError> {
        Ok(self
            .connected()?
            .clients
            .register_buffer(buffer as u64, size as u64)?)
    }

    /// Undoes [`register_buffer`](Self::register_buffer).
    ///
    /// # Safety
    ///
    /// `buffer` must be a pointer given to `register_buffer`, and no call using it
    /// may still be running.
    pub unsafe fn unregister_buffer(&self, buffer: *mut c_void) -> Result<(), StoreError> {
        Ok(self.connected()?.clients.unregister_buffer(buffer as u64)?)
    }

    /// Stores several values; one result per key.
    pub fn batch_put(
        &self,
        keys: &[String],
        values: &[&[u8]],
        config: Option<&ReplicateConfig>,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        if keys.len() != values.len() {
            return Err(StoreError::InvalidArgument(format!(
                "{} keys but {} values",
                keys.len(),
                values.len()
            )));
        }
        let default = ReplicateConfig::default();
        let c = self.connected()?;
        let objects: Vec<(&str, &[u8])> = keys
            .iter()
            .map(String::as_str)
            .zip(values.iter().copied())
            .collect();
        Ok(per_key(c.clients.data().batch_put(
            &objects,
            config.unwrap_or(&default),
            false,
        )))
    }

    /// Reads several values; one result per key.
    pub fn batch_get(
        &self,
        keys: &[String],
    ) -> Result<Vec<Result<Vec<u8>, StoreError>>, StoreError> {
        Ok(per_key(self.connected()?.clients.data().batch_get(keys)))
    }

    /// Whether each key exists.
    pub fn batch_is_exist(
        &self,
        keys: &[String],
    ) -> Result<Vec<Result<bool, StoreError>>, StoreError> {
        Ok(per_key(
            self.connected()?.clients.data().batch_is_exist(keys),
        ))
    }

    /// Removes several keys; one result per key.
    pub fn batch_remove(
        &self,
        keys: &[String],
        force: bool,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        Ok(per_key(
            self.connected()?.clients.data().batch_remove(keys, force),
        ))
    }
}

fn per_key<T>(results: Vec<Result<T, ErrorCode>>) -> Vec<Result<T, StoreError>> {
    results
        .into_iter()
        .map(|r| r.map_err(StoreError::from))
        .collect()
}
