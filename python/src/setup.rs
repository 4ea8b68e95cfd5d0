//! The arguments of `setup(...)`, `setup(dict)` and `setup_dummy(...)`, checked and
//! turned into what starts a client. Both spellings engines use are accepted
//! (`rdma_devices` / `device_name`, `master_server_addr` / `master_server_address`),
//! sizes may be ints or strings such as `"4gb"`.

#![allow(clippy::disallowed_methods)] // reads its settings from the environment

use std::path::PathBuf;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use mooncake_proto::units::parse_size;
use mooncake_realclient::config::default_socket_path;
pub use mooncake_store::SetupArgs;

/// Upstream's default segment and local buffer sizes for the dict form.
const DEFAULT_SEGMENT: u64 = 3_355_443_200;
const DEFAULT_LOCAL_BUFFER: u64 = 1 << 30;

/// A size given as an int or a string (`"4gb"`, `"4 GB"`, `"1073741824"`).
pub fn size_from_py(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<u64> {
    if let Ok(n) = obj.extract::<u64>() {
        return Ok(n);
    }
    if let Ok(s) = obj.extract::<String>() {
        // A string that is no size is a bad value (a failure code), not a bad type.
        return parse_size(&s)
            .map_err(|e| pyo3::exceptions::PyValueError::new_err(format!("{what}: {e}")));
    }
    Err(PyTypeError::new_err(format!(
        "{what}: expected a byte count (int or a string such as \"4gb\")"
    )))
}

fn bool_from_str(s: &str) -> bool {
    matches!(
        s.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "on"
    )
}

fn str_of(obj: &Bound<'_, PyAny>) -> PyResult<String> {
    match obj.extract::<String>() {
        Ok(s) => Ok(s),
        Err(_) => Ok(obj.str()?.to_string()),
    }
}

/// `setup`'s dict form (LMCache): every value may be a string.
pub fn setup_args_from_dict(d: &Bound<'_, PyDict>) -> PyResult<SetupArgs> {
    let get = |names: &[&str]| -> PyResult<Option<Bound<'_, PyAny>>> {
        for n in names {
            if let Some(v) = d.get_item(n)?
                && !v.is_none()
            {
                return Ok(Some(v));
            }
        }
        Ok(None)
    };
    let text = |names: &[&str], default: &str| -> PyResult<String> {
        match get(names)? {
            Some(v) => str_of(&v),
            None => Ok(default.to_string()),
        }
    };
    let flag = |name: &str| -> PyResult<bool> {
        match get(&[name])? {
            Some(v) => match v.extract::<bool>() {
                Ok(b) => Ok(b),
                Err(_) => Ok(bool_from_str(&str_of(&v)?)),
            },
            None => Ok(false),
        }
    };
    Ok(SetupArgs {
        local_hostname: text(&["local_hostname"], "localhost")?,
        metadata_server: text(&["metadata_server"], "P2PHANDSHAKE")?,
        global_segment_size: match get(&["global_segment_size"])? {
            Some(v) => size_from_py(&v, "global_segment_size")?,
            None => DEFAULT_SEGMENT,
        },
        local_buffer_size: match get(&["local_buffer_size"])? {
            Some(v) => size_from_py(&v, "local_buffer_size")?,
            None => DEFAULT_LOCAL_BUFFER,
        },
        protocol: text(&["protocol"], "tcp")?,
        rdma_devices: text(&["rdma_devices", "device_name", "device_names"], "")?,
        master_server_addr: text(
            &["master_server_addr", "master_server_address"],
            "127.0.0.1:50051",
        )?,
        ipc_socket_path: get(&["ipc_socket_path"])?
            .map(|v| str_of(&v))
            .transpose()?
            .filter(|s| !s.is_empty())
            .map(PathBuf::from),
        enable_client_http_server: flag("enable_client_http_server")?,
        client_http_port: match get(&["client_http_port"])? {
            Some(v) => str_of(&v)?
                .trim()
                .parse()
                .map_err(|_| PyTypeError::new_err("client_http_port: expected a port number"))?,
            None => 9300,
        },
        enable_ssd_offload: flag("enable_ssd_offload")?,
        ssd_offload_path: text(&["ssd_offload_path"], "")?,
        ssd_offload_size: None,
        tenant_id: text(&["tenant_id"], "default")?,
        cluster_id: cluster_id_from_env(),
    })
}

/// The in-process real client's configuration for `args`, with the settings this
/// process's environment gives; an error message for settings this build cannot honour.
pub fn client_config(
    args: &SetupArgs,
) -> Result<mooncake_realclient::RealClientConfig, mooncake_store::setup::SetupError> {
    let mut args = args.clone();
    if args.ssd_offload_path.trim().is_empty() {
        args.ssd_offload_path = var("MOONCAKE_OFFLOAD_FILE_STORAGE_PATH").unwrap_or_default();
    }
    if args.ssd_offload_size.is_none() {
        args.ssd_offload_size = var("MOONCAKE_OFFLOAD_TOTAL_SIZE_LIMIT_BYTES")
            .and_then(|v| mooncake_proto::units::parse_size(&v).ok());
    }
    let mut config = args.client_config()?;
    config.cluster_token = cluster_token();
    config.region = region_options();
    config.transfer_sockbuf = transfer_sockbuf();
    config.same_host_transfers = same_host_transfers();
    Ok(config)
}

