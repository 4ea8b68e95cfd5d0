//! `mooncake_http_metadata_server`: upstream's standalone HTTP metadata server
//! (`--host 0.0.0.0 --port 8080`; `GET/PUT/DELETE /metadata?key=`, `GET /health`).

fn main() -> std::process::ExitCode {
    mooncake_master::cli::metadata_server_main(std::env::args_os())
}
