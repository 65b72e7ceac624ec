//! `status` and `export`: the client subcommands that only read this node's config, cached
//! peer list and interface, and print them (a table, JSON, or a wg-quick file).

use crate::agent::state::config;
use crate::agent::status;
use crate::cli::exit::agent_failure;
use crate::cli::exit::CliError;
use crate::cli::output::{init_logging, LogLevel};
use crate::cli::output::{print_json, write_stdout};
use crate::os::runner::SystemRunner;
use argh::FromArgs;
use std::path::PathBuf;
use std::time::SystemTime;

/// Show this node's address and interface, and per peer: hostname, mesh address, endpoint,
/// whether it is online, latest handshake age and bytes received and sent.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "status")]
pub struct StatusArgs {
    /// client config file (default ~/.config/wireguard-mesh/client.json)
    #[argh(option)]
    config: Option<PathBuf>,
    /// print JSON on stdout
    #[argh(switch)]
    json: bool,
}

/// Print a wg-quick configuration for this node on stdout (use it with `wg-quick up`).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "export")]
pub struct ExportArgs {
    /// client config file (default ~/.config/wireguard-mesh/client.json)
    #[argh(option)]
    config: Option<PathBuf>,
    /// PEM file of the CA certificate(s) the server's HTTPS certificate must chain to,
    /// replacing the bundled public roots (for a private CA or a self-signed server)
    #[argh(option)]
    ca: Option<PathBuf>,
    /// put each peer's mesh name (NAME.mesh) and hostname in a comment above its [Peer]
    #[argh(switch)]
    names: bool,
}

/// `wgmesh status`.
pub fn status(args: StatusArgs) -> Result<(), CliError> {
    init_logging(LogLevel(log::LevelFilter::Warn));
    let path = args.config.unwrap_or_else(config::default_path);
    let status = status::collect(&path, &mut SystemRunner::new(), SystemTime::now())
        .map_err(agent_failure)?;
    if args.json {
        return print_json(&status);
    }
    write_stdout(&status::table(&status))
}

/// `wgmesh export`.
pub fn export(args: ExportArgs) -> Result<(), CliError> {
    init_logging(LogLevel(log::LevelFilter::Warn));
    let path = args.config.unwrap_or_else(config::default_path);
    let text = status::export(&path, args.ca.as_deref(), args.names).map_err(agent_failure)?;
    write_stdout(&text)
}
