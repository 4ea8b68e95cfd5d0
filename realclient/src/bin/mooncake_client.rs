//! `mooncake_client`: the per-host real client. Flags follow upstream
//! (`--global_segment_size=4GB`, `--master_server_address`, ...) and are parsed in
//! [`mooncake_realclient::cli`], shared with the Python console script.

fn main() -> std::process::ExitCode {
    mooncake_realclient::cli::client_main(std::env::args_os())
}
