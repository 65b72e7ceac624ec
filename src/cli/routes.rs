//! `wgmesh routes list|approve|reject`: the operator's view of advertised subnet routes and
//! the decision on each, through the server's `/admin/routes` with the admin secret (like
//! `wgmesh token`).

use super::admin::{default_server, pretty, print, Admin};
use super::admin_flags::with_admin_flags;
use super::exit::{CliError, EXIT_USAGE};
use crate::agent::client::ServerUrl;
use crate::proto::subnet_routes::{RouteDecisionRequest, RoutesResponse};
use argh::FromArgs;
use ipnet::IpNet;
use std::path::PathBuf;

/// Subnet routes: networks that nodes advertise (`wgmesh up --advertise-routes`); other nodes
/// use one only once it is approved here or by the policy.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "routes")]
pub struct RoutesArgs {
    #[argh(subcommand)]
    command: RoutesCommand,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum RoutesCommand {
    List(RoutesListArgs),
    Approve(RoutesApproveArgs),
    Reject(RoutesRejectArgs),
}

with_admin_flags! {
    /// List every advertised route: router, approval, and which router is in use (primary).
    #[derive(FromArgs, Debug)]
    #[argh(subcommand, name = "list")]
    pub struct RoutesListArgs {
        /// print JSON
        #[argh(switch)]
        json: bool,
    }
}

with_admin_flags! {
    /// Approve a route a node advertises, so nodes with --accept-routes use it.
    #[derive(FromArgs, Debug)]
    #[argh(subcommand, name = "approve")]
    pub struct RoutesApproveArgs {
        /// the router: peer id, hostname or mesh address
        #[argh(positional)]
        peer: String,
        /// the prefix it advertises, e.g. 192.168.10.0/24
        #[argh(positional)]
        prefix: String,
    }
}

with_admin_flags! {
    /// Reject a route (or take back its approval): nodes stop using it through this router.
    #[derive(FromArgs, Debug)]
    #[argh(subcommand, name = "reject")]
    pub struct RoutesRejectArgs {
        /// the router: peer id, hostname or mesh address
        #[argh(positional)]
        peer: String,
        /// the prefix it advertises, e.g. 192.168.10.0/24
        #[argh(positional)]
        prefix: String,
    }
}

fn prefix(text: &str) -> Result<IpNet, CliError> {
    text.parse().map_err(|e| {
        CliError::new(
            EXIT_USAGE,
            format!("PREFIX {text:?} is not a prefix ({e}): write it as 192.168.10.0/24 or fd00:10::/64"),
        )
    })
}

/// The routes as a table, one line per router and prefix.
fn table(answer: &RoutesResponse) -> String {
    let mut out = format!(
        "{:<20} {:<20} {:<15} {:<9} {:<7} {}\n",
        "PREFIX", "ROUTER", "ADDRESS", "APPROVED", "ONLINE", "IN USE"
    );
    for r in &answer.routes {
        let yes = |b: bool| if b { "yes" } else { "no" };
        out.push_str(&format!(
            "{:<20} {:<20} {:<15} {:<9} {:<7} {}\n",
            r.prefix.to_string(),
            r.hostname,
            r.virtual_ip.to_string(),
            yes(r.approved),
            yes(r.online),
            if r.primary { "primary" } else { "-" }
        ));
    }
    out
}

/// Sends one approval or rejection and says what happened.
fn decide(
    (peer, text, server, secret): (String, String, ServerUrl, Option<PathBuf>),
    what: &str,
) -> Result<(), CliError> {
    let body = RouteDecisionRequest {
        peer: peer.clone(),
        prefix: prefix(&text)?,
    };
    let admin = Admin::new(server, secret)?;
    let body = serde_json::to_string(&body).expect("API types always serialize");
    let _: (RoutesResponse, _) = admin.call_as("POST", &format!("routes/{what}"), Some(body))?;
    let done = match what {
        "approve" => "approved",
        _ => "rejected",
    };
    print(&format!("{done} {} for {peer}\n", prefix(&text)?.trunc()))
}

/// `wgmesh routes ...`.
pub fn run(args: RoutesArgs) -> Result<(), CliError> {
    match args.command {
        RoutesCommand::List(a) => {
            let admin = Admin::new(a.server, a.admin_secret_file)?;
            let (answer, text): (RoutesResponse, _) = admin.call_as("GET", "routes", None)?;
            if a.json {
                return print(&pretty(&text));
            }
            print(&table(&answer))
        }
        RoutesCommand::Approve(a) => {
            decide((a.peer, a.prefix, a.server, a.admin_secret_file), "approve")
        }
        RoutesCommand::Reject(a) => {
            decide((a.peer, a.prefix, a.server, a.admin_secret_file), "reject")
        }
    }
}
