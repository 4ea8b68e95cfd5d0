//! `MooncakeDistributedStore`: upstream's Python store class over the Rust dummy
//! client. `setup_dummy(...)` connects to the host's `mooncake_client`; `setup(...)`
//! first starts a full real client inside this process (contributing a segment,
//! or none with size 0) and connects to that. Either way the calls below run the
//! same code, with the GIL released.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};

use mooncake_dummyclient::{BufRef, DummyClient, Item, KeyRanges, ObjectRange, StartedRead};
use mooncake_proto::{ErrorCode, MResult};
use mooncake_realclient::background::BackgroundClient;
use mooncake_store::inprocess::Clients;

use crate::pybuf::ByteView;
use crate::setup::{SetupArgs, dummy_socket, size_from_py};
use crate::types::{BufferHandle, PyTaskId, QueryTaskResponse, ReplicaDescriptor, ReplicateConfig};

/// How long `setup` waits for the master before giving up.
const MASTER_WAIT: Duration = Duration::from_secs(5);
/// Code of calls made before `setup` or after `close` (upstream crashes instead).
const NOT_READY: ErrorCode = ErrorCode::UnavailableInCurrentStatus;

/// A set-up store: the dummy client, and the in-process real client for `setup()`.
struct Connected {
    clients: Clients,
    /// Dropped after `clients` (field order), so the dummies disconnect first.
    background: Option<BackgroundClient>,
    /// What `get_hostname` answers when this process has no segment.
    hostname: Option<String>,
    /// Memory handed out by `alloc_from_mem_pool`, freed on close.
    pool: Mutex<Vec<u64>>,
}

impl Connected {
    /// The code `register_buffer` / `unregister_buffer` answer. In dummy mode
    /// upstream answers -1 (`INTERNAL_ERROR`) for memory it cannot share (not from
    /// its pool, wrong bounds, never registered); in-process it passes codes on.
    fn buffer_code(&self, r: MResult<()>) -> i32 {
        match r {
            Err(ErrorCode::InvalidParams) if self.background.is_none() => {
                ErrorCode::InternalError.as_i32()
            }
            r => code(r),
        }
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        let allocator = crate::setup::host_memory();
        for addr in self.pool.lock().drain(..) {
            let _ = self.clients.unregister_buffer(addr);
            let _ = allocator.free(addr);
        }
    }
}

fn code<T>(r: MResult<T>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.as_i32(),
    }
}

fn codes<T>(rs: Vec<MResult<T>>) -> Vec<i32> {
    rs.into_iter().map(code).collect()
}

/// Upstream's parallel lists as the Rust API's items; `None` when their lengths
/// differ (every key then fails with `INVALID_PARAMS`, as upstream).
fn items(keys: &[String], ptrs: &[u64], sizes: &[u64]) -> Option<Vec<Item>> {
    (keys.len() == ptrs.len() && keys.len() == sizes.len()).then(|| {
        keys.iter()
            .zip(ptrs.iter().zip(sizes))
            .map(|(k, (&p, &n))| Item::new(k.clone(), p, n))
            .collect()
    })
}

/// Like [`items`] with several buffers per key; a key whose own two lists differ
/// in length gets no buffers (that key fails with `INVALID_PARAMS`).
fn scattered_items(keys: &[String], ptrs: &[Vec<u64>], sizes: &[Vec<u64>]) -> Option<Vec<Item>> {
    (keys.len() == ptrs.len() && keys.len() == sizes.len()).then(|| {
        keys.iter()
            .zip(ptrs.iter().zip(sizes))
            .map(|(k, (p, n))| {
                let buffers = if p.len() == n.len() {
                    p.iter()
                        .zip(n)
                        .map(|(&addr, &len)| BufRef { addr, len })
                        .collect()
                } else {
                    Vec::new()
                };
                Item::scattered(k.clone(), buffers)
            })
            .collect()
    })
}

/// A size argument: a wrong type raises `TypeError`; a string that is no size
/// (`"50%"`) is upstream's failure code, logged.
fn size_or_code(py: Python<'_>, v: &Bound<'_, PyAny>, what: &str) -> PyResult<Result<u64, i32>> {
    match size_from_py(v, what) {
        Ok(n) => Ok(Ok(n)),
        Err(e) if e.is_instance_of::<pyo3::exceptions::PyValueError>(py) => {
            crate::init_library_logging();
            tracing::error!("setup: {}", e.value(py));
            Ok(Err(ErrorCode::InvalidParams.as_i32()))
        }
        Err(e) => Err(e),
    }
}

/// Per-key range requests from upstream's parallel lists (`addrs[i][j]`,
/// `sizes[i][j]`, `offsets[i][j]` for key `i`). A key whose lists differ in
/// length gets no ranges, which the client answers with INVALID_PARAMS; `None`
/// when the outer lists differ in length.
fn key_ranges(
    keys: &[String],
    addrs: &[Vec<u64>],
    sizes: &[Vec<u64>],
    offsets: &[Vec<u64>],
) -> Option<Vec<KeyRanges>> {
    let n = keys.len();
    if addrs.len() != n || sizes.len() != n || offsets.len() != n {
        return None;
    }
    let requests = keys
        .iter()
        .enumerate()
        .map(|(i, key)| {
            let (a, s, o) = (&addrs[i], &sizes[i], &offsets[i]);
            let ranges = if a.len() == s.len() && a.len() == o.len() {
                a.iter()
                    .zip(s)
                    .zip(o)
                    .map(|((&addr, &len), &offset)| ObjectRange { addr, offset, len })
                    .collect()
            } else {
                Vec::new()
            };
            KeyRanges::new(key.clone(), ranges)
        })
        .collect();
    Some(requests)
}

/// The code the segment calls answer: upstream's real client answers -1 for
/// everything it checks itself (a bad path or size, an id it did not mount, no
/// client set up) and passes the master's codes on.
fn segment_code(e: ErrorCode) -> i32 {
    match e {
        ErrorCode::InvalidParams | ErrorCode::SegmentNotFound => ErrorCode::InternalError.as_i32(),
        e if e == NOT_READY => ErrorCode::InternalError.as_i32(),
        e => e.as_i32(),
    }
}

fn sizes_or_codes(rs: Vec<MResult<u64>>) -> Vec<i64> {
    rs.into_iter()
        .map(|r| match r {
            Ok(n) => n as i64,
            Err(e) => e.as_i32() as i64,
        })
        .collect()
}

fn config_of(config: Option<PyRef<'_, ReplicateConfig>>) -> mooncake_proto::ReplicateConfig {
    config.map(|c| c.to_proto()).unwrap_or_default()
}

