//! The small classes of `mooncake.store`: `ReplicateConfig`, the enums
//! (`SoftPinAction`, `ObjectDataType`, `ReplicaStatus`, `TaskType`, `TaskStatus`),
//! `ReplicaDescriptor` with its `MemoryDescriptor` / `Descriptor`, `BufferHandle`
//! and `MooncakeHostMemAllocator`, with upstream's names, values, attributes and
//! return conventions.

use std::os::raw::c_int;

use pyo3::ffi;
use pyo3::prelude::*;

use mooncake_proto::{Medium, ReplicaDesc};

/// What an upsert does with an existing soft pin (upstream's values).
#[pyclass(eq, eq_int, module = "mooncake.store", from_py_object)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SoftPinAction {
    /// Keep the object's soft pin as it is.
    #[default]
    PRESERVE = 0,
    /// Soft-pin the object.
    ENABLE = 1,
    /// Remove the soft pin.
    DISABLE = 2,
}

impl From<SoftPinAction> for mooncake_proto::SoftPinAction {
    fn from(a: SoftPinAction) -> Self {
        match a {
            SoftPinAction::PRESERVE => mooncake_proto::SoftPinAction::Preserve,
            SoftPinAction::ENABLE => mooncake_proto::SoftPinAction::Enable,
            SoftPinAction::DISABLE => mooncake_proto::SoftPinAction::Disable,
        }
    }
}

/// What an object holds (upstream's `ObjectDataType`, same names and values):
/// a placement and accounting hint.
#[pyclass(eq, eq_int, module = "mooncake.store", from_py_object)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[allow(missing_docs, non_camel_case_types)]
pub enum ObjectDataType {
    #[default]
    UNKNOWN = 0,
    KVCACHE = 1,
    TENSOR = 2,
    WEIGHT = 3,
    SAMPLE = 4,
    ACTIVATION = 5,
    GRADIENT = 6,
    OPTIMIZER_STATE = 7,
    METADATA = 8,
    GENERAL = 9,
}

/// State of a replica (upstream's `ReplicaStatus`, same names and values).
#[pyclass(eq, eq_int, module = "mooncake.store", from_py_object)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs, non_camel_case_types)]
pub enum ReplicaStatus {
    UNDEFINED = 0,
    INITIALIZED = 1,
    PROCESSING = 2,
    COMPLETE = 3,
    REMOVED = 4,
    FAILED = 5,
}

impl From<mooncake_proto::ReplicaStatus> for ReplicaStatus {
    fn from(s: mooncake_proto::ReplicaStatus) -> Self {
        use mooncake_proto::ReplicaStatus as P;
        match s {
            P::Undefined => ReplicaStatus::UNDEFINED,
            P::Initialized => ReplicaStatus::INITIALIZED,
            P::Processing => ReplicaStatus::PROCESSING,
            P::Complete => ReplicaStatus::COMPLETE,
            P::Removed => ReplicaStatus::REMOVED,
            P::Failed => ReplicaStatus::FAILED,
        }
    }
}

/// Kind of a replica task (upstream's `TaskType`).
#[pyclass(eq, eq_int, module = "mooncake.store", from_py_object)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs, non_camel_case_types)]
pub enum TaskType {
    REPLICA_COPY = 0,
    REPLICA_MOVE = 1,
}

/// State of a replica task (upstream's `TaskStatus`).
#[pyclass(eq, eq_int, module = "mooncake.store", from_py_object)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs, non_camel_case_types)]
pub enum TaskStatus {
    PENDING = 0,
    PROCESSING = 1,
    // Upstream's values (checked against its wheel): FAILED before SUCCESS.
    FAILED = 2,
    SUCCESS = 3,
}

/// `name` and `value` as on upstream's pybind11 enums.
macro_rules! enum_name_value {
    ($($t:ty),*) => {$(
        #[pymethods]
        impl $t {
            /// The member's name.
            #[getter]
            fn name(&self) -> String {
                format!("{self:?}")
            }
            /// The member's integer value.
            #[getter]
            fn value(&self) -> i64 {
                *self as i64
            }
        }
    )*};
}
enum_name_value!(
    SoftPinAction,
    ObjectDataType,
    ReplicaStatus,
    TaskType,
    TaskStatus
);

