//! `wgmesh device add|list|show|remove`: devices without the agent (phones, routers) that
//! join through a gateway node by loading a wg-quick configuration, usually from a QR code.
//!
//! The configuration goes to stdout (the one machine-readable output); its QR code goes to
//! the terminal on stderr when stderr is one, and to `--qr-png`/`--qr-svg` files, written
//! atomically and 0600 (a generated key is inside the code).

use super::admin::{default_server, pretty, print, tags, Admin};
use super::admin_flags::with_admin_flags;
use super::exit::{CliError, EXIT_INTERNAL, EXIT_STATE, EXIT_USAGE};
use crate::agent::client::ServerUrl;
use crate::keys::PublicKey;
use crate::proto::devices::{DeviceAddRequest, DeviceAnswer, DeviceListResponse};
use crate::types::{DnsName, Tag};
use argh::FromArgs;
use std::io::IsTerminal;
use std::path::PathBuf;

/// Devices without the agent (phones, routers, NAS boxes with a stock WireGuard app): they
/// join through a gateway node (`wgmesh up --gateway`) by scanning a QR code.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "device")]
pub struct DeviceArgs {
    #[argh(subcommand)]
    command: DeviceCommand,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum DeviceCommand {
    Add(DeviceAddArgs),
    List(DeviceListArgs),
    Show(DeviceShowArgs),
    Remove(DeviceRemoveArgs),
}

with_admin_flags! {
    /// Add a device behind a gateway and print its wg-quick configuration and QR code. Without
    /// --pubkey the server generates the key pair and the private key is shown this once.
    #[derive(FromArgs, Debug)]
    #[argh(subcommand, name = "add")]
    pub struct DeviceAddArgs {
        /// the device's name: it becomes NAME.mesh (one DNS label: a-z, 0-9, -)
        #[argh(positional)]
        name: String,
        /// the gateway node it reaches the mesh through (its .mesh name, hostname or peer id)
        #[argh(option)]
        via: String,
        /// tag for the access policy, e.g. tag:phone (repeatable)
        #[argh(option)]
        tag: Vec<String>,
        /// the device's own WireGuard public key (recommended: its private key never leaves it)
        #[argh(option)]
        pubkey: Option<PublicKey>,
        /// send all internet traffic through the gateway (it must be an exit node)
        #[argh(switch)]
        exit: bool,
        /// also write the QR code as a PNG file (0600)
        #[argh(option)]
        qr_png: Option<PathBuf>,
        /// also write the QR code as an SVG file (0600)
        #[argh(option)]
        qr_svg: Option<PathBuf>,
        /// print the server's JSON answer instead of the configuration
        #[argh(switch)]
        json: bool,
    }
}

with_admin_flags! {
    /// List the devices: name, addresses, gateway, tags and key.
    #[derive(FromArgs, Debug)]
    #[argh(subcommand, name = "list")]
    pub struct DeviceListArgs {
        /// print JSON
        #[argh(switch)]
        json: bool,
    }
}

with_admin_flags! {
    /// Print a device's current configuration and QR code (after its gateway's key, endpoint or
    /// the mesh changed). The private key is never stored, so it is a placeholder here.
    #[derive(FromArgs, Debug)]
    #[argh(subcommand, name = "show")]
    pub struct DeviceShowArgs {
        /// the device's name
        #[argh(positional)]
        name: String,
        /// with all internet traffic through the gateway (it must be an exit node)
        #[argh(switch)]
        exit: bool,
        /// also write the QR code as a PNG file (0600)
        #[argh(option)]
        qr_png: Option<PathBuf>,
        /// also write the QR code as an SVG file (0600)
        #[argh(option)]
        qr_svg: Option<PathBuf>,
        /// print the server's JSON answer instead of the configuration
        #[argh(switch)]
        json: bool,
    }
}

with_admin_flags! {
    /// Remove a device: its gateway drops it at once and its address returns to the pool.
    #[derive(FromArgs, Debug)]
    #[argh(subcommand, name = "remove")]
    pub struct DeviceRemoveArgs {
        /// the device's name
        #[argh(positional)]
        name: String,
    }
}

fn device_name(name: &str) -> Result<DnsName, CliError> {
    name.parse::<DnsName>().map_err(|e| {
        CliError::new(
            EXIT_USAGE,
            format!("device name {name:?}: {e} (one DNS label: a-z, 0-9 and -)"),
        )
    })
}

/// The QR outputs asked for.
struct QrFiles {
    png: Option<PathBuf>,
    svg: Option<PathBuf>,
}

/// Prints the configuration (stdout), its QR code (stderr, on a terminal) and writes the
/// QR files.
fn emit(answer: &DeviceAnswer, files: &QrFiles) -> Result<(), CliError> {
    let text = crate::devconf::render(&answer.config, answer.private_key.as_deref());
    let qr = |e: crate::devconf::QrError| CliError::new(EXIT_INTERNAL, e.to_string());
    let write = |path: &PathBuf, bytes: &[u8]| {
        crate::fsutil::write_atomic(path, bytes, 0o600)
            .map_err(|e| CliError::new(EXIT_STATE, format!("cannot write {}: {e}", path.display())))
    };
    if let Some(path) = &files.png {
        write(path, &crate::devconf::png(&text).map_err(qr)?)?;
    }
    if let Some(path) = &files.svg {
        write(path, crate::devconf::svg(&text).map_err(qr)?.as_bytes())?;
    }
    print(&text)?;
    if answer.config.endpoint.is_none() {
        eprintln!(
            "wgmesh: the server knows no address for gateway {} yet, so the configuration has no Endpoint; run `wgmesh device show {}` once the gateway is up",
            answer.device.via_name, answer.device.name
        );
    }
    if answer.private_key.is_none() {
        eprintln!(
            "wgmesh: put the device's own private key in place of {}",
            crate::devconf::KEY_PLACEHOLDER
        );
    }
    if std::io::stderr().is_terminal() {
        eprintln!("{}", crate::devconf::terminal(&text).map_err(qr)?);
    }
    Ok(())
}

fn add(a: DeviceAddArgs) -> Result<(), CliError> {
    let name = device_name(&a.name)?;
    let tags = a
        .tag
        .iter()
        .map(|tag| tag.parse::<Tag>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CliError::new(EXIT_USAGE, format!("--tag: {e}")))?;
    let admin = Admin::new(a.server, a.admin_secret_file)?;
    let body = DeviceAddRequest {
        name: name.to_string(),
        via: a.via,
        tags,
        public_key: a.pubkey,
        exit: a.exit,
    };
    let body = serde_json::to_string(&body).expect("API types always serialize");
    let (answer, text): (DeviceAnswer, _) = admin.call_as("POST", "devices", Some(body))?;
    if a.json {
        return print(&pretty(&text));
    }
    emit(
        &answer,
        &QrFiles {
            png: a.qr_png,
            svg: a.qr_svg,
        },
    )
}

fn show(a: DeviceShowArgs) -> Result<(), CliError> {
    let name = device_name(&a.name)?;
    let admin = Admin::new(a.server, a.admin_secret_file)?;
    let path = match a.exit {
        true => format!("devices/{name}?exit=true"),
        false => format!("devices/{name}"),
    };
    let (answer, text): (DeviceAnswer, _) = admin.call_as("GET", &path, None)?;
    if a.json {
        return print(&pretty(&text));
    }
    emit(
        &answer,
        &QrFiles {
            png: a.qr_png,
            svg: a.qr_svg,
        },
    )
}

fn list(a: DeviceListArgs) -> Result<(), CliError> {
    let admin = Admin::new(a.server, a.admin_secret_file)?;
    let (answer, text): (DeviceListResponse, _) = admin.call_as("GET", "devices", None)?;
    if a.json {
        return print(&pretty(&text));
    }
    let mut out = format!(
        "{:<24} {:<15} {:<24} {:<20} {}\n",
        "NAME", "ADDRESS", "VIA", "TAGS", "PUBLIC KEY"
    );
    for d in &answer.devices {
        let address = d
            .addresses
            .first()
            .map(|a| a.addr().to_string())
            .unwrap_or_default();
        out.push_str(&format!(
            "{:<24} {:<15} {:<24} {:<20} {}\n",
            format!("{}.mesh", d.name),
            address,
            d.via_name,
            tags(&d.tags),
            d.public_key
        ));
    }
    print(&out)
}

/// `wgmesh device ...`.
pub fn run(args: DeviceArgs) -> Result<(), CliError> {
    match args.command {
        DeviceCommand::Add(a) => add(a),
        DeviceCommand::List(a) => list(a),
        DeviceCommand::Show(a) => show(a),
        DeviceCommand::Remove(a) => {
            let name = device_name(&a.name)?;
            let admin = Admin::new(a.server, a.admin_secret_file)?;
            admin.call("DELETE", &format!("devices/{name}"), None)?;
            print(&format!("removed {name}\n"))
        }
    }
}