fn views(parts: &[Bound<'_, PyAny>]) -> PyResult<Vec<ByteView>> {
    parts.iter().map(ByteView::new).collect()
}

/// The distributed store (upstream's `mooncake.store.MooncakeDistributedStore`).
#[pyclass(subclass, module = "mooncake.store")]
pub struct MooncakeDistributedStore {
    state: RwLock<Option<Arc<Connected>>>,
    /// Serializes setup and close.
    lifecycle: Mutex<()>,
}

impl MooncakeDistributedStore {
    fn connected(&self) -> Option<Arc<Connected>> {
        self.state.read().clone()
    }

    /// Runs `f` on the client with the GIL released; `not_ready` when not set up.
    fn with<T: Send>(
        &self,
        py: Python<'_>,
        not_ready: impl FnOnce(ErrorCode) -> T,
        f: impl FnOnce(&DummyClient) -> T + Send,
    ) -> T {
        match self.connected() {
            Some(c) => py.detach(|| f(c.clients.data())),
            None => not_ready(NOT_READY),
        }
    }

    fn unmount(&self, py: Python<'_>, ids: Vec<String>, grace_s: u64, allocated: bool) -> i32 {
        let Ok(ids) = ids
            .iter()
            .map(|i| uuid::Uuid::parse_str(i))
            .collect::<Result<Vec<_>, _>>()
        else {
            return segment_code(ErrorCode::InvalidParams);
        };
        if self.connected().is_none() {
            return segment_code(NOT_READY);
        }
        if ids.is_empty() {
            return 0; // nothing to unmount, as upstream
        }
        let grace = Duration::from_secs(grace_s);
        // Segments belong to this process's own real client.
        let Some(c) = self.connected() else {
            return segment_code(NOT_READY);
        };
        match py.detach(|| c.clients.own().unmount_segment(&ids, grace, allocated)) {
            Ok(()) => 0,
            Err(e) => segment_code(e),
        }
    }

    fn install(&self, connected: Connected) -> i32 {
        let mut state = self.state.write();
        if state.is_some() {
            tracing::warn!("setup: this store is already set up; close() it first");
            return ErrorCode::InvalidParams.as_i32();
        }
        *state = Some(Arc::new(connected));
        0
    }

    fn setup_in_process(&self, py: Python<'_>, args: SetupArgs) -> i32 {
        crate::init_library_logging();
        let _lifecycle = self.lifecycle.lock();
        if self.connected().is_some() {
            tracing::warn!("setup: this store is already set up; close() it first");
            return ErrorCode::InvalidParams.as_i32();
        }
        let config = match crate::setup::client_config(&args) {
            Ok(c) => c,
            Err(reason) => {
                tracing::error!("setup: {reason}");
                return ErrorCode::InvalidParams.as_i32();
            }
        };
        let metadata = args.metadata_server.trim();
        if !(metadata.is_empty()
            || metadata.eq_ignore_ascii_case("P2PHANDSHAKE")
            || metadata.contains("://"))
        {
            tracing::warn!(
                "setup: metadata server {metadata:?} is neither a URL nor P2PHANDSHAKE; it is not needed here and ignored"
            );
        }
        let token = config.cluster_token.clone();
        let no_segment = args.global_segment_size == 0;
        let host = args.display_host();
        let options =
            crate::setup::dummy_options().with_staging_budget(Some(args.local_buffer_size));
        let route = crate::setup::host_route();
        let started = py.detach(move || -> Result<Connected, String> {
            let background =
                BackgroundClient::start(config, 2, MASTER_WAIT).map_err(|e| format!("{e:#}"))?;
            // SAFETY: the real client was just started in this process; the Python
            // API hands it only memory the caller registered for this purpose
            // (upstream's contract for `register_buffer`).
            let clients =
                unsafe { Clients::connect(&background, &token, options, no_segment, route) }
                    .map_err(|e| e.to_string())?;
            // Upstream's `get_hostname`: `host:port` of this client's transfer
            // port, also when it contributes no segment (then nothing else names it).
            let hostname = no_segment.then(|| match background.endpoints().transfer {
                Some(a) => format!("{host}:{}", a.port()),
                None => host.clone(),
            });
            Ok(Connected {
                clients,
                background: Some(background),
                hostname,
                pool: Mutex::new(Vec::new()),
            })
        });
        match started {
            Ok(c) => self.install(c),
            Err(reason) => {
                tracing::error!("setup failed: {reason}");
                ErrorCode::InternalError.as_i32()
            }
        }
    }
}

#[pymethods]
impl MooncakeDistributedStore {
    #[new]
    fn py_new() -> Self {
        MooncakeDistributedStore {
            state: RwLock::new(None),
            lifecycle: Mutex::new(()),
        }
    }

    /// Starts a full client in this process: `setup(local_hostname, metadata_server,
    /// global_segment_size, local_buffer_size, protocol, rdma_devices,
    /// master_server_addr, engine=None, ...)`, or `setup(config: dict)`. 0 on success.
    #[pyo3(signature = (
        local_hostname,
        metadata_server = None,
        global_segment_size = None,
        local_buffer_size = None,
        protocol = None,
        rdma_devices = None,
        master_server_addr = None,
        engine = None,
        enable_ssd_offload = false,
        ssd_offload_path = String::new(),
        tenant_id = String::from("default"),
        enable_client_http_server = false,
        client_http_port = 9300,
        ipc_socket_path = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn setup(
        &self,
        py: Python<'_>,
        local_hostname: &Bound<'_, PyAny>,
        metadata_server: Option<String>,
        global_segment_size: Option<&Bound<'_, PyAny>>,
        local_buffer_size: Option<&Bound<'_, PyAny>>,
        protocol: Option<String>,
        rdma_devices: Option<String>,
        master_server_addr: Option<String>,
        engine: Option<&Bound<'_, PyAny>>,
        enable_ssd_offload: bool,
        ssd_offload_path: String,
        tenant_id: String,
        enable_client_http_server: bool,
        client_http_port: u16,
        ipc_socket_path: Option<String>,
    ) -> PyResult<i32> {
        if let Ok(dict) = local_hostname.cast::<PyDict>() {
            let args = match crate::setup::setup_args_from_dict(dict) {
                Err(e) if e.is_instance_of::<pyo3::exceptions::PyValueError>(py) => {
                    crate::init_library_logging();
                    tracing::error!("setup: {}", e.value(py));
                    return Ok(ErrorCode::InvalidParams.as_i32());
                }
                other => other?,
            };
            return Ok(self.setup_in_process(py, args));
        }
        let missing = |what: &str| {
            PyTypeError::new_err(format!(
                "setup() missing required argument '{what}' (pass 7 positional arguments or one dict)"
            ))
        };
        let global_segment_size =
            global_segment_size.ok_or_else(|| missing("global_segment_size"))?;
        let local_buffer_size = local_buffer_size.ok_or_else(|| missing("local_buffer_size"))?;
        if engine.is_some_and(|e| !e.is_none()) {
            tracing::warn!(
                "setup: the `engine` argument is ignored (this store has its own transfer engine)"
            );
        }
        let args = SetupArgs {
            local_hostname: local_hostname.extract::<String>().map_err(|_| {
                PyTypeError::new_err("setup(): local_hostname must be a str (or pass one dict)")
            })?,
            metadata_server: metadata_server.ok_or_else(|| missing("metadata_server"))?,
            global_segment_size: match size_or_code(py, global_segment_size, "global_segment_size")?
            {
                Ok(n) => n,
                Err(code) => return Ok(code),
            },
            local_buffer_size: match size_or_code(py, local_buffer_size, "local_buffer_size")? {
                Ok(n) => n,
                Err(code) => return Ok(code),
            },
            protocol: protocol.ok_or_else(|| missing("protocol"))?,
            rdma_devices: rdma_devices.ok_or_else(|| missing("rdma_devices"))?,
            master_server_addr: master_server_addr.ok_or_else(|| missing("master_server_addr"))?,
            ipc_socket_path: ipc_socket_path.filter(|s| !s.is_empty()).map(Into::into),
            enable_client_http_server,
            client_http_port,
            enable_ssd_offload,
            ssd_offload_path,
            ssd_offload_size: None,
            tenant_id,
            cluster_id: crate::setup::cluster_id_from_env(),
        };
        Ok(self.setup_in_process(py, args))
    }

    /// Connects to the host's real client (`mooncake_client --port P`) at
    /// `server_address` = `"host:P"`. `mem_pool_size` is a hint (buffers are
    /// registered one by one); `local_buffer_size` bounds what the copying calls
    /// move, as upstream (docs/PYTHON.md). 0 on success.
    #[pyo3(signature = (mem_pool_size, local_buffer_size, server_address))]
    fn setup_dummy(
        &self,
        py: Python<'_>,
        mem_pool_size: &Bound<'_, PyAny>,
        local_buffer_size: &Bound<'_, PyAny>,
        server_address: String,
    ) -> PyResult<i32> {
        if let Err(code) = size_or_code(py, mem_pool_size, "mem_pool_size")? {
            return Ok(code);
        }
        let local_buffer_size = match size_or_code(py, local_buffer_size, "local_buffer_size")? {
            Ok(n) => n,
            Err(code) => return Ok(code),
        };
        crate::init_library_logging();
        let _lifecycle = self.lifecycle.lock();
        if self.connected().is_some() {
            tracing::warn!("setup_dummy: this store is already set up; close() it first");
            return Ok(ErrorCode::InvalidParams.as_i32());
        }
        let socket = match dummy_socket(&server_address) {
            Ok(s) => s,
            Err(reason) => {
                tracing::error!("setup_dummy: {reason}");
                return Ok(ErrorCode::InvalidParams.as_i32());
            }
        };
        let token = crate::setup::cluster_token();
        let options = crate::setup::dummy_options().with_staging_budget(Some(local_buffer_size));
        let connected = py.detach(|| DummyClient::connect_with_options(&socket, &token, options));
        Ok(match connected {
            Ok(dummy) => self.install(Connected {
                clients: Clients::single(dummy),
                background: None,
                hostname: None,
                pool: Mutex::new(Vec::new()),
            }),
            Err(e) => {
                tracing::error!(
                    "setup_dummy: no real client at {server_address} ({}): {e}",
                    socket.display()
                );
                e.code().as_i32()
            }
        })
    }

    /// Disconnects (and stops the in-process client of `setup`). Idempotent: 0.
    fn close(&self, py: Python<'_>) -> i32 {
        let _lifecycle = self.lifecycle.lock();
        let taken = self.state.write().take();
        if let Some(c) = taken {
            // Calls still running on other threads hold their own reference; the
            // last one out stops the client.
            py.detach(move || drop(c));
        }
        0
    }

    /// Reads this process's client has served from its disk tier (upstream's count
    /// of reads of offloaded objects). 0 without a disk tier, before `setup`, and
    /// in dummy mode, as upstream (there the real client serves them).
    fn get_offload_rpc_read_count(&self) -> i64 {
        self.connected()
            .and_then(|c| c.background.as_ref()?.client().disk().cloned())
            .map_or(0, |disk| disk.reads_served() as i64)
    }

    /// 0 healthy, 1 not set up, 2 real client or master unreachable.
    fn health_check(&self, py: Python<'_>) -> i32 {
        self.with(py, |_| 1, |c| if c.health().is_ok() { 0 } else { 2 })
    }

    /// This client's segment name (use it as `preferred_segment`).
    fn get_hostname(&self, py: Python<'_>) -> String {
        match self.connected() {
            Some(c) => match &c.hostname {
                Some(h) => h.clone(),
                None => py.detach(|| c.clients.own().hostname()),
            },
            None => String::new(),
        }
    }

    // ------------------------------------------------------------- buffers

    /// Makes `[buffer_ptr, buffer_ptr + size)` usable by the zero-copy calls.
    fn register_buffer(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = crate::args::num)] buffer_ptr: u64,
        #[pyo3(from_py_with = crate::args::num)] size: u64,
    ) -> i32 {
        match self.connected() {
            Some(c) => py.detach(|| c.buffer_code(c.clients.register_buffer(buffer_ptr, size))),
            None => NOT_READY.as_i32(),
        }
    }

    /// Undoes `register_buffer`.
    fn unregister_buffer(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = crate::args::num)] buffer_ptr: u64,
    ) -> i32 {
        match self.connected() {
            Some(c) => py.detach(|| c.buffer_code(c.clients.unregister_buffer(buffer_ptr))),
            None => NOT_READY.as_i32(),
        }
    }

    /// Registered shareable memory for the zero-copy calls; 0 on failure. Freed on close.
    fn alloc_from_mem_pool(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = crate::args::num)] size: u64,
    ) -> u64 {
        let Some(c) = self.connected() else { return 0 };
        py.detach(|| {
            let allocator = crate::setup::host_memory();
            let Ok(addr) = allocator.alloc(size) else {
                return 0;
            };
            if c.clients.register_buffer(addr, size).is_err() {
                let _ = allocator.free(addr);
                return 0;
            }
            c.pool.lock().push(addr);
            addr
        })
    }

    /// Gives back memory from `alloc_from_mem_pool` before close (used by
    /// `BufferPool`): 0, or -600 for an address it did not hand out.
    fn _free_mem_pool(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = crate::args::num)] ptr: u64,
    ) -> i32 {
        let Some(c) = self.connected() else {
            return NOT_READY.as_i32();
        };
        py.detach(|| {
            let mut pool = c.pool.lock();
            let Some(at) = pool.iter().position(|&a| a == ptr) else {
                return ErrorCode::InvalidParams.as_i32();
            };
            pool.swap_remove(at);
            drop(pool);
            let _ = c.clients.unregister_buffer(ptr);
            code(crate::setup::host_memory().free(ptr))
        })
    }

    // -------------------------------------------------------------- writes

    /// Stores a copy of a bytes-like `value`; 0, or a negative code. A key that
    /// already exists keeps its value and returns 0.
    #[pyo3(signature = (key, value, config = None))]
    fn put(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = crate::args::key)] key: String,
        value: &Bound<'_, PyAny>,
        config: Option<PyRef<'_, ReplicateConfig>>,
    ) -> PyResult<i32> {
        self.put_values(py, vec![key], std::slice::from_ref(value), config, false)
            .map(|mut v| v.remove(0))
    }

    /// As `put`, replacing an existing value.
    #[pyo3(signature = (key, value, config = None))]
    fn upsert(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = crate::args::key)] key: String,
        value: &Bound<'_, PyAny>,
        config: Option<PyRef<'_, ReplicateConfig>>,
    ) -> PyResult<i32> {
        self.put_values(py, vec![key], std::slice::from_ref(value), config, true)
            .map(|mut v| v.remove(0))
    }

    /// Stores the concatenation of bytes-like `parts` as one object.
    #[pyo3(signature = (key, *parts, config = None))]
    fn put_parts(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = crate::args::key)] key: String,
        parts: &Bound<'_, PyTuple>,
        config: Option<PyRef<'_, ReplicateConfig>>,
    ) -> PyResult<i32> {
        self.parts(py, key, parts, config, false)
    }

    /// As `put_parts`, replacing an existing value.
    #[pyo3(signature = (key, *parts, config = None))]
    fn upsert_parts(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = crate::args::key)] key: String,
        parts: &Bound<'_, PyTuple>,
        config: Option<PyRef<'_, ReplicateConfig>>,
    ) -> PyResult<i32> {
        self.parts(py, key, parts, config, true)
    }

    /// Stores several values; one int: 0 when all were stored, else the first error.
    #[pyo3(signature = (keys, values, config = None))]
    fn put_batch(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = crate::args::keys)] keys: Vec<String>,
        values: Vec<Bound<'_, PyAny>>,
        config: Option<PyRef<'_, ReplicateConfig>>,
    ) -> PyResult<i32> {
        Ok(first_error(
            self.put_values(py, keys, &values, config, false)?,
        ))
    }

    /// As `put_batch`, replacing existing values.
    #[pyo3(signature = (keys, values, config = None))]
    fn upsert_batch(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = crate::args::keys)] keys: Vec<String>,
        values: Vec<Bound<'_, PyAny>>,
        config: Option<PyRef<'_, ReplicateConfig>>,
    ) -> PyResult<i32> {
        Ok(first_error(
            self.put_values(py, keys, &values, config, true)?,
        ))
    }

    /// Zero-copy put of `size` bytes at `buffer_ptr` (registered memory).
    #[pyo3(signature = (key, buffer_ptr, size, config = None))]
    fn put_from(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = crate::args::key)] key: String,
        #[pyo3(from_py_with = crate::args::num)] buffer_ptr: u64,
        #[pyo3(from_py_with = crate::args::num)] size: u64,
        config: Option<PyRef<'_, ReplicateConfig>>,
    ) -> i32 {
        self.put_registered(py, vec![key], vec![buffer_ptr], vec![size], config, false)
            .remove(0)
    }

    /// As `put_from`, replacing an existing value.
    #[pyo3(signature = (key, buffer_ptr, size, config = None))]
    fn upsert_from(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = crate::args::key)] key: String,
        #[pyo3(from_py_with = crate::args::num)] buffer_ptr: u64,
        #[pyo3(from_py_with = crate::args::num)] size: u64,
        config: Option<PyRef<'_, ReplicateConfig>>,
    ) -> i32 {
        self.put_registered(py, vec![key], vec![buffer_ptr], vec![size], config, true)
            .remove(0)
    }

    /// Zero-copy puts; per key 0 or a negative code.
    #[pyo3(signature = (keys, buffer_ptrs, sizes, config = None))]
    fn batch_put_from(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = crate::args::keys)] keys: Vec<String>,
        #[pyo3(from_py_with = crate::args::nums)] buffer_ptrs: Vec<u64>,
        #[pyo3(from_py_with = crate::args::nums)] sizes: Vec<u64>,
        config: Option<PyRef<'_, ReplicateConfig>>,
    ) -> Vec<i32> {
        self.put_registered(py, keys, buffer_ptrs, sizes, config, false)
    }

    /// As `batch_put_from`, replacing existing values.
    #[pyo3(signature = (keys, buffer_ptrs, sizes, config = None))]
    fn batch_upsert_from(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = crate::args::keys)] keys: Vec<String>,
        #[pyo3(from_py_with = crate::args::nums)] buffer_ptrs: Vec<u64>,
        #[pyo3(from_py_with = crate::args::nums)] sizes: Vec<u64>,
        config: Option<PyRef<'_, ReplicateConfig>>,
    ) -> Vec<i32> {
        self.put_registered(py, keys, buffer_ptrs, sizes, config, true)
    }

    /// Puts where each object is the concatenation of its buffers.
    #[pyo3(signature = (keys, all_buffer_ptrs, all_sizes, config = None))]
    fn batch_put_from_multi_buffers(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = crate::args::keys)] keys: Vec<String>,
        #[pyo3(from_py_with = crate::args::nums2)] all_buffer_ptrs: Vec<Vec<u64>>,
        #[pyo3(from_py_with = crate::args::nums2)] all_sizes: Vec<Vec<u64>>,
        config: Option<PyRef<'_, ReplicateConfig>>,
    ) -> Vec<i32> {
        self.put_scattered(py, keys, all_buffer_ptrs, all_sizes, config, false)
    }

    /// As `batch_put_from_multi_buffers`, replacing existing values.
    #[pyo3(signature = (keys, all_buffer_ptrs, all_sizes, config = None))]
    fn batch_upsert_from_multi_buffers(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = crate::args::keys)] keys: Vec<String>,
        #[pyo3(from_py_with = crate::args::nums2)] all_buffer_ptrs: Vec<Vec<u64>>,
        #[pyo3(from_py_with = crate::args::nums2)] all_sizes: Vec<Vec<u64>>,
        config: Option<PyRef<'_, ReplicateConfig>>,
    ) -> Vec<i32> {
        self.put_scattered(py, keys, all_buffer_ptrs, all_sizes, config, true)
    }

    // --------------------------------------------------------------- reads

    /// The whole object as `bytes`; empty bytes when missing or on error.
    fn get<'py>(
        &self,
        py: Python<'py>,
        #[pyo3(from_py_with = crate::args::key)] key: String,
    ) -> Bound<'py, PyBytes> {
        let empty = || PyBytes::new(py, &[]);
        let Some(c) = self.connected() else {
            return empty();
        };
        // One call: a value on another host that fits the room offered in the
        // local buffer comes with it; any other is looked up and its lease held,
        // and its bytes go straight into the new object without a second lookup.
        let Ok(started) = py.detach(|| c.clients.data().start_read(&key)) else {
            return empty();
        };
        let size = match &started {
            StartedRead::Staged(staged) => staged.size(),
            StartedRead::Open(opened) => opened.size(),
        } as usize;
        // A new `bytes` left uninitialized: filling it with zeros first (as
        // `PyBytes::new_with` does) would touch every page once more, on one
        // thread, before the copy that splits over two.
        // SAFETY: a null source asks CPython for an uninitialized object of
        // `size` bytes; the result is checked for null below.
        let raw = unsafe { pyo3::ffi::PyBytes_FromStringAndSize(std::ptr::null(), size as isize) };
        if raw.is_null() {
            let _ = PyErr::take(py);
            return empty();
        }
        // SAFETY: `raw` is a new, non-null reference to a `bytes` object.
        let value: Bound<'py, PyBytes> =
            unsafe { Bound::from_owned_ptr(py, raw).cast_into_unchecked() };
        // SAFETY: the buffer of a `bytes` object we just made, `size` bytes long
        // (plus CPython's trailing zero); no other reference to the object exists
        // until it is returned, so nothing reads the buffer before it is filled.
        let buffer = unsafe { pyo3::ffi::PyBytes_AsString(raw) } as usize;
        // SAFETY: as above: writable, `size` bytes, touched by nothing else
        // (the GIL released meanwhile guards nothing here: no one else holds it).
        let read = py.detach(|| unsafe {
            match started {
                StartedRead::Staged(staged) => staged.read_into_raw(buffer as *mut u8, size),
                StartedRead::Open(opened) => opened.read_into_raw(buffer as *mut u8, size),
            }
        });
        match read {
            Ok(n) if n as usize == size => value,
            _ => empty(),
        }
    }

    /// Objects as `bytes` (empty for missing ones); as long as `keys`.
    fn get_batch<'py>(
        &self,
        py: Python<'py>,
        #[pyo3(from_py_with = crate::args::keys)] keys: Vec<String>,
    ) -> Vec<Bound<'py, PyBytes>> {
        let n = keys.len();
        let values = self.with(
            py,
            |_| vec![Vec::new(); n],
            |c| {
                c.batch_get(&keys)
                    .into_iter()
                    .map(|r| r.unwrap_or_default())
                    .collect()
            },
        );
        values.iter().map(|v| PyBytes::new(py, v)).collect()
    }

    /// The object in a `BufferHandle`, or `None`.
    fn get_buffer(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = crate::args::key)] key: String,
    ) -> Option<BufferHandle> {
        self.with(py, |_| None, |c| c.get(&key).ok())
            .map(BufferHandle::new)
    }

    /// Objects in `BufferHandle`s (`None` for missing ones); as long as `keys`.
    fn batch_get_buffer(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = crate::args::keys)] keys: Vec<String>,
    ) -> Vec<Option<BufferHandle>> {
        let n = keys.len();
        let values = self.with(
            py,
            |_| vec![None; n],
            |c| c.batch_get(&keys).into_iter().map(|r| r.ok()).collect(),
        );
        values
            .into_iter()
            .map(|v| v.map(BufferHandle::new))
            .collect()
    }

    /// Reads the object into registered memory: its size, or a negative code
    /// (-600 when the buffer is too small, -704 when missing).
    fn get_into(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = crate::args::key)] key: String,
        #[pyo3(from_py_with = crate::args::num)] buffer_ptr: u64,
        #[pyo3(from_py_with = crate::args::num)] size: u64,
    ) -> i64 {
        self.with(
            py,
            |e| e.as_i32() as i64,
            |c| sizes_or_codes(vec![c.get_into(&key, buffer_ptr, size)]).remove(0),
        )
    }

    /// Reads objects into registered memory; per key its size or a negative code.
    fn batch_get_into(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = crate::args::keys)] keys: Vec<String>,
        #[pyo3(from_py_with = crate::args::nums)] buffer_ptrs: Vec<u64>,
        #[pyo3(from_py_with = crate::args::nums)] sizes: Vec<u64>,
    ) -> Vec<i64> {
        let n = keys.len();
        self.with(
            py,
            |e| vec![e.as_i32() as i64; n],
            |c| match items(&keys, &buffer_ptrs, &sizes) {
                Some(items) => sizes_or_codes(c.batch_get_into(&items)),
                None => vec![ErrorCode::InvalidParams.as_i32() as i64; n],
            },
        )
    }

    /// Reads objects scattered over several registered buffers each.
    #[pyo3(signature = (keys, all_buffer_ptrs, all_sizes, prefer_alloc_in_same_node = false))]
    fn batch_get_into_multi_buffers(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = crate::args::keys)] keys: Vec<String>,
        #[pyo3(from_py_with = crate::args::nums2)] all_buffer_ptrs: Vec<Vec<u64>>,
        #[pyo3(from_py_with = crate::args::nums2)] all_sizes: Vec<Vec<u64>>,
        prefer_alloc_in_same_node: bool,
    ) -> Vec<i64> {
        let _ = prefer_alloc_in_same_node;
        let n = keys.len();
        self.with(
            py,
            |e| vec![e.as_i32() as i64; n],
            |c| match scattered_items(&keys, &all_buffer_ptrs, &all_sizes) {
                Some(items) => sizes_or_codes(c.batch_get_into(&items)),
                None => vec![ErrorCode::InvalidParams.as_i32() as i64; n],
            },
        )
    }

    // ------------------------------------------------------------ metadata

    /// 1 when the object exists, 0 when not, negative on error.
    fn is_exist(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = crate::args::key)] key: String,
    ) -> i32 {
        self.with(
            py,
            |e| e.as_i32(),
            |c| match c.is_exist(&key) {
                Ok(b) => b as i32,
                Err(e) => e.as_i32(),
            },
        )
    }

    /// Per key 1 / 0 / negative; as long as `keys`.
    fn batch_is_exist(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = crate::args::keys)] keys: Vec<String>,
    ) -> Vec<i32> {
        let n = keys.len();
        self.with(
            py,
            |e| vec![e.as_i32(); n],
            |c| {
                c.batch_is_exist_owned(keys)
                    .into_iter()
                    .map(|r| match r {
                        Ok(b) => b as i32,
                        Err(e) => e.as_i32(),
                    })
                    .collect()
            },
        )
    }

    /// The object's size, or a negative code.
    fn get_size(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = crate::args::key)] key: String,
    ) -> i64 {
        self.with(
            py,
            |e| e.as_i32() as i64,
            |c| match c.get_size(&key) {
                Ok(n) => n as i64,
                Err(e) => e.as_i32() as i64,
            },
        )
    }

    /// Where the object's replicas are.
    fn get_replica_desc(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = crate::args::key)] key: String,
    ) -> Vec<ReplicaDescriptor> {
        self.with(
            py,
            |_| Vec::new(),
            |c| {
                c.batch_get_replicas(&[key])
                    .remove(0)
                    .map(|l| l.replicas.iter().map(ReplicaDescriptor::from).collect())
                    .unwrap_or_default()
            },
        )
    }

    /// Key → replica descriptors, for the keys that exist.
    fn batch_get_replica_desc<'py>(
        &self,
        py: Python<'py>,
        #[pyo3(from_py_with = crate::args::keys)] keys: Vec<String>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let found: Vec<(String, Vec<ReplicaDescriptor>)> = self.with(
            py,
            |_| Vec::new(),
            |c| {
                let lists = c.batch_get_replicas(&keys);
                keys.iter()
                    .zip(lists)
                    .filter_map(|(k, r)| {
                        r.ok().map(|l| {
                            (
                                k.clone(),
                                l.replicas.iter().map(ReplicaDescriptor::from).collect(),
                            )
                        })
                    })
                    .collect()
            },
        );
        let dict = PyDict::new(py);
        for (k, v) in found {
            dict.set_item(k, v)?;
        }
        Ok(dict)
    }

    /// Removes an object: 0 or a negative code (-706 while it is being read,
    /// unless `force`).
    #[pyo3(signature = (key, force = false))]
    fn remove(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = crate::args::key)] key: String,
        force: bool,
    ) -> i32 {
        self.with(py, |e| e.as_i32(), |c| code(c.remove(&key, force)))
    }

    /// Removes objects; per key 0 or a negative code.
    #[pyo3(signature = (keys, force = false))]
    fn batch_remove(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = crate::args::keys)] keys: Vec<String>,
        force: bool,
    ) -> Vec<i32> {
        let n = keys.len();
        self.with(
            py,
            |e| vec![e.as_i32(); n],
            |c| codes(c.batch_remove(&keys, force)),
        )
    }

    /// Drops this client's replicas of `keys` (on its segment named
    /// `segment_name`, or all of them when empty) for objects no reader holds a
    /// lease on; returns the keys cleared (empty on error).
    #[pyo3(signature = (keys, segment_name = String::new()))]
    fn batch_replica_clear(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = crate::args::keys)] keys: Vec<String>,
        segment_name: String,
    ) -> Vec<String> {
        self.with(
            py,
            |_| Vec::new(),
            |c| {
                c.batch_replica_clear(&keys, &segment_name)
                    .unwrap_or_default()
            },
        )
    }

    /// Queues a copy of `key` to the segments named `targets`, run by the real
    /// client holding one of its replicas: `(task_id, 0)` or `((0, 0), code)`.
    fn create_copy_task(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = crate::args::key)] key: String,
        targets: Vec<String>,
    ) -> (PyTaskId, i32) {
        task_created(self.with(py, Err, |c| c.create_copy_task(&key, &targets)))
    }

    /// Queues a move of `key`'s replica on segment `source` to segment `target`:
    /// `(task_id, 0)` or `((0, 0), code)`.
    fn create_move_task(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = crate::args::key)] key: String,
        source: String,
        target: String,
    ) -> (PyTaskId, i32) {
        task_created(self.with(py, Err, |c| c.create_move_task(&key, &source, &target)))
    }

    /// A task's state: `(QueryTaskResponse, 0)` or `(None, code)`. `task_id` is
    /// what `create_*_task` returned (a UUID string is accepted too).
    fn query_task(
        &self,
        py: Python<'_>,
        task_id: &Bound<'_, PyAny>,
    ) -> (Option<QueryTaskResponse>, i32) {
        let id = if let Ok((hi, lo)) = task_id.extract::<(u64, u64)>() {
            uuid::Uuid::from_u64_pair(hi, lo)
        } else if let Ok(text) = task_id.extract::<String>() {
            match uuid::Uuid::parse_str(&text) {
                Ok(id) => id,
                Err(_) => return (None, ErrorCode::InvalidParams.as_i32()),
            }
        } else {
            return (None, ErrorCode::InvalidParams.as_i32());
        };
        match self.with(py, Err, |c| c.query_task(id)) {
            Ok(info) => (Some(QueryTaskResponse::from(&info)), 0),
            Err(e) => (None, e.as_i32()),
        }
    }

    /// Contributes `size` bytes at `offset` of the shared-memory file `path`
    /// (tmpfs, hugetlbfs, `/dev/shm`) to the pool as a segment of the real
    /// client: `{"ret": 0 or code, "segment_ids": [str]}`.
    #[pyo3(signature = (path, size, offset = 0, protocol = "tcp".to_string(), location = String::new()))]
    fn mount_segment<'py>(
        &self,
        py: Python<'py>,
        path: String,
        #[pyo3(from_py_with = crate::args::num)] size: u64,
        #[pyo3(from_py_with = crate::args::num)] offset: u64,
        protocol: String,
        location: String,
    ) -> PyResult<Bound<'py, PyDict>> {
        let _ = location;
        let r = self.with(py, Err, |c| c.mount_segment(&path, size, offset, &protocol));
        let out = PyDict::new(py);
        match r {
            Ok(ids) => {
                out.set_item("ret", 0)?;
                out.set_item(
                    "segment_ids",
                    ids.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
                )?;
            }
            Err(e) => {
                out.set_item("ret", segment_code(e))?;
                out.set_item("segment_ids", Vec::<String>::new())?;
            }
        }
        Ok(out)
    }

    /// Has the real client allocate `size` bytes (rounded up to pages) and
    /// contribute them as a segment: `{"ret", "segment_ids", "allocated_size"}`.
    #[pyo3(signature = (size, protocol = "tcp".to_string(), location = String::new()))]
    fn allocate_and_mount_segment<'py>(
        &self,
        py: Python<'py>,
        #[pyo3(from_py_with = crate::args::num)] size: u64,
        protocol: String,
        location: String,
    ) -> PyResult<Bound<'py, PyDict>> {
        let _ = location;
        let r = self.with(py, Err, |c| c.allocate_and_mount_segment(size, &protocol));
        let out = PyDict::new(py);
        let (ret, ids, allocated) = match r {
            Ok((ids, n)) => (0, ids.iter().map(|i| i.to_string()).collect(), n),
            Err(e) => (segment_code(e), Vec::<String>::new(), 0),
        };
        out.set_item("ret", ret)?;
        out.set_item("segment_ids", ids)?;
        out.set_item("allocated_size", allocated)?;
        Ok(out)
    }

    /// Unmounts segments from `mount_segment` (their objects leave the pool):
    /// 0 or a negative code. With `grace_period_seconds` the unmount happens that
    /// much later and the call returns at once.
    #[pyo3(signature = (segment_ids, grace_period_seconds = 0))]
    fn unmount_segment(
        &self,
        py: Python<'_>,
        segment_ids: Vec<String>,
        grace_period_seconds: u64,
    ) -> i32 {
        self.unmount(py, segment_ids, grace_period_seconds, false)
    }

    /// Unmounts segments from `allocate_and_mount_segment` and frees their memory.
    #[pyo3(signature = (segment_ids, grace_period_seconds = 0))]
    fn unmount_and_free_segment(
        &self,
        py: Python<'_>,
        segment_ids: Vec<String>,
        grace_period_seconds: u64,
    ) -> i32 {
        self.unmount(py, segment_ids, grace_period_seconds, true)
    }

    /// Removes the objects whose key matches: how many, or a negative code.
    #[pyo3(signature = (regex_pattern, force = false))]
    fn remove_by_regex(&self, py: Python<'_>, regex_pattern: String, force: bool) -> i64 {
        self.with(
            py,
            |e| e.as_i32() as i64,
            |c| match c.remove_by_regex(&regex_pattern, force) {
                Ok(n) => n as i64,
                Err(e) => e.as_i32() as i64,
            },
        )
    }

    /// Removes every object in the cluster: how many, or a negative code.
    #[pyo3(signature = (force = false))]
    fn remove_all(&self, py: Python<'_>, force: bool) -> i64 {
        self.with(
            py,
            |e| e.as_i32() as i64,
            |c| match c.remove_all(force) {
                Ok(n) => n as i64,
                Err(e) => e.as_i32() as i64,
            },
        )
    }

    /// Whether `[buffer_ptr, buffer_ptr + size)` lies in registered memory
    /// (used by the Python tensor helpers before they read a header there).
    fn _is_registered(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = crate::args::num)] buffer_ptr: u64,
        #[pyo3(from_py_with = crate::args::num)] size: u64,
    ) -> bool {
        self.with(py, |_| false, |c| c.is_registered(buffer_ptr, size))
    }

    // ------------------------------------------------- ranged and sessions

    /// Puts the metadata bytes followed by the data bytes as one object (both
    /// registered memory): 0 or a negative code.
    #[pyo3(signature = (key, buffer_ptr, metadata_buffer_ptr, size, metadata_size, config = None))]
    #[allow(clippy::too_many_arguments)]
    fn put_from_with_metadata(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = crate::args::key)] key: String,
        #[pyo3(from_py_with = crate::args::num)] buffer_ptr: u64,
        #[pyo3(from_py_with = crate::args::num)] metadata_buffer_ptr: u64,
        #[pyo3(from_py_with = crate::args::num)] size: u64,
        #[pyo3(from_py_with = crate::args::num)] metadata_size: u64,
        config: Option<PyRef<'_, ReplicateConfig>>,
    ) -> i32 {
        let (ptrs, sizes): (Vec<u64>, Vec<u64>) =
            [(metadata_buffer_ptr, metadata_size), (buffer_ptr, size)]
                .into_iter()
                .filter(|&(_, n)| n > 0)
                .unzip();
        self.put_scattered(py, vec![key], vec![ptrs], vec![sizes], config, false)
            .remove(0)
    }

    /// Reads ranges of objects into registered buffers: for buffer `b`, key
    /// `k`, range `r`, `all_sizes[b][k][r]` bytes at `all_src_offsets[b][k][r]`
    /// of `all_keys[b][k]` into `buffer_ptrs[b] + all_dst_offsets[b][k][r]`.
    /// Results nest the same way: bytes read per range, or a negative code.
    fn get_into_ranges(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = crate::args::nums)] buffer_ptrs: Vec<u64>,
        all_keys: Vec<Vec<String>>,
        all_dst_offsets: Vec<Vec<Vec<u64>>>,
        all_src_offsets: Vec<Vec<Vec<u64>>>,
        all_sizes: Vec<Vec<Vec<u64>>>,
    ) -> Vec<Vec<Vec<i64>>> {
        // Per (buffer, key) the number of ranges, which the answer repeats.
        let per_range = |code: i64| -> Vec<Vec<Vec<i64>>> {
            all_keys
                .iter()
                .enumerate()
                .map(|(b, keys)| {
                    (0..keys.len())
                        .map(|k| {
                            let n = all_sizes.get(b).and_then(|s| s.get(k)).map_or(0, Vec::len);
                            vec![code; n]
                        })
                        .collect()
                })
                .collect()
        };
        let Some(c) = self.connected() else {
            return per_range(NOT_READY.as_i32() as i64);
        };
        let b = buffer_ptrs.len();
        if all_keys.len() != b
            || all_dst_offsets.len() != b
            || all_src_offsets.len() != b
            || all_sizes.len() != b
        {
            return per_range(ErrorCode::InvalidParams.as_i32() as i64);
        }
        // One request per (buffer, key); a key whose lists do not line up, or
        // whose destination overflows, gets no ranges and so INVALID_PARAMS.
        let mut reads = Vec::new();
        for (bi, keys) in all_keys.iter().enumerate() {
            for (ki, key) in keys.iter().enumerate() {
                let dst = all_dst_offsets[bi].get(ki);
                let src = all_src_offsets[bi].get(ki);
                let lens = all_sizes[bi].get(ki);
                let ranges = match (dst, src, lens) {
                    (Some(d), Some(s), Some(n)) if d.len() == n.len() && s.len() == n.len() => d
                        .iter()
                        .zip(s)
                        .zip(n)
                        .map(|((&d, &offset), &len)| {
                            buffer_ptrs[bi].checked_add(d).map(|addr| ObjectRange {
                                addr,
                                offset,
                                len,
                            })
                        })
                        .collect::<Option<Vec<_>>>()
                        .unwrap_or_default(),
                    _ => Vec::new(),
                };
                reads.push(KeyRanges::new(key.clone(), ranges));
            }
        }
        let mut results = py
            .detach(|| c.clients.data().get_into_ranges(&reads))
            .into_iter();
        all_keys
            .iter()
            .enumerate()
            .map(|(bi, keys)| {
                (0..keys.len())
                    .map(|ki| {
                        let r = results.next().unwrap_or(Err(ErrorCode::InternalError));
                        let lens = all_sizes[bi].get(ki).map_or(&[][..], |s| &s[..]);
                        lens.iter()
                            .map(|&len| match r {
                                Ok(_) => len as i64,
                                Err(e) => e.as_i32() as i64,
                            })
                            .collect()
                    })
                    .collect()
            })
            .collect()
    }

    /// Opens reads: replicas and a read lease fetched once for later
    /// `batch_get_into_multi_buffer_ranges` calls. Per key 0 or a negative code.
    fn batch_get_session_start(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = crate::args::keys)] keys: Vec<String>,
    ) -> Vec<i32> {
        let n = keys.len();
        self.with(
            py,
            |e| vec![e.as_i32(); n],
            |c| codes(c.batch_get_session_start(&keys)),
        )
    }

    /// Reads ranges of objects with open get sessions: for key `i`,
    /// `all_sizes[i][j]` bytes at `all_src_offsets[i][j]` into
    /// `all_buffer_ptrs[i][j]`. Per key the bytes read or a negative code (-707
    /// once the session's lease ran out).
    fn batch_get_into_multi_buffer_ranges(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = crate::args::keys)] keys: Vec<String>,
        #[pyo3(from_py_with = crate::args::nums2)] all_buffer_ptrs: Vec<Vec<u64>>,
        #[pyo3(from_py_with = crate::args::nums2)] all_sizes: Vec<Vec<u64>>,
        #[pyo3(from_py_with = crate::args::nums2)] all_src_offsets: Vec<Vec<u64>>,
    ) -> Vec<i64> {
        let n = keys.len();
        self.with(
            py,
            |e| vec![e.as_i32() as i64; n],
            |c| match key_ranges(&keys, &all_buffer_ptrs, &all_sizes, &all_src_offsets) {
                Some(reads) => sizes_or_codes(c.batch_get_into_multi_buffer_ranges(&reads)),
                None => vec![ErrorCode::InvalidParams.as_i32() as i64; n],
            },
        )
    }

    /// Closes get sessions: 0.
    fn batch_get_session_end(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = crate::args::keys)] keys: Vec<String>,
    ) -> i32 {
        self.with(py, |e| e.as_i32(), |c| code(c.batch_get_session_end(&keys)))
    }

    /// Opens writes: space reserved for `sizes[i]` bytes, filled by
    /// `batch_put_from_multi_buffer_ranges`, readable after
    /// `batch_put_session_end`. Per key 0 or a negative code (-705 when the key
    /// exists).
    #[pyo3(signature = (keys, sizes, config = None))]
    fn batch_put_session_start(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = crate::args::keys)] keys: Vec<String>,
        #[pyo3(from_py_with = crate::args::nums)] sizes: Vec<u64>,
        config: Option<PyRef<'_, ReplicateConfig>>,
    ) -> Vec<i32> {
        let config = config_of(config);
        let n = keys.len();
        self.with(
            py,
            |e| vec![e.as_i32(); n],
            |c| {
                if keys.len() != sizes.len() {
                    return vec![ErrorCode::InvalidParams.as_i32(); n];
                }
                let objects: Vec<(String, u64)> = keys.iter().cloned().zip(sizes.clone()).collect();
                codes(c.batch_put_session_start(&objects, &config))
            },
        )
    }

    /// Writes ranges into open put sessions: for key `i`, `all_sizes[i][j]`
    /// bytes from `all_buffer_ptrs[i][j]` at `all_dst_offsets[i][j]` in the
    /// object. Per key the bytes written or a negative code.
    fn batch_put_from_multi_buffer_ranges(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = crate::args::keys)] keys: Vec<String>,
        #[pyo3(from_py_with = crate::args::nums2)] all_buffer_ptrs: Vec<Vec<u64>>,
        #[pyo3(from_py_with = crate::args::nums2)] all_sizes: Vec<Vec<u64>>,
        #[pyo3(from_py_with = crate::args::nums2)] all_dst_offsets: Vec<Vec<u64>>,
    ) -> Vec<i64> {
        let n = keys.len();
        self.with(
            py,
            |e| vec![e.as_i32() as i64; n],
            |c| match key_ranges(&keys, &all_buffer_ptrs, &all_sizes, &all_dst_offsets) {
                Some(writes) => sizes_or_codes(c.batch_put_from_multi_buffer_ranges(&writes)),
                None => vec![ErrorCode::InvalidParams.as_i32() as i64; n],
            },
        )
    }

    /// Makes put sessions readable; per key 0 or a negative code.
    fn batch_put_session_end(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = crate::args::keys)] keys: Vec<String>,
    ) -> Vec<i32> {
        let n = keys.len();
        self.with(
            py,
            |e| vec![e.as_i32(); n],
            |c| codes(c.batch_put_session_end(&keys)),
        )
    }

    /// Abandons put sessions; per key 0 or a negative code.
    fn batch_put_session_revoke(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = crate::args::keys)] keys: Vec<String>,
    ) -> Vec<i32> {
        let n = keys.len();
        self.with(
            py,
            |e| vec![e.as_i32(); n],
            |c| codes(c.batch_put_session_revoke(&keys)),
        )
    }

    fn __repr__(&self) -> String {
        match self.connected() {
            Some(c) if c.background.is_some() && c.clients.routed() => {
                "MooncakeDistributedStore(in-process client, calls via the host's real client)"
                    .into()
            }
            Some(c) if c.background.is_some() => {
                "MooncakeDistributedStore(in-process client)".into()
            }
            Some(_) => "MooncakeDistributedStore(dummy client)".into(),
            None => "MooncakeDistributedStore(not set up)".into(),
        }
    }
}

