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

mod admin;
mod agent;
mod device;
pub mod exit;
mod netcheck;
mod output;
mod server;
mod service;

use argh::FromArgs;
use exit::{EXIT_OK, EXIT_USAGE};
use std::process::ExitCode;

/// wgmesh: a WireGuard mesh VPN. Every machine gets a stable private IP and a direct,
/// encrypted path to every other machine. Exit codes: 0 ok, 1 internal error, 2 bad usage or
/// config, 3 server unreachable or refusing, 4 a system command failed, 5 local state error,
/// 6 a check failed.
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
    Device(device::DeviceArgs),
    Service(service::ServiceArgs),
}

/// Parses the command line. Help (`--help`, `help`) goes to stdout with exit 0; anything argh
/// refuses (unknown flag, missing value, a value that does not parse) goes to stderr with
/// [`EXIT_USAGE`], as the exit-code table promises (argh itself would exit 1).
fn parse_args(argv: &[String]) -> Result<Wgmesh, ExitCode> {
    let name = argv
        .first()
        .and_then(|p| std::path::Path::new(p).file_name()?.to_str())
        .unwrap_or("wgmesh");
    let rest: Vec<&str> = argv.iter().skip(1).map(String::as_str).collect();
    Wgmesh::from_args(&[name], &rest).map_err(|early| match early.status {
        Ok(()) => {
            println!("{}", early.output);
            ExitCode::from(EXIT_OK)
        }
        Err(()) => {
            eprintln!("{}\nRun {name} --help for more information.", early.output);
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