/// How an object is stored: `replica_num` copies on distinct segments, pins,
/// preferred segments. Every attribute is readable and writable, and visible on the
/// class itself (`hasattr(ReplicateConfig, "group_ids")` is true: SGLang probes it).
#[pyclass(module = "mooncake.store", from_py_object)]
#[derive(Debug, Clone)]
pub struct ReplicateConfig {
    /// Number of memory replicas.
    #[pyo3(get)]
    pub replica_num: usize,
    /// Soft-pin the object.
    #[pyo3(get, set)]
    pub with_soft_pin: bool,
    /// Soft-pin lifetime in ms (`None`: the master's default).
    #[pyo3(get)]
    pub soft_pin_ttl_ms: Option<u64>,
    /// Soft-pin handling of upserts.
    #[pyo3(get, set)]
    pub soft_pin_action: SoftPinAction,
    /// Never evict.
    #[pyo3(get, set)]
    pub with_hard_pin: bool,
    /// Segment to place the first replica on (deprecated single form).
    #[pyo3(get, set)]
    pub preferred_segment: String,
    /// Segments to try first, in order.
    #[pyo3(get, set)]
    pub preferred_segments: Vec<String>,
    /// Prefer this host's segment.
    #[pyo3(get, set)]
    pub prefer_alloc_in_same_node: bool,
    /// One group id per key of a batch (accepted; SGLang's group semantics).
    #[pyo3(get, set)]
    pub group_ids: Vec<String>,
    /// What the object holds (a hint; recorded by upstream, accepted here).
    #[pyo3(get, set)]
    pub data_type: ObjectDataType,
    /// NVMe-oF replicas (accepted; no such tier in this build).
    #[pyo3(get)]
    pub nof_replica_num: usize,
    /// DFS replicas (accepted; no such tier in this build).
    #[pyo3(get)]
    pub dfs_replica_num: usize,
}

impl Default for ReplicateConfig {
    fn default() -> Self {
        ReplicateConfig {
            replica_num: 1,
            with_soft_pin: false,
            soft_pin_ttl_ms: None,
            soft_pin_action: SoftPinAction::PRESERVE,
            with_hard_pin: false,
            preferred_segment: String::new(),
            preferred_segments: Vec::new(),
            prefer_alloc_in_same_node: false,
            group_ids: Vec::new(),
            data_type: ObjectDataType::UNKNOWN,
            nof_replica_num: 0,
            dfs_replica_num: 0,
        }
    }
}

/// An integer attribute: like upstream's binding, a value out of range or of the
/// wrong type is a `TypeError` (not an `OverflowError`).
fn int_attr<T: for<'a, 'py> pyo3::FromPyObject<'a, 'py>>(
    value: &Bound<'_, PyAny>,
    name: &str,
) -> PyResult<T> {
    value.extract::<T>().map_err(|_| {
        pyo3::exceptions::PyTypeError::new_err(format!(
            "ReplicateConfig.{name}: incompatible value {value}; expected a non-negative integer in range"
        ))
    })
}

#[pymethods]
impl ReplicateConfig {
    #[new]
    fn py_new() -> Self {
        Self::default()
    }

    #[setter]
    fn set_replica_num(&mut self, value: &Bound<'_, PyAny>) -> PyResult<()> {
        self.replica_num = int_attr(value, "replica_num")?;
        Ok(())
    }

    #[setter]
    fn set_soft_pin_ttl_ms(&mut self, value: &Bound<'_, PyAny>) -> PyResult<()> {
        self.soft_pin_ttl_ms = if value.is_none() {
            None
        } else {
            Some(int_attr(value, "soft_pin_ttl_ms")?)
        };
        Ok(())
    }

