//! `status` and `export`: the client subcommands that only read this node's config, cached
//! peer list and interface, and print them (a table, JSON, or a wg-quick file).

use crate::agent::state::config;
use crate::agent::status;
use crate::cli::exit::agent_failure;
use crate::cli::exit::{CliError, EXIT_STATE};
use crate::cli::output::{init_logging, LogLevel};
use crate::cli::output::{print_json, write_stdout};
use crate::os::runner::SystemRunner;
use argh::FromArgs;
use std::path::PathBuf;
use std::time::SystemTime;

/// Show this node's address and interface, and per peer: hostname, mesh address, endpoint,
/// whether it is online, latest handshake age and bytes received and sent (raw byte counts
/// in --json). Reading the interface needs root, like `up`. When it says nothing sends .mesh
/// here ("manual" in --json: no systemd-resolved, no --dns-hosts): ask the resolver directly
/// (dig @MESH_IP NAME.mesh), point a forwarder at it (dnsmasq: server=/mesh/MESH_IP), or
/// run `wgmesh up --dns-hosts` to keep the names in /etc/hosts.
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

/// Print a wg-quick configuration for this node on stdout, or write it to --output FILE
/// (mode 0600: it holds the private key); use it with `wg-quick up`.
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
    /// write the configuration to this file, mode 0600 (replaced atomically), instead of
    /// stdout
    #[argh(option)]
    output: Option<PathBuf>,
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
    if let Some(output) = args.output {
        crate::fsutil::write_atomic(&output, text.as_bytes(), 0o600)
            .map_err(|e| CliError::new(EXIT_STATE, e.to_string()))?;
        eprintln!("wrote {} (mode 0600)", output.display());
        return Ok(());
    }
    if let Some(mode) = stdout_file_mode().filter(|m| m & 0o077 != 0) {
        log::warn!(
            "stdout is a file others may read (mode {mode:04o}) and this configuration holds \
             the private key: chmod 600 it, or use --output FILE (written 0600) or umask 077"
        );
    }
    write_stdout(&text)
}

/// The permission bits of stdout when it is a regular file (a shell redirect).
fn stdout_file_mode() -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::fd::AsFd;
        use std::os::unix::fs::PermissionsExt;
        let fd = std::io::stdout().as_fd().try_clone_to_owned().ok()?;
        let meta = std::fs::File::from(fd).metadata().ok()?;
        meta.is_file().then(|| meta.permissions().mode() & 0o777)
    }
    #[cfg(not(unix))]
    None
}
