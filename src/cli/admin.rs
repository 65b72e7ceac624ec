//! The operator's commands: `token create|list|revoke`, `peers list|remove`, `policy reload`.
//!
//! They talk to the running server's `/admin/...` endpoints with the admin secret the server
//! created beside its state file (`admin.secret`, mode 0600), sent as `Authorization: Bearer`.
//! Going through the server (rather than editing its files) keeps one writer per file and
//! makes changes take effect at once.

use super::admin_flags::with_admin_flags;
use super::exit::{CliError, EXIT_INTERNAL, EXIT_SERVER, EXIT_USAGE};
use super::output::{init_logging, LogLevel};
use crate::agent::client::ServerUrl;
use crate::proto::admin::{
    AdminPeersResponse, PolicyReloadResponse, TokenCreateRequest, TokenCreateResponse,
    TokenListResponse,
};
use crate::proto::model::ApiError;
use crate::types::Tag;
use argh::FromArgs;
use serde::de::DeserializeOwned;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// Time limit of one admin request.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "token")]
/// Manage join tokens: a new machine presents one (`wgmesh up --token`) on its first
/// registration; its tags decide, through the policy, which peers it sees.
pub struct TokenArgs {
    #[argh(subcommand)]
    command: TokenCommand,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum TokenCommand {
    Create(TokenCreateArgs),
    List(TokenListArgs),
    Revoke(TokenRevokeArgs),
}

// Every admin subcommand repeats `--server` and `--admin-secret-file`: argh cannot flatten a
// shared struct into subcommands, and each flag's doc comment is its help text. `duplicates`
// reports these structs as pairs; that is the reason.

with_admin_flags! {
    /// Create a join token and print it once (the server keeps only its hash).
    #[derive(FromArgs, Debug)]
    #[argh(subcommand, name = "create")]
    pub struct TokenCreateArgs {
        /// how many machines may join with it (default unlimited)
        #[argh(option)]
        uses: Option<u32>,
        /// lifetime, e.g. 7d, 12h, 30m (default never expires)
        #[argh(option)]
        expires: Option<String>,
        /// tag given to machines joining with it, e.g. tag:db (repeatable)
        #[argh(option)]
        tag: Vec<String>,
        /// print the JSON answer instead of just the token
        #[argh(switch)]
        json: bool,
    }
}

with_admin_flags! {
    /// List join tokens: id, uses left, expiry, tags and whether each is still usable.
    #[derive(FromArgs, Debug)]
    #[argh(subcommand, name = "list")]
    pub struct TokenListArgs {
        /// print JSON
        #[argh(switch)]
        json: bool,
    }
}

with_admin_flags! {
    /// Revoke a join token by id; machines that joined with it stay.
    #[derive(FromArgs, Debug)]
    #[argh(subcommand, name = "revoke")]
    pub struct TokenRevokeArgs {
        /// the token id (tok-...), as `token list` shows it
        #[argh(positional)]
        id: String,
    }
}

/// The operator's view of the registry: every peer with its tags, online or not.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "peers")]
pub struct PeersArgs {
    #[argh(subcommand)]
    command: PeersCommand,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum PeersCommand {
    List(PeersListArgs),
    Remove(PeersRemoveArgs),
    Logout(PeersLogoutArgs),
}

with_admin_flags! {
    /// End a peer's single sign-on login now: it goes offline and must log in again with
    /// `wgmesh up --login` (it keeps its address).
    #[derive(FromArgs, Debug)]
    #[argh(subcommand, name = "logout")]
    pub struct PeersLogoutArgs {
        /// the peer id (peer-...)
        #[argh(positional)]
        id: String,
    }
}

with_admin_flags! {
    /// List every registered peer.
    #[derive(FromArgs, Debug)]
    #[argh(subcommand, name = "list")]
    pub struct PeersListArgs {
        /// print JSON
        #[argh(switch)]
        json: bool,
    }
}

with_admin_flags! {
    /// Remove a peer for good: its address returns to the pool; it needs a new token to rejoin.
    /// Name it by hostname, mesh name (NAME or NAME.mesh), mesh address or peer id.
    #[derive(FromArgs, Debug)]
    #[argh(subcommand, name = "remove")]
    pub struct PeersRemoveArgs {
        /// the peer: hostname, mesh name, mesh address or peer id (peer-...), as `peers list`
        /// shows them
        #[argh(positional)]
        peer: String,
    }
}

/// The access policy (who sees whom).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "policy")]
pub struct PolicyArgs {
    #[argh(subcommand)]
    command: PolicyCommand,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum PolicyCommand {
    Reload(PolicyReloadArgs),
}

with_admin_flags! {
    /// Make the server re-read its --policy file now (as SIGHUP does); a bad file keeps the old
    /// policy and the error is printed. A changed policy approves the advertised subnet routes
    /// its "routes" rules now cover.
    #[derive(FromArgs, Debug)]
    #[argh(subcommand, name = "reload")]
    pub struct PolicyReloadArgs {}
}

pub(super) fn default_server() -> ServerUrl {
    "http://127.0.0.1:8080".parse().expect("literal")
}

/// Where the admin commands look for the server's `admin.secret` when no
/// `--admin-secret-file` is given, in order: the server's default state folder for this user
/// (`wgmesh server` without `--state` keeps it there), then `/var/lib/wgmesh`, the state
/// folder of `etc/wgmesh-server.service` (readable by root).
pub fn secret_candidates() -> Vec<PathBuf> {
    vec![
        crate::fsutil::config_dir().join("admin.secret"),
        PathBuf::from(SERVICE_STATE_DIR).join("admin.secret"),
    ]
}

/// The state folder `etc/wgmesh-server.service` gives the server.
pub const SERVICE_STATE_DIR: &str = "/var/lib/wgmesh";

/// Reads the admin secret from `flag`, else from the first of [`secret_candidates`] that
/// exists. A missing or unreadable secret says every place tried and how to fix it.
fn read_secret(flag: Option<PathBuf>) -> Result<String, CliError> {
    let read = |path: &PathBuf| std::fs::read_to_string(path).map(|s| s.trim().to_owned());
    if let Some(path) = flag {
        return read(&path).map_err(|e| {
            CliError::new(
                EXIT_USAGE,
                format!(
                    "cannot read --admin-secret-file {} ({e}): give the admin.secret beside \
                     the server's state file",
                    path.display()
                ),
            )
        });
    }
    let candidates = secret_candidates();
    let mut denied = None;
    for path in &candidates {
        match read(path) {
            Ok(secret) => return Ok(secret),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                denied.get_or_insert(path.clone());
            }
            Err(_) => {}
        }
    }
    let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
    let message = match denied {
        Some(path) => format!(
            "cannot read the admin secret {}: permission denied; run this as the server's \
             user or root (sudo), or pass --admin-secret-file",
            path.display()
        ),
        None => format!(
            "no admin secret found (looked for {}): run this on the server's machine as the \
             user that runs `wgmesh server`, or pass --admin-secret-file STATE_DIR/admin.secret \
             (the folder of the server's --state)",
            tried.join(" and ")
        ),
    };
    Err(CliError::new(EXIT_USAGE, message))
}

/// One admin connection: the server and the secret read from its file.
pub(super) struct Admin {
    agent: ureq::Agent,
    server: ServerUrl,
    secret: String,
}

impl Admin {
    pub(super) fn new(server: ServerUrl, secret_file: Option<PathBuf>) -> Result<Admin, CliError> {
        init_logging(LogLevel(log::LevelFilter::Warn));
        let secret = read_secret(secret_file)?;
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(ADMIN_TIMEOUT))
            .http_status_as_error(false)
            .build()
            .into();
        Ok(Admin {
            agent,
            server,
            secret,
        })
    }