    #[setter]
    fn set_nof_replica_num(&mut self, value: &Bound<'_, PyAny>) -> PyResult<()> {
        self.nof_replica_num = int_attr(value, "nof_replica_num")?;
        Ok(())
    }

    #[setter]
    fn set_dfs_replica_num(&mut self, value: &Bound<'_, PyAny>) -> PyResult<()> {
        self.dfs_replica_num = int_attr(value, "dfs_replica_num")?;
        Ok(())
    }

    fn __repr__(&self) -> String {
        format!(
            "ReplicateConfig(replica_num={}, with_soft_pin={}, with_hard_pin={}, preferred_segments={:?}, prefer_alloc_in_same_node={}, data_type={:?})",
            self.replica_num,
            self.with_soft_pin,
            self.with_hard_pin,
            self.segments(),
            self.prefer_alloc_in_same_node,
            self.data_type
        )
    }

    fn __str__(&self) -> String {
        self.__repr__()
    }
}

impl ReplicateConfig {
    fn segments(&self) -> Vec<String> {
        if !self.preferred_segments.is_empty() {
            self.preferred_segments.clone()
        } else if !self.preferred_segment.is_empty() {
            vec![self.preferred_segment.clone()]
        } else {
            Vec::new()
        }
    }

    /// The wire form.
    pub fn to_proto(&self) -> mooncake_proto::ReplicateConfig {
        mooncake_proto::ReplicateConfig {
            replica_num: self.replica_num.min(u32::MAX as usize) as u32,
            with_soft_pin: self.with_soft_pin,
            soft_pin_ttl_ms: self.soft_pin_ttl_ms,
            soft_pin_action: self.soft_pin_action.into(),
            with_hard_pin: self.with_hard_pin,
            preferred_segments: self.segments(),
            prefer_alloc_in_same_node: self.prefer_alloc_in_same_node,
            group_ids: self.group_ids.clone(),
        }
    }
}

/// Upstream's `AllocatedBuffer::Descriptor` (exported as `Descriptor`): where a
/// memory replica's bytes are.
#[pyclass(
    name = "Descriptor",
    module = "mooncake.store",
    get_all,
    set_all,
    from_py_object
)]
#[derive(Debug, Clone, Default)]
pub struct BufferDescriptor {
    /// Object size in bytes.
    pub size: u64,
    /// Address of the bytes in the owner's segment.
    pub buffer_address: u64,
    /// Transfer endpoint of the segment's owner (`host:port`).
    pub transport_endpoint: String,
}

#[pymethods]
impl BufferDescriptor {
    #[new]
    fn py_new() -> Self {
        Self::default()
    }
    fn __repr__(&self) -> String {
        format!(
            "<Descriptor size={} buffer_address={} transport_endpoint={}>",
            self.size, self.buffer_address, self.transport_endpoint
        )
    }
}

/// Upstream's `MemoryDescriptor`: a memory replica's buffer.
#[pyclass(module = "mooncake.store", get_all, from_py_object)]
#[derive(Debug, Clone)]
pub struct MemoryDescriptor {
    /// The buffer.
    pub buffer_descriptor: BufferDescriptor,
}

/// Where one replica of an object lives: in memory, or in a real client's disk
/// tier. Upstream's shape (`status`, `is_memory_replica()`, `get_memory_descriptor()
/// .buffer_descriptor.{buffer_address, size, transport_endpoint}`), plus the
/// same facts as flat attributes.
#[pyclass(module = "mooncake.store", get_all, skip_from_py_object)]
#[derive(Debug, Clone)]
pub struct ReplicaDescriptor {
    /// Name of the segment holding the bytes.
    pub segment_name: String,
    /// Transfer endpoint of the segment's owner (`host:port`).
    pub transport_endpoint: String,
    /// Address of the bytes in the owner's segment (upstream's `buffer_address`).
    pub buffer_address: u64,
    /// Object size in bytes.
    pub size: u64,
    /// Replica state.
    pub status: ReplicaStatus,
    /// `MEMORY`, or `LOCAL_DISK` for a copy in a real client's disk tier (then
    /// `buffer_address` is an address in that client's mapping of its disk file).
    pub medium: String,
}

