//! An append-only audit log: one JSON object per line, for "who joined, who left, who was
//! refused, and who changed the rules", kept apart from the debug log so it can be shipped,
//! grepped with `jq`, and retained on its own schedule.
//!
//! Each line is written with a single `write_all` on a file opened with `O_APPEND`, then
//! flushed, so concurrent writers (threads here, or a second process) never interleave inside
//! a line and a crash loses at most the line being written. The file is created with mode
//! 0600: it names peers, keys and source addresses. All values are JSON-escaped, so a hostile
//! hostname or header cannot forge a line.

use crate::keys::PublicKey;
use crate::types::PeerId;
use crate::types::TokenId;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

/// Longest `detail` kept, in characters. Details may quote what a client sent; capping them
/// stops a hostile client from growing the audit log by megabytes per request.
pub const MAX_DETAIL_CHARS: usize = 1000;

/// What happened. Serialized in snake_case (`"registration"`, `"auth_failure"`, ...) so the
/// log is easy to filter with `jq 'select(.event == "auth_failure")'`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    /// A peer registered (first time, or again with the same key).
    Registration,
    /// A peer was removed, by itself or by an operator.
    Deregistration,
    /// An operator created a join token.
    TokenCreate,
    /// An operator revoked a join token.
    TokenRevoke,
    /// The access policy was loaded or replaced.
    PolicyChange,
    /// A request was refused for a bad signature, stale time, replay, or bad token.
    AuthFailure,
    /// Someone logged in to the console (the actor says as what).
    ConsoleLogin,
    /// An operator approved a peer's advertised subnet route.
    RouteApprove,
    /// An operator rejected (or took back the approval of) a peer's subnet route.
    RouteReject,
    /// An operator added a device behind a gateway.
    DeviceAdd,
    /// An operator removed a device.
    DeviceRemove,
}

/// One line of the audit log. Fields that do not apply are `null`, so every line has the
/// same shape. Reading it back ignores unknown fields, so tools keep working on logs written
/// by later versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// When it happened, RFC 3339 UTC with milliseconds.
    #[serde(with = "crate::time::rfc3339_millis")]
    pub time: SystemTime,
    /// What happened.
    pub event: AuditKind,
    /// The TCP peer address of the request, when it came over the network.
    pub source: Option<SocketAddr>,
    /// The peer concerned, when known.
    pub peer_id: Option<PeerId>,
    /// The WireGuard key concerned, when known (for auth failures: the key claimed).
    pub public_key: Option<PublicKey>,
    /// The join token concerned (created, revoked, or used to register), when any.
    pub token_id: Option<TokenId>,
    /// Free text: what exactly happened, e.g. the `AuthError` message.
    pub detail: String,
    /// Who did it, for operator actions: `admin` (the admin API), `console:admin` or
    /// `console:auditor`. Null for peers' own requests and in lines written before actors.
    #[serde(default)]
    pub actor: Option<String>,
}

impl AuditEvent {
    /// Starts an event of `event` kind at `now`; add what is known with the other methods.
    pub fn new(event: AuditKind, now: SystemTime) -> AuditEvent {
        AuditEvent {
            time: now,
            event,
            source: None,
            peer_id: None,
            public_key: None,
            token_id: None,
            detail: String::new(),
            actor: None,
        }
    }

    /// Records who did it (an operator action).
    pub fn actor(mut self, actor: &str) -> AuditEvent {
        self.actor = Some(actor.to_owned());
        self
    }

    /// Records where the request came from.
    pub fn source(mut self, addr: SocketAddr) -> AuditEvent {
        self.source = Some(addr);
        self
    }

    /// Records the peer's key and the id derived from it.
    pub fn peer_key(mut self, key: PublicKey) -> AuditEvent {
        self.peer_id = Some(PeerId::for_key(&key));
        self.public_key = Some(key);
        self
    }

    /// Records a peer id alone, when the key is not at hand (e.g. an operator's removal).
    pub fn peer_id(mut self, id: PeerId) -> AuditEvent {
        self.peer_id = Some(id);
        self
    }

    /// Records the join token concerned.
    pub fn token(mut self, id: TokenId) -> AuditEvent {
        self.token_id = Some(id);
        self
    }