fn first_error(results: Vec<i32>) -> i32 {
    results.into_iter().find(|&r| r < 0).unwrap_or(0)
}

impl MooncakeDistributedStore {
    /// The zero-copy put family: per key 0 or a negative code.
    fn put_registered(
        &self,
        py: Python<'_>,
        keys: Vec<String>,
        ptrs: Vec<u64>,
        sizes: Vec<u64>,
        config: Option<PyRef<'_, ReplicateConfig>>,
        upsert: bool,
    ) -> Vec<i32> {
        let config = config_of(config);
        let n = keys.len();
        self.with(
            py,
            |e| vec![e.as_i32(); n],
            |c| match items(&keys, &ptrs, &sizes) {
                Some(items) => codes(c.batch_put_from(&items, &config, upsert)),
                None => vec![ErrorCode::InvalidParams.as_i32(); n],
            },
        )
    }

    /// The scatter-gather put family: per key 0 or a negative code.
    fn put_scattered(
        &self,
        py: Python<'_>,
        keys: Vec<String>,
        ptrs: Vec<Vec<u64>>,
        sizes: Vec<Vec<u64>>,
        config: Option<PyRef<'_, ReplicateConfig>>,
        upsert: bool,
    ) -> Vec<i32> {
        let config = config_of(config);
        let n = keys.len();
        self.with(
            py,
            |e| vec![e.as_i32(); n],
            |c| match scattered_items(&keys, &ptrs, &sizes) {
                Some(items) => codes(c.batch_put_from(&items, &config, upsert)),
                None => vec![ErrorCode::InvalidParams.as_i32(); n],
            },
        )
    }

