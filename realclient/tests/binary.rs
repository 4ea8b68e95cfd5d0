//! The `mooncake_client` binary's command line: upstream flag names and the clear
//! refusals. (Declaring this test also makes `cargo test` build the binary that the
//! `integration` crate's multi-process tests spawn.)

use std::process::Command;

fn client() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mooncake_client"))
}

#[test]
fn help_lists_the_upstream_flags() {
    let out = client().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--host",
        "--port",
        "--global_segment_size",
        "--local_buffer_size",
        "--master_server_address",
        "--metadata_server",
        "--protocol",
        "--device_names",
        "--threads",
        "--http_port",
        "--ipc_socket_path",
        "--cluster_token",
        "--embedded-master",
        "--transfer_port",
    ] {
        assert!(help.contains(flag), "missing {flag} in --help");
    }
}

#[test]
fn rdma_without_the_feature_is_a_clear_error() {
    let dir = std::env::temp_dir();
    let out = client()
        .args([
            "--protocol",
            "rdma",
            "--global_segment_size",
            "16MB",
            "--http_port",
            "0",
        ])
        .arg(format!(
            "--ipc_socket_path={}",
            dir.join("mc-rdma-test.sock").display()
        ))
        .arg(format!(
            "--segment_path=/dev/shm/mc-rdma-test-{}.segment",
            std::process::id()
        ))
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("RDMA"), "stderr: {err}");
}

#[test]
fn a_bad_size_is_refused_before_anything_starts() {
    let out = client()
        .args(["--global_segment_size", "lots"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("global_segment_size"));
}
