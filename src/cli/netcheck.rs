//! `wgmesh netcheck`: can this node reach the server over UDP, what public address does it
//! get, does its NAT map by destination, and (with an exit node in use) does the internet see
//! the exit node's address.

use super::exit::{CliError, EXIT_CHECK, EXIT_INTERNAL, EXIT_SERVER, EXIT_USAGE};
use super::output::{init_logging, write_stdout, LogLevel};
use crate::agent::observe::netcheck::{self, ExitCheck, Report};
use crate::agent::state::config::{self, ClientConfig};
use argh::FromArgs;
use serde::Serialize;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

/// Check UDP reachability of the coordination server's STUN service, this node's public
/// address, whether the NAT's mapping changes with the destination, and the round trip; with
/// an exit node in use, also that the internet sees the exit node's address. Exit codes: 0 ok,
/// 3 no STUN answer, 6 the exit node does not carry this node's traffic.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "netcheck")]
pub struct NetcheckArgs {
    /// STUN server HOST:PORT (default: the coordination server's host, port 3478; the port
    /// after it is asked too, for the mapping check)
    #[argh(option)]
    server: Option<String>,
    /// client config file (default ~/.config/wireguard-mesh/client.json)
    #[argh(option)]
    config: Option<PathBuf>,
    /// milliseconds to wait for each server (default 1500)
    #[argh(option, default = "1500")]
    timeout_ms: u64,
    /// print JSON on stdout
    #[argh(switch)]
    json: bool,
}

/// The relay part of the report.
#[derive(Debug, Serialize)]
struct RelayCheck {
    /// Where the server relays WireGuard, as its `/peers` said (saved by the agent).
    address: SocketAddr,
    /// Whether a STUN request to that port was answered: the relay shares its socket with
    /// STUN (it never answers WireGuard itself), so an answer proves the port is open and
    /// served.
    answers: bool,
}

#[derive(Debug, Serialize)]
struct Output {
    #[serde(flatten)]
    report: Report,
    exit_check: Option<ExitCheck>,
    /// Null when the server offers no relay or this node has not synced yet.
    relay: Option<RelayCheck>,
}

fn resolve(text: &str) -> Result<SocketAddr, CliError> {
    text.to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| CliError::new(EXIT_USAGE, format!("--server {text:?} is not HOST:PORT")))
}

/// The human report: the STUN findings, then the relay's and the exit node's checks.
fn human(
    report: &netcheck::Report,
    relay: Option<&RelayCheck>,
    exit_check: Option<&ExitCheck>,
) -> String {
    let mut text = report.to_string();
    if let Some(r) = relay {
        let answers = if r.answers {
            "answers"
        } else {
            "NO ANSWER (relayed peers cannot connect)"
        };
        text.push_str(&format!("\nrelay {}: {answers}\n", r.address));
    }
    if let Some(check) = exit_check {
        let carries = if check.ok {
            "traffic leaves through it"
        } else {
            "NOT carrying traffic"
        };
        text.push_str(&format!("\nexit node {}: {carries}\n", check.exit_node));
    }
    text
}

/// `wgmesh netcheck`.
pub fn run(args: NetcheckArgs) -> Result<(), CliError> {
    init_logging(LogLevel(log::LevelFilter::Warn));
    let path = args.config.unwrap_or_else(config::default_path);
    let cfg = ClientConfig::load(&path).map_err(|e| CliError::new(EXIT_USAGE, e.to_string()))?;
    let primary = match (&args.server, cfg.as_ref().and_then(|c| c.server.as_ref())) {
        (Some(text), _) => resolve(text)?,
        (None, Some(url)) => resolve(&netcheck::stun_server_for(url))?,
        (None, None) => {
            return Err(CliError::new(
                EXIT_USAGE,
                "no STUN server: pass --server HOST:PORT or run `wgmesh up --server URL` first",
            ))
        }
    };
    let secondary = primary
        .port()
        .checked_add(1)
        .map(|p| SocketAddr::new(primary.ip(), p));
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let report = netcheck::netcheck(primary, secondary, timeout, None)
        .map_err(|e| CliError::new(EXIT_INTERNAL, e.to_string()))?;

    // The exit check asks the way internet traffic goes: through the tunnel, also when the
    // server is on the local network (then the plain probe above never enters it).
    let through = cfg
        .as_ref()
        .and_then(ExitCheck::tunnel_interface)
        .and_then(|iface| netcheck::probe_through(iface, primary, timeout))
        .and_then(|probe| probe.ok())
        .map(|probe| probe.mapped.ip());
    let exit_check = cfg
        .as_ref()
        .and_then(|c| ExitCheck::of(c, &path, &report, through));

    // The relay is the coordination server's: checked when netcheck asks that server (not
    // another STUN server given with --server), reusing the STUN answer when it is the same
    // port.
    let relay = crate::agent::decide::path::PathTable::load(&path)
        .relay
        .filter(|_| args.server.is_none())
        .map(|address| {
            let answers = if address == primary {
                report.udp
            } else {
                netcheck::probe(address, timeout, None).is_ok()
            };
            RelayCheck { address, answers }
        });
    let udp_ok = report.udp;
    let exit_ok = exit_check.as_ref().is_none_or(|c| c.ok);
    let exit_message =
        exit_check.as_ref().filter(|c| !c.ok).map(|c| {
            format!(
            "exit node {} is not carrying this node's traffic: the internet sees {} instead of {}",
            c.exit_node,
            c.seen.map_or("nothing (no answer)".into(), |ip| ip.to_string()),
            c.expected.map_or("its address (unknown)".into(), |ip| ip.to_string()),
        )
        });
    if args.json {
        let text = serde_json::to_string_pretty(&Output {
            report,
            exit_check,
            relay,
        })
        .expect("serializes");
        write_stdout(&format!("{text}\n"))?;
    } else {
        write_stdout(&human(&report, relay.as_ref(), exit_check.as_ref()))?;
    }
    if !udp_ok {
        return Err(CliError::new(EXIT_SERVER, format!("no STUN answer from {primary}: UDP to the server is blocked or it runs without --udp-listen")));
    }
    if !exit_ok {
        return Err(CliError::new(EXIT_CHECK, exit_message.unwrap_or_default()));
    }
    Ok(())
}
