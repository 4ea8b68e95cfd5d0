//! `mooncake_master`: the metadata and coordination service of a mooncake-rs cluster.
//! Flags follow upstream's names and defaults (`--rpc_port=50051`, `--metrics_port=9003`, ...);
//! they are parsed in [`mooncake_master::cli`], shared with the Python console script.

fn main() -> std::process::ExitCode {
    mooncake_master::cli::master_main(std::env::args_os())
}