    /// Sets the detail text, cut to [`MAX_DETAIL_CHARS`] characters (with "..." appended).
    pub fn detail(mut self, text: impl Into<String>) -> AuditEvent {
        let mut text = text.into();
        cut_detail(&mut text);
        self.detail = text;
        self
    }
}

fn cut_detail(text: &mut String) {
    if let Some((cut, _)) = text.char_indices().nth(MAX_DETAIL_CHARS) {
        text.truncate(cut);
        text.push_str("...");
    }
}

/// The open audit log file. Share it between threads by reference (or `Arc`): `record`
/// takes `&self` and serializes writers with a `Mutex`.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: Mutex<File>,
}

impl AuditLog {
    /// Opens (creating if needed) the log for appending. A new file gets mode 0600; an
    /// existing one that is readable by group or others is tightened to 0600, because the
    /// log names every peer's key and address.
    pub fn open(path: impl AsRef<Path>) -> io::Result<AuditLog> {
        let path = path.as_ref();
        let mut options = OpenOptions::new();
        options.append(true).create(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let file = options.open(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot open audit log {}: {e}", path.display()),
            )
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = file.metadata()?.permissions().mode();
            if mode & 0o077 != 0 {
                file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            }
        }
        Ok(AuditLog {
            path: path.to_owned(),
            file: Mutex::new(file),
        })
    }

    /// Where the log lives, for error messages and `status` output.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one event as one line. The line is built in memory first and written with a
    /// single `write_all`, then flushed. Not fsynced per line (that would cap the server at a
    /// few hundred registrations per second on slow disks); the OS writes it out shortly.
    /// A `detail` set directly on the struct is cut to [`MAX_DETAIL_CHARS`] here as well.
    pub fn record(&self, event: &AuditEvent) -> io::Result<()> {
        let mut line = if event.detail.len() > MAX_DETAIL_CHARS {
            let mut cut = event.clone();
            cut_detail(&mut cut.detail);
            serde_json::to_vec(&cut)
        } else {
            serde_json::to_vec(event)
        }
        .map_err(io::Error::other)?;
        line.push(b'\n');
        // A writer that panicked mid-line leaves the file as valid as O_APPEND allows;
        // keep auditing rather than failing every later event.
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        file.write_all(&line)?;
        file.flush()
    }