impl From<&ReplicaDesc> for ReplicaDescriptor {
    fn from(r: &ReplicaDesc) -> Self {
        ReplicaDescriptor {
            segment_name: r.segment_name.clone(),
            transport_endpoint: r.transport_endpoint.clone(),
            buffer_address: r.buffer_address,
            size: r.size,
            status: r.status.into(),
            medium: r.medium.as_str().to_string(),
        }
    }
}

#[pymethods]
impl ReplicaDescriptor {
    /// Whether the replica is in memory.
    fn is_memory_replica(&self) -> bool {
        self.medium == Medium::Memory.as_str()
    }
    /// False: upstream's shared-filesystem replicas do not exist here.
    fn is_disk_replica(&self) -> bool {
        false
    }
    /// Whether the replica is in a real client's disk tier (upstream's LOCAL_DISK).
    fn is_local_disk_replica(&self) -> bool {
        self.medium == Medium::Disk.as_str()
    }
    /// The memory replica's buffer (a RuntimeError for a disk-tier replica, as
    /// upstream raises for a replica of another kind).
    fn get_memory_descriptor(&self) -> PyResult<MemoryDescriptor> {
        if !self.is_memory_replica() {
            return Err(pyo3::exceptions::PyRuntimeError::new_err(
                "not a memory replica (is_local_disk_replica() is true)",
            ));
        }
        Ok(MemoryDescriptor {
            buffer_descriptor: BufferDescriptor {
                size: self.size,
                buffer_address: self.buffer_address,
                transport_endpoint: self.transport_endpoint.clone(),
            },
        })
    }
    fn __repr__(&self) -> String {
        format!(
            "ReplicaDescriptor({}, segment={:?}, endpoint={:?}, address={:#x}, size={}, status={:?})",
            self.medium.to_lowercase(),
            self.segment_name,
            self.transport_endpoint,
            self.buffer_address,
            self.size,
            self.status
        )
    }
}