    /// Sends one admin request; returns the body of a 2xx answer.
    pub(super) fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<String, CliError> {
        let url = format!("{}/admin/{path}", self.server);
        let builder = ureq::http::Request::builder()
            .method(method)
            .uri(&url)
            .header("Authorization", format!("Bearer {}", self.secret));
        let built = |e: ureq::http::Error| CliError::new(EXIT_INTERNAL, e.to_string());
        // Always a sized body (empty for GET/DELETE): the server refuses chunked uploads.
        let sent = match body {
            Some(json) => self.agent.run(
                builder
                    .header("Content-Type", "application/json")
                    .body(json)
                    .map_err(built)?,
            ),
            None => self.agent.run(builder.body(String::new()).map_err(built)?),
        };
        let mut resp = sent.map_err(|e| {
            CliError::new(
                EXIT_SERVER,
                format!("coordination server {} unreachable: {e}", self.server),
            )
        })?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(256 * 1024 * 1024)
            .read_to_string()
            .unwrap_or_default();
        if !(200..300).contains(&status) {
            let message = serde_json::from_str::<ApiError>(&text)
                .map(|e| e.error)
                .unwrap_or_else(|_| text.chars().take(200).collect());
            return Err(CliError::new(
                EXIT_SERVER,
                format!("server refused ({status}): {message}"),
            ));
        }
        Ok(text)
    }

