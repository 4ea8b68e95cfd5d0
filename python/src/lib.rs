//! The native half of the drop-in Python package: `mooncake._native`, re-exported
//! by `mooncake.store` (pure Python adds the tensor helpers on top). One native
//! library serves everything, including the console scripts `mooncake_master`,
//! `mooncake_client` and `mooncake_http_metadata_server`.
//!
//! Conventions (upstream's, which engines rely on): store failures never raise —
//! they come back as upstream's negative error codes, and batch calls return lists
//! exactly as long as their key lists. Only malformed Python input (a value that is
//! not a bytes-like object, a missing positional argument) raises `TypeError`. The
//! GIL is released around every call into the store; calls are safe from many threads.
//!
//! # Layout
//!
//! - [`store`] holds `MooncakeDistributedStore`.
//! - [`setup`] parses the arguments of `setup(...)`, `setup(dict)` and `setup_dummy(...)`.
//! - [`types`] holds `ReplicateConfig`, the enums, `ReplicaDescriptor`,
//!   `BufferHandle` and `MooncakeHostMemAllocator`.
//! - [`pybuf`] reads bytes-like Python values in place.

pub mod args;
pub mod pybuf;
pub mod setup;
pub mod store;
pub mod types;

use pyo3::prelude::*;

/// Logs warnings and errors to stderr (`MOONCAKE_LOG` overrides the filter); the
/// console scripts set up their own, more verbose, logging first.
pub(crate) fn init_library_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MOONCAKE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Runs a command line with the GIL released; returns its exit status.
fn run_command(
    py: Python<'_>,
    main: fn(Vec<String>) -> std::process::ExitCode,
    argv: Vec<String>,
) -> i32 {
    let code = py.detach(move || main(argv));
    if code == std::process::ExitCode::SUCCESS {
        0
    } else {
        1
    }
}

/// `mooncake_master` with these arguments (`argv[0]` is the program name).
#[pyfunction]
fn master_main(py: Python<'_>, argv: Vec<String>) -> i32 {
    run_command(py, mooncake_master::cli::master_main, argv)
}

/// `mooncake_client` with these arguments.
#[pyfunction]
fn client_main(py: Python<'_>, argv: Vec<String>) -> i32 {
    run_command(py, mooncake_realclient::cli::client_main, argv)
}

/// `mooncake` (the operator's command) with these arguments.
#[pyfunction]
fn admin_main(py: Python<'_>, argv: Vec<String>) -> i32 {
    run_command(py, mooncake_realclient::admin::admin_main, argv)
}

/// `mooncake_http_metadata_server` with these arguments.
#[pyfunction]
fn metadata_server_main(py: Python<'_>, argv: Vec<String>) -> i32 {
    run_command(py, mooncake_master::cli::metadata_server_main, argv)
}

/// Upstream's error code name for a number (`-704` → `"OBJECT_NOT_FOUND"`).
#[pyfunction]
fn error_name(code: i32) -> String {
    match mooncake_proto::ErrorCode::from_i32(code) {
        Some(c) => c.name().to_string(),
        None if code >= 0 => "OK".to_string(),
        None => format!("UNKNOWN({code})"),
    }
}

/// Upstream's NoF (NVMe-over-Fabrics) hugepage allocator, whose address
/// `get_alloc_func_addr` gives: without NoF (upstream's non-NoF wheels, and this
/// build) it has no memory to give and returns null.
extern "C" fn hugepage_memory_alloc(_size: usize) -> *mut std::ffi::c_void {
    std::ptr::null_mut()
}

/// The matching free: nothing was allocated, so nothing to do.
extern "C" fn hugepage_memory_free(_ptr: *mut std::ffi::c_void) {}

/// Address of `void* hugepage_memory_alloc(size_t)`, as upstream.
#[pyfunction]
fn get_alloc_func_addr() -> usize {
    hugepage_memory_alloc as extern "C" fn(usize) -> *mut std::ffi::c_void as usize
}

/// Address of `void hugepage_memory_free(void*)`, as upstream.
#[pyfunction]
fn get_free_func_addr() -> usize {
    hugepage_memory_free as extern "C" fn(*mut std::ffi::c_void) as usize
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<store::MooncakeDistributedStore>()?;
    m.add_class::<types::ReplicateConfig>()?;
    m.add_class::<types::SoftPinAction>()?;
    m.add_class::<types::ReplicaDescriptor>()?;
    m.add_class::<types::MemoryDescriptor>()?;
    m.add_class::<types::BufferDescriptor>()?;
    m.add_class::<types::ObjectDataType>()?;
    m.add_class::<types::ReplicaStatus>()?;
    m.add_class::<types::TaskType>()?;
    m.add_class::<types::TaskStatus>()?;
    m.add_class::<types::QueryTaskResponse>()?;
    m.add_class::<types::BufferHandle>()?;
    m.add_class::<types::MooncakeHostMemAllocator>()?;
    m.add_function(wrap_pyfunction!(master_main, m)?)?;
    m.add_function(wrap_pyfunction!(client_main, m)?)?;
    m.add_function(wrap_pyfunction!(admin_main, m)?)?;
    m.add_function(wrap_pyfunction!(metadata_server_main, m)?)?;
    m.add_function(wrap_pyfunction!(error_name, m)?)?;
    m.add_function(wrap_pyfunction!(get_alloc_func_addr, m)?)?;
    m.add_function(wrap_pyfunction!(get_free_func_addr, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