/// Whether transfers with real clients on this host copy through their mapped
/// segments (`--same_host_transfers`): `MC_SAME_HOST_TRANSFERS=0` keeps them on TCP.
pub fn same_host_transfers() -> bool {
    !matches!(
        var("MC_SAME_HOST_TRANSFERS").as_deref().map(str::trim),
        Some("0" | "false" | "off" | "no")
    )
}

// The process environment is read here and in the command lines only; everything
// below this module takes settings in config structs.

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Whether `setup()` without a segment sends its calls to a real client on this
/// host: `MC_HOST_REAL_CLIENT` (`auto`, the default; `off`; `host:port` or a
/// socket path). A value that names nothing is reported and read as `off`.
pub fn host_route() -> mooncake_store::HostRoute {
    let value = var("MC_HOST_REAL_CLIENT");
    mooncake_store::HostRoute::parse(value.as_deref()).unwrap_or_else(|e| {
        tracing::warn!("MC_HOST_REAL_CLIENT: {e}; calls go through this process's client");
        mooncake_store::HostRoute::Off
    })
}

/// `MOONCAKE_CLUSTER_TOKEN`, or none.
pub fn cluster_token() -> String {
    var("MOONCAKE_CLUSTER_TOKEN").unwrap_or_default()
}

/// How memory regions are made: huge pages from upstream's `MC_STORE_USE_HUGEPAGE`
/// and `MC_STORE_HUGEPAGE_SIZE`.
pub fn region_options() -> mooncake_dummyclient::RegionOptions {
    mooncake_dummyclient::RegionOptions::from_vars(var)
}

/// Host memory for `MooncakeHostMemAllocator` and `alloc_from_mem_pool`.
pub fn host_memory() -> mooncake_dummyclient::HostMemAllocator {
    mooncake_dummyclient::HostMemAllocator::with_options(region_options())
}

/// Socket buffer size for transfers: `MC_TRANSFER_SOCKBUF` (0 = kernel autotuning).
pub fn transfer_sockbuf() -> usize {
    var("MC_TRANSFER_SOCKBUF")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(mooncake_realclient::transfer::tcp::DEFAULT_SOCKBUF)
}

/// Options of a dummy connection: `MC_DISABLE_CALL_RING` forces the socket;
/// `MC_RING_SPIN_US` sets how long a call spins for its answer on the call ring
/// before the caller sleeps (default 50 µs, 300 µs for `setup()`'s client in this
/// process).
pub fn dummy_options() -> mooncake_dummyclient::ConnectOptions {
    let spin = var("MC_RING_SPIN_US")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(std::time::Duration::from_micros);
    mooncake_dummyclient::ConnectOptions::default()
        .with_call_ring(std::env::var_os("MC_DISABLE_CALL_RING").is_none())
        .with_ring_spin(spin)
}

/// The socket of the real client `setup_dummy` was pointed at: `host:port` names
/// the default socket of the real client started with `--port`; a path is used as
/// is; `MOONCAKE_IPC_SOCKET_PATH` overrides both (for `--ipc_socket_path`).
pub fn dummy_socket(server_address: &str) -> Result<PathBuf, String> {
    if let Some(p) = var("MOONCAKE_IPC_SOCKET_PATH")
        && !p.is_empty()
    {
        return Ok(PathBuf::from(p));
    }
    let a = server_address.trim();
    if a.contains('/') {
        return Ok(PathBuf::from(a));
    }
    let port = match a.rsplit_once(':') {
        Some((_, p)) => p
            .parse::<u16>()
            .map_err(|_| format!("server address {a:?}: expected host:port"))?,
        None if a.is_empty() => 50052,
        None => a
            .parse::<u16>()
            .map_err(|_| format!("server address {a:?}: expected host:port"))?,
    };
    Ok(default_socket_path(port))
}

/// The HA cluster an `etcd://` master address names, as upstream's clients read
/// it: `MC_STORE_CLUSTER_ID`.
pub fn cluster_id_from_env() -> Option<String> {
    std::env::var("MC_STORE_CLUSTER_ID")
        .ok()
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dummy_socket_follows_the_port() {
        assert_eq!(
            dummy_socket("127.0.0.1:50052").unwrap(),
            default_socket_path(50052)
        );
        assert_eq!(
            dummy_socket("/tmp/x.sock").unwrap(),
            PathBuf::from("/tmp/x.sock")
        );
        assert!(dummy_socket("127.0.0.1:http").is_err());
    }
}
