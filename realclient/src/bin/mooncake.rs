//! `mooncake`: the operator's command (`status`, `health`, `keys`, `query`,
//! `remove`, `drain`, `segments`), parsed in [`mooncake_realclient::admin`],
//! shared with the Python console script.

fn main() -> std::process::ExitCode {
    mooncake_realclient::admin::admin_main(std::env::args_os())
}
