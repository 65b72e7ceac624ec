//! `wgmesh netcheck`: can this node reach the server over UDP, what public address does it
//! get, does its NAT map by destination, and (with an exit node in use) does the internet see
//! the exit node's address.

use super::{init_logging, Failure, LogLevel, EXIT_CHECK, EXIT_INTERNAL, EXIT_SERVER, EXIT_USAGE};
use crate::agent::config::{self, ClientConfig};
use crate::agent::netcheck::{self, Report};
use argh::FromArgs;
use serde::Serialize;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

/// The design's STUN port on the coordination server.
const DEFAULT_STUN_PORT: u16 = 3478;

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

/// The exit-node part of the report.
#[derive(Debug, Serialize)]
struct ExitCheck {
    /// The exit node asked for.
    exit_node: String,
    /// Its public address, as the coordination server saw it.
    expected: Option<IpAddr>,
    /// The address the STUN server saw us from.
    seen: Option<IpAddr>,
    /// Whether they match.
    ok: bool,
}

#[derive(Debug, Serialize)]
struct Output {
    #[serde(flatten)]
    report: Report,
    exit_check: Option<ExitCheck>,
}

fn resolve(text: &str) -> Result<SocketAddr, Failure> {
    text.to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| Failure::new(EXIT_USAGE, format!("--server {text:?} is not HOST:PORT")))
}

/// `wgmesh netcheck`.
pub fn run(args: NetcheckArgs) -> Result<(), Failure> {
    init_logging(LogLevel(log::LevelFilter::Warn));
    let path = args.config.unwrap_or_else(config::default_path);
    let cfg = ClientConfig::load(&path).map_err(|e| Failure::new(EXIT_USAGE, e.to_string()))?;
    let primary = match (&args.server, cfg.as_ref().and_then(|c| c.server.as_ref())) {
        (Some(text), _) => resolve(text)?,
        (None, Some(url)) => {
            let authority = url.authority();
            let host = match authority.rsplit_once(':') {
                Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
                _ => authority,
            };
            resolve(&format!("{host}:{DEFAULT_STUN_PORT}"))?
        }
        (None, None) => {
            return Err(Failure::new(
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
        .map_err(|e| Failure::new(EXIT_INTERNAL, e.to_string()))?;

    let exit_check = cfg.as_ref().and_then(|c| {
        let wanted = c.use_exit_node.clone()?;
        c.applied.as_ref()?.full_tunnel.as_ref()?;
        let peers = crate::agent::engine::load_peer_cache(&path);
        let expected = peers
            .iter()
            .find(|p| crate::agent::desired::is_named(p, &wanted))
            .and_then(|p| p.endpoint)
            .map(|e| e.0.ip());
        let seen = report.mapped.map(|m| m.ip());
        Some(ExitCheck {
            exit_node: wanted,
            ok: expected.is_some() && expected == seen,
            expected,
            seen,
        })
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
        let text =
            serde_json::to_string_pretty(&Output { report, exit_check }).expect("serializes");
        super::agent::write_stdout(&format!("{text}\n"))?;
    } else {
        let mut text = report.to_string();
        if let Some(check) = &exit_check {
            text.push_str(&format!(
                "\nexit node {}: {}\n",
                check.exit_node,
                if check.ok {
                    "traffic leaves through it"
                } else {
                    "NOT carrying traffic"
                }
            ));
        }
        super::agent::write_stdout(&text)?;
    }
    if !udp_ok {
        return Err(Failure::new(EXIT_SERVER, format!("no STUN answer from {primary}: UDP to the server is blocked or it runs without --udp-listen")));
    }
    if !exit_ok {
        return Err(Failure::new(EXIT_CHECK, exit_message.unwrap_or_default()));
    }
    Ok(())
}