    /// Sends one admin request and reads the answer as `T`; returns the raw body too, for
    /// `--json`.
    pub(super) fn call_as<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<(T, String), CliError> {
        let text = self.call(method, path, body)?;
        let parsed = serde_json::from_str(&text).map_err(|e| {
            CliError::new(
                EXIT_SERVER,
                format!("the server's answer to {method} /admin/{path} is not understood: {e}"),
            )
        })?;
        Ok((parsed, text))
    }
}

pub(super) fn print(text: &str) -> Result<(), CliError> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(CliError::new(
            EXIT_INTERNAL,
            format!("cannot write to stdout: {e}"),
        )),
        _ => Ok(()),
    }
}

/// The server's answer as `--json` prints it: pretty, keys sorted.
pub(super) fn pretty(text: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
    let mut text = serde_json::to_string_pretty(&value).expect("JSON values serialize");
    text.push('\n');
    text
}

/// An optional cell: `-` when absent.
fn cell(value: Option<&str>) -> &str {
    value.unwrap_or("-")
}

/// A tag list cell: comma-separated, `-` when empty.
pub(super) fn tags(tags: &[Tag]) -> String {
    if tags.is_empty() {
        return "-".into();
    }
    tags.iter().map(Tag::as_str).collect::<Vec<_>>().join(",")
}

/// `wgmesh token ...`.
pub fn token(args: TokenArgs) -> Result<(), CliError> {
    match args.command {
        TokenCommand::Create(a) => {
            let tags = a
                .tag
                .iter()
                .map(|tag| tag.parse::<Tag>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| CliError::new(EXIT_USAGE, format!("--tag: {e}")))?;
            if a.uses == Some(0) {
                return Err(CliError::new(
                    EXIT_USAGE,
                    "--uses 0 would make a token nobody can use: give 1 or more, or omit it",
                ));
            }
            if let Some(expires) = &a.expires {
                crate::server::tokens::parse_expiry(expires)
                    .map_err(|e| CliError::new(EXIT_USAGE, format!("--expires: {e}")))?;
            }
            let admin = Admin::new(a.server, a.admin_secret_file)?;
            let body = TokenCreateRequest {
                uses: a.uses,
                expires: a.expires,
                tags,
            };
            let body = serde_json::to_string(&body).expect("API types always serialize");
            let (answer, text): (TokenCreateResponse, _) =
                admin.call_as("POST", "tokens", Some(body))?;
            if a.json {
                return print(&pretty(&text));
            }
            print(&format!("{}\n", answer.token))
        }
        TokenCommand::List(a) => {
            let admin = Admin::new(a.server, a.admin_secret_file)?;
            let (answer, text): (TokenListResponse, _) = admin.call_as("GET", "tokens", None)?;
            if a.json {
                return print(&pretty(&text));
            }
            let mut out = format!(
                "{:<18} {:<9} {:<10} {:<21} {}\n",
                "ID", "STATUS", "USES LEFT", "EXPIRES", "TAGS"
            );
            for t in &answer.tokens {
                let uses = t
                    .uses_left
                    .map_or_else(|| "unlimited".into(), |n| n.to_string());
                out.push_str(&format!(
                    "{:<18} {:<9} {:<10} {:<21} {}\n",
                    t.id,
                    t.status,
                    uses,
                    to_the_second(t.expires_at.as_deref()),
                    tags(&t.tags)
                ));
            }
            print(&out)
        }
        TokenCommand::Revoke(a) => {
            let admin = Admin::new(a.server, a.admin_secret_file)?;
            admin.call("DELETE", &format!("tokens/{}", a.id), None)?;
            print(&format!("revoked {}\n", a.id))
        }
    }
}