    /// Every event in the log, oldest first, for the console. Lines that do not parse
    /// (cut by a crash, or written by hand) are skipped, not fatal.
    pub fn read_all(&self) -> io::Result<Vec<AuditEvent>> {
        let text = std::fs::read(&self.path)?;
        Ok(text
            .split(|b| *b == b'\n')
            .filter(|line| !line.is_empty())
            .filter_map(|line| serde_json::from_slice(line).ok())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PrivateKey;
    use std::io::BufRead;
    use std::time::{Duration, UNIX_EPOCH};

    fn temp_path(name: &str) -> PathBuf {
        let mut rand = [0u8; 8];
        getrandom::fill(&mut rand).unwrap();
        let dir = std::env::temp_dir().join(format!(
            "wgmesh-audit-{}-{}",
            std::process::id(),
            u64::from_le_bytes(rand)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    fn read_lines(path: &Path) -> Vec<String> {
        let file = File::open(path).unwrap();
        io::BufReader::new(file)
            .lines()
            .map(|l| l.unwrap())
            .collect()
    }

    #[test]
    fn records_one_json_line_per_event_and_appends() {
        let path = temp_path("audit.log");
        let key = PrivateKey::generate().public_key();
        let now = UNIX_EPOCH + Duration::from_millis(1_800_000_000_123);
        {
            let log = AuditLog::open(&path).unwrap();
            log.record(
                &AuditEvent::new(AuditKind::Registration, now)
                    .source("198.18.0.5:40000".parse().unwrap())
                    .peer_key(key)
                    .detail("hostname \"db-1\"\nwith a newline"),
            )
            .unwrap();
        }
        // Reopening appends rather than truncating.
        let log = AuditLog::open(&path).unwrap();
        log.record(&AuditEvent::new(AuditKind::AuthFailure, now).detail("replayed request"))
            .unwrap();

        let lines = read_lines(&path);
        assert_eq!(lines.len(), 2, "{lines:?}");
        let first: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(first["time"], "2027-01-15T08:00:00.123Z");
        assert_eq!(first["event"], "registration");
        assert_eq!(first["source"], "198.18.0.5:40000");
        assert_eq!(first["public_key"], key.to_base64());
        assert_eq!(first["peer_id"], PeerId::for_key(&key).as_str());
        assert_eq!(first["detail"], "hostname \"db-1\"\nwith a newline");
        let second: AuditEvent = serde_json::from_str(&lines[1]).unwrap();
        assert_eq!(second.event, AuditKind::AuthFailure);
        assert_eq!(second.time, now);
        assert_eq!(second.peer_id, None);
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn every_kind_serializes_in_snake_case() {
        let now = UNIX_EPOCH;
        let names: Vec<String> = [
            AuditKind::Registration,
            AuditKind::Deregistration,
            AuditKind::TokenCreate,
            AuditKind::TokenRevoke,
            AuditKind::PolicyChange,
            AuditKind::AuthFailure,
        ]
        .into_iter()
        .map(|k| serde_json::to_value(AuditEvent::new(k, now)).unwrap()["event"].to_string())
        .collect();
        assert_eq!(
            names,
            [
                "\"registration\"",
                "\"deregistration\"",
                "\"token_create\"",
                "\"token_revoke\"",
                "\"policy_change\"",
                "\"auth_failure\""
            ]
        );
    }

    #[cfg(unix)]
    #[test]
    fn file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let path = temp_path("audit.log");
        AuditLog::open(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        // An existing, world-readable file is tightened.
        let loose = path.with_file_name("loose.log");
        std::fs::write(&loose, b"").unwrap();
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
        AuditLog::open(&loose).unwrap();
        let mode = std::fs::metadata(&loose).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn concurrent_writers_never_interleave_lines() {
        let path = temp_path("audit.log");
        let log = AuditLog::open(&path).unwrap();
        let detail = "x".repeat(MAX_DETAIL_CHARS * 2);
        std::thread::scope(|s| {
            for t in 0..4 {
                let (log, detail) = (&log, &detail);
                s.spawn(move || {
                    for i in 0..50 {
                        let kind = if (t + i) % 2 == 0 {
                            AuditKind::Registration
                        } else {
                            AuditKind::AuthFailure
                        };
                        let mut event = AuditEvent::new(kind, SystemTime::now());
                        // Set directly, bypassing the builder's cut: record() cuts too.
                        event.detail = detail.clone();
                        log.record(&event).unwrap();
                    }
                });
            }
        });
        let lines = read_lines(&path);
        assert_eq!(lines.len(), 200);
        for line in lines {
            let e: AuditEvent = serde_json::from_str(&line).unwrap();
            assert_eq!(e.detail.len(), MAX_DETAIL_CHARS + 3);
        }
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn long_details_are_cut_and_odd_clocks_do_not_panic() {
        let e = AuditEvent::new(AuditKind::AuthFailure, UNIX_EPOCH).detail("é".repeat(5000));
        assert_eq!(e.detail.chars().count(), MAX_DETAIL_CHARS + 3);
        assert!(e.detail.ends_with("..."));

        let before_epoch = UNIX_EPOCH - Duration::from_secs(5);
        assert_eq!(
            crate::time::format_exact(before_epoch),
            "1970-01-01T00:00:00Z"
        );
        let far = UNIX_EPOCH + Duration::from_secs(253_402_300_799 * 2);
        assert_eq!(crate::time::format_exact(far), "9999-12-31T23:59:59Z");
        let line = serde_json::to_string(&AuditEvent::new(AuditKind::PolicyChange, far)).unwrap();
        assert!(line.contains("9999-12-31T23:59:59.000Z"), "{line}");
    }

    #[test]
    fn open_failure_names_the_path() {
        let err = AuditLog::open("/nonexistent-dir-wgmesh/audit.log").unwrap_err();
        assert!(err
            .to_string()
            .contains("/nonexistent-dir-wgmesh/audit.log"));
    }
}
