//! The `wgmesh` command line: argh subcommands, logging setup and exit codes.
//!
//! Exit codes are part of the interface for cron, systemd and shell scripts:
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | success |
//! | 1 | an unexpected internal error |
//! | 2 | bad usage, configuration or input (fix the command or the file) |
//! | 3 | the coordination server is unreachable or refused the request |
//! | 4 | a system command (`wg`, `ip`, ...) failed |
//! | 5 | local state could not be read or written (or a replica's database) |
//! | 6 | a check failed (`netcheck`: the exit node does not carry this node's traffic) |
//! | 7 | another agent is already running with this config (`up`, `sync`) |

mod admin;
mod admin_flags;
mod agent;
mod device;
pub mod exit;
mod netcheck;
mod output;
mod routes;
mod server;
mod service;
mod sso;
mod usage;

use argh::FromArgs;
use exit::{EXIT_OK, EXIT_USAGE};
use std::io::Write;
use std::process::ExitCode;

/// wgmesh: a WireGuard mesh VPN. Every machine gets a stable private IP and a direct,
/// encrypted path to every other machine. Exit codes: 0 ok, 1 internal error, 2 bad usage or
/// config, 3 server unreachable or refusing, 4 a system command failed, 5 local state error,
/// 6 a check failed, 7 already running. `wgmesh --version` prints the version.
#[derive(FromArgs, Debug)]
pub struct Wgmesh {
    #[argh(subcommand)]
    command: Command,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum Command {
    Server(server::ServerArgs),
    Up(agent::UpArgs),
    Sync(agent::SyncArgs),
    Down(agent::DownArgs),
    Status(agent::StatusArgs),
    Export(agent::ExportArgs),
    Genkey(agent::GenkeyArgs),
    Pubkey(agent::PubkeyArgs),
    Netcheck(netcheck::NetcheckArgs),
    Token(admin::TokenArgs),
    Peers(admin::PeersArgs),
    Policy(admin::PolicyArgs),
    Routes(routes::RoutesArgs),
    Device(device::DeviceArgs),
    Service(service::ServiceArgs),
}

/// Parses the command line. Help (`--help`, `-h`, `help`) and `--version` go to stdout with
/// exit 0; anything argh refuses (unknown flag, missing value, a value that does not parse)
/// goes to stderr with [`EXIT_USAGE`], as the exit-code table promises (argh itself would
/// exit 1), with the nearest real flag or subcommand when the mistake looks like a typo.
fn parse_args(argv: &[String]) -> Result<Wgmesh, ExitCode> {
    let name = argv
        .first()
        .and_then(|p| std::path::Path::new(p).file_name()?.to_str())
        .unwrap_or("wgmesh");
    let rest: Vec<&str> = argv.iter().skip(1).map(String::as_str).collect();
    if usage::asks_version(&rest) {
        let _ = writeln!(std::io::stdout(), "{}", usage::version());
        return Err(ExitCode::from(EXIT_OK));
    }
    let rest = usage::expand_short_help(&rest);
    Wgmesh::from_args(&[name], &rest).map_err(|early| match early.status {
        Ok(()) => {
            // A closed pipe (`wgmesh --help | head`) is not an error.
            let _ = writeln!(std::io::stdout(), "{}", early.output);
            ExitCode::from(EXIT_OK)
        }
        Err(()) => {
            let hint = usage::suggestion::<Wgmesh>(name, &rest, &early.output)
                .map(|s| format!("{s}\n"))
                .unwrap_or_default();
            eprintln!(
                "{}\n{hint}Run {name} --help for more information.",
                early.output.trim_end()
            );
            ExitCode::from(EXIT_USAGE)
        }
    })
}

/// Entry point of the `wgmesh` binary: parses arguments, runs, maps errors to exit codes.
pub fn main() -> ExitCode {
    let argv: Result<Vec<String>, _> = std::env::args_os().map(|a| a.into_string()).collect();
    let argv = match argv {
        Ok(argv) => argv,
        Err(arg) => {
            eprintln!(
                "wgmesh: argument {:?} is not valid UTF-8",
                arg.to_string_lossy()
            );
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let args = match parse_args(&argv) {
        Ok(args) => args,
        Err(code) => return code,
    };
    let result = match args.command {
        Command::Server(a) => server::run(a),
        Command::Up(a) => agent::up(a),
        Command::Sync(a) => agent::sync(a),
        Command::Down(a) => agent::down(a),
        Command::Status(a) => agent::status(a),
        Command::Export(a) => agent::export(a),
        Command::Genkey(a) => agent::genkey(a),
        Command::Pubkey(a) => agent::pubkey(a),
        Command::Netcheck(a) => netcheck::run(a),
        Command::Token(a) => admin::token(a),
        Command::Peers(a) => admin::peers(a),
        Command::Policy(a) => admin::policy(a),
        Command::Routes(a) => routes::run(a),
        Command::Device(a) => device::run(a),
        Command::Service(a) => service::run(a),
    };
    match result {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(failure) => {
            eprintln!("wgmesh: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}