/// An object's bytes owned by Python: supports the buffer protocol (`memoryview`,
/// `bytes(h)`, numpy, torch), writable like upstream's (LMCache wraps it in a
/// tensor), with `len()`, `ptr()` and `size()`.
#[pyclass(module = "mooncake.store", frozen, skip_from_py_object)]
pub struct BufferHandle {
    /// The bytes, owned (from a boxed slice); written only through buffer views.
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: the handle owns its bytes exclusively; Rust code only reads `ptr` and
// `len`, never the bytes, so sharing the handle between threads cannot race on
// them from this side (Python consumers synchronise their own writes, as with any
// writable buffer).
unsafe impl Send for BufferHandle {}
// SAFETY: see `Send`.
unsafe impl Sync for BufferHandle {}

impl BufferHandle {
    /// Takes ownership of `data`.
    pub fn new(data: Vec<u8>) -> Self {
        let len = data.len();
        let raw = Box::into_raw(data.into_boxed_slice()) as *mut u8;
        BufferHandle {
            ptr: std::ptr::NonNull::new(raw).unwrap_or(std::ptr::NonNull::dangling()),
            len,
        }
    }
}

impl Drop for BufferHandle {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` came from `Box::into_raw` of a boxed slice of exactly
        // `len` bytes in `new` and are freed only here, once; no view outlives the
        // handle (each view holds a reference to it).
        unsafe {
            drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                self.ptr.as_ptr(),
                self.len,
            )));
        }
    }
}

#[pymethods]
impl BufferHandle {
    /// Address of the first byte (valid while this handle lives).
    fn ptr(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }
    /// Size in bytes.
    fn size(&self) -> usize {
        self.len
    }
    fn __len__(&self) -> usize {
        self.len
    }
    fn __repr__(&self) -> String {
        format!("BufferHandle(size={})", self.len)
    }

    /// Buffer protocol: a writable view of the bytes.
    ///
    /// # Safety
    /// Called by CPython with a valid `view` to fill.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let (ptr, len) = (slf.get().ptr, slf.get().len);
        // SAFETY: `view` is CPython's to fill; the bytes are owned by the handle,
        // never moved or resized, and kept alive by the reference to `slf` the view
        // holds (`PyBuffer_FillInfo` takes it).
        let rc = unsafe {
            ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                ptr.as_ptr() as *mut std::os::raw::c_void,
                len as ffi::Py_ssize_t,
                0,
                flags,
            )
        };
        if rc != 0 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }
}

/// Shareable host memory (memfd, `MAP_SHARED`, prefaulted; huge pages with
/// `MC_STORE_USE_HUGEPAGE=1`), usable before any setup. Memory from here can be
/// registered with a store in dummy mode: the real client maps it.
#[pyclass(module = "mooncake.store")]
#[derive(Default)]
pub struct MooncakeHostMemAllocator;

#[pymethods]
impl MooncakeHostMemAllocator {
    #[new]
    fn py_new() -> Self {
        MooncakeHostMemAllocator
    }

    /// Allocates `size` bytes; the address, or 0 when it cannot.
    fn alloc(&self, py: Python<'_>, #[pyo3(from_py_with = crate::args::num)] size: u64) -> u64 {
        py.detach(|| crate::setup::host_memory().alloc(size).unwrap_or(0))
    }

    /// Frees an allocation by address: 0, or -600 for an unknown address.
    fn free(&self, py: Python<'_>, #[pyo3(from_py_with = crate::args::num)] ptr: u64) -> i32 {
        py.detach(|| match crate::setup::host_memory().free(ptr) {
            Ok(()) => 0,
            Err(e) => e.as_i32(),
        })
    }
}

/// A task id as upstream's Python binding shows it: the UUID's two 64-bit halves.
pub type PyTaskId = (u64, u64);

/// Upstream's `QueryTaskResponse`: a replica task's state.
#[pyclass(module = "mooncake.store", get_all, skip_from_py_object)]
#[derive(Debug, Clone)]
pub struct QueryTaskResponse {
    /// The task id, `(high, low)` halves of its UUID.
    pub id: PyTaskId,
    /// Copy or move.
    pub r#type: TaskType,
    /// Where it stands.
    pub status: TaskStatus,
    /// Creation time, ms since the Unix epoch.
    pub created_at_ms_epoch: i64,
    /// Last change, ms since the Unix epoch.
    pub last_updated_at_ms_epoch: i64,
    /// The client running the task, `(high, low)` halves of its UUID.
    pub assigned_client: PyTaskId,
    /// "Task completed successfully" or why it failed.
    pub message: String,
}

impl From<&mooncake_proto::TaskInfo> for QueryTaskResponse {
    fn from(t: &mooncake_proto::TaskInfo) -> Self {
        QueryTaskResponse {
            id: t.id.as_u64_pair(),
            r#type: match t.kind {
                mooncake_proto::TaskKind::ReplicaCopy => TaskType::REPLICA_COPY,
                mooncake_proto::TaskKind::ReplicaMove => TaskType::REPLICA_MOVE,
            },
            status: match t.state {
                mooncake_proto::TaskState::Pending => TaskStatus::PENDING,
                mooncake_proto::TaskState::Processing => TaskStatus::PROCESSING,
                mooncake_proto::TaskState::Success => TaskStatus::SUCCESS,
                mooncake_proto::TaskState::Failed => TaskStatus::FAILED,
            },
            created_at_ms_epoch: t.created_at_ms,
            last_updated_at_ms_epoch: t.updated_at_ms,
            assigned_client: t.assigned_client.as_u64_pair(),
            message: t.message.clone(),
        }
    }
}

#[pymethods]
impl QueryTaskResponse {
    fn __repr__(&self) -> String {
        format!(
            "QueryTaskResponse(id={:?}, type={:?}, status={:?}, message={:?})",
            self.id, self.r#type, self.status, self.message
        )
    }
}