/// `wgmesh peers ...`.
pub fn peers(args: PeersArgs) -> Result<(), CliError> {
    match args.command {
        PeersCommand::List(a) => {
            let admin = Admin::new(a.server, a.admin_secret_file)?;
            let (answer, text): (AdminPeersResponse, _) = admin.call_as("GET", "peers", None)?;
            if a.json {
                return print(&pretty(&text));
            }
            let mut out = format!(
                "{:<22} {:<20} {:<24} {:<15} {:<7} {:<10} {:<22} {:<20} {}\n",
                "ID",
                "HOSTNAME",
                "NAME",
                "ADDRESS",
                "ONLINE",
                "LAST SEEN",
                "ENDPOINT",
                "TAGS",
                "OWNER"
            );
            let now = std::time::SystemTime::now();
            for p in &answer.peers {
                let name = p.dns_name.as_ref().map(|n| format!("{n}.mesh"));
                let owner = match (&p.owner, &p.owner_logged_out) {
                    (Some(o), Some(_)) => format!("{o} (logged out)"),
                    (Some(o), None) => o.clone(),
                    (None, _) => "-".to_owned(),
                };
                out.push_str(&format!(
                    "{:<22} {:<20} {:<24} {:<15} {:<7} {:<10} {:<22} {:<20} {}\n",
                    p.id.as_str(),
                    p.hostname,
                    cell(name.as_deref()),
                    p.virtual_ip.to_string(),
                    if p.online { "yes" } else { "no" },
                    age(&p.last_heartbeat, now),
                    cell(p.endpoint.as_deref()),
                    tags(&p.tags),
                    owner
                ));
            }
            print(&out)
        }
        PeersCommand::Remove(a) => {
            let admin = Admin::new(a.server, a.admin_secret_file)?;
            let (answer, _): (AdminPeersResponse, _) = admin.call_as("GET", "peers", None)?;
            let peer = pick_peer(&answer.peers, &a.peer)?;
            admin.call("DELETE", &format!("peers/{}", peer.id.as_str()), None)?;
            print(&format!(
                "removed {} ({}, {})\n",
                peer.id.as_str(),
                peer.hostname,
                peer.virtual_ip
            ))
        }
        PeersCommand::Logout(a) => {
            let admin = Admin::new(a.server, a.admin_secret_file)?;
            admin.call("POST", &format!("peers/{}/logout", a.id), None)?;
            print(&format!(
                "ended the login of {}: it must log in again with `wgmesh up --login`\n",
                a.id
            ))
        }
    }
}

/// The one peer `wanted` names: its peer id, mesh address, mesh name (with or without
/// `.mesh`) or hostname, in that order. None or several is a usage error (exit 2) saying
/// what to give instead.
fn pick_peer<'a>(
    peers: &'a [crate::proto::admin::AdminPeerView],
    wanted: &str,
) -> Result<&'a crate::proto::admin::AdminPeerView, CliError> {
    let name = wanted.strip_suffix(".mesh").unwrap_or(wanted);
    let rules: [&dyn Fn(&crate::proto::admin::AdminPeerView) -> bool; 4] = [
        &|p| p.id.as_str() == wanted,
        &|p| p.virtual_ip.to_string() == wanted,
        &|p| p.dns_name.as_deref() == Some(name),
        &|p| p.hostname.eq_ignore_ascii_case(wanted),
    ];
    for rule in rules {
        let found: Vec<_> = peers.iter().filter(|p| rule(p)).collect();
        match found[..] {
            [one] => return Ok(one),
            [] => continue,
            _ => {
                let ids: Vec<&str> = found.iter().map(|p| p.id.as_str()).collect();
                return Err(CliError::new(
                    EXIT_USAGE,
                    format!(
                        "several peers are called {wanted:?} ({}): give the peer id",
                        ids.join(", ")
                    ),
                ));
            }
        }
    }
    Err(CliError::new(
        EXIT_USAGE,
        format!(
            "no peer is called {}: give a hostname, mesh name, mesh address or peer id from \
             `wgmesh peers list`",
            crate::types::describe(wanted)
        ),
    ))
}

/// `when` (RFC 3339) as an age: `45s ago`, `12m ago`, `3h ago`, `5d ago`; `-` if unreadable.
fn age(when: &str, now: std::time::SystemTime) -> String {
    let Ok(t) = crate::time::parse(when) else {
        return "-".into();
    };
    let secs = now.duration_since(t).unwrap_or_default().as_secs();
    match secs {
        0..=119 => format!("{secs}s ago"),
        120..=7199 => format!("{}m ago", secs / 60),
        7200..=172_799 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

/// An RFC 3339 time to the second (the server sends nanoseconds), `-` when absent.
fn to_the_second(when: Option<&str>) -> String {
    match when.map(crate::time::parse) {
        Some(Ok(t)) => crate::time::format(t),
        Some(Err(_)) => when.unwrap_or("-").to_owned(),
        None => "-".into(),
    }
}

/// `wgmesh policy ...`.
pub fn policy(args: PolicyArgs) -> Result<(), CliError> {
    match args.command {
        PolicyCommand::Reload(a) => {
            let admin = Admin::new(a.server, a.admin_secret_file)?;
            let (answer, _): (PolicyReloadResponse, _) =
                admin.call_as("POST", "policy/reload", None)?;
            let changed = if answer.changed {
                "changed"
            } else {
                "unchanged"
            };
            print(&format!("policy {changed}: {}\n", answer.policy))
        }
    }
}