    fn put_values(
        &self,
        py: Python<'_>,
        keys: Vec<String>,
        values: &[Bound<'_, PyAny>],
        config: Option<PyRef<'_, ReplicateConfig>>,
        upsert: bool,
    ) -> PyResult<Vec<i32>> {
        if keys.len() != values.len() {
            return Ok(vec![ErrorCode::InvalidParams.as_i32(); keys.len()]);
        }
        let views = views(values)?;
        let config = config_of(config);
        let n = keys.len();
        Ok(self.with(
            py,
            |e| vec![e.as_i32(); n],
            |c| {
                let objects: Vec<(&str, &[u8])> = keys
                    .iter()
                    .map(String::as_str)
                    .zip(views.iter().map(ByteView::as_slice))
                    .collect();
                codes(c.batch_put(&objects, &config, upsert))
            },
        ))
    }

    fn parts(
        &self,
        py: Python<'_>,
        key: String,
        parts: &Bound<'_, PyTuple>,
        config: Option<PyRef<'_, ReplicateConfig>>,
        upsert: bool,
    ) -> PyResult<i32> {
        let items: Vec<Bound<'_, PyAny>> = parts.iter().collect();
        let views = views(&items)?;
        let config = config_of(config);
        Ok(self.with(
            py,
            |e| e.as_i32(),
            |c| {
                let slices: Vec<&[u8]> = views.iter().map(ByteView::as_slice).collect();
                if upsert {
                    code(c.upsert_parts(&key, &slices, &config))
                } else {
                    code(c.put_parts(&key, &slices, &config))
                }
            },
        ))
    }
}

/// Upstream's `(task_id, error)` pair for a task creation.
fn task_created(r: MResult<mooncake_proto::TaskId>) -> (PyTaskId, i32) {
    match r {
        Ok(id) => (id.as_u64_pair(), 0),
        Err(e) => ((0, 0), e.as_i32()),
    }
}
