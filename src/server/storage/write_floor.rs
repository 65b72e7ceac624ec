//! Replays across a restart of a server on the JSON store: each key's newest accepted
//! state-changing request, kept on disk, so a request captured before the restart (within
//! the clock-skew window) cannot change anything after it.
//!
//! The replay cache (`proto::auth::ReplayCache`) lives in memory and starts empty. A
//! captured `POST /deregister` replayed after a restart within the 120 s timestamp window
//! used to answer 200 and remove the peer. Every state-changing request (any signed POST but
//! `/heartbeat`, any signed DELETE) now appends `KEY TIMESTAMP NONCE` to `replay-floor.txt`
//! beside the state, synced before the request takes effect; the next process refuses such
//! requests stamped before the newest its key had accepted, and those stamped in that same
//! second whose nonce it accepted then (timestamps are whole seconds: an agent that changes
//! something again in the second a restart ended must not be refused).
//!
//! Why not refuse everything stamped before the process started: an agent whose clock runs
//! ahead of the server's stamps requests after the start that the old process accepted, so
//! those replays would pass; refusing everything stamped before start + 120 s instead would
//! refuse every registration and deregistration for two minutes after each restart. This
//! costs a legitimate agent nothing (its new requests carry a later timestamp or a fresh
//! nonce) unless its clock stepped back across the restart. The server pays one appended
//! line and one fsync per state-changing request (not per heartbeat or read).
//! Heartbeats and reads are not recorded: a replayed one repeats, within 120 s, what its
//! key said then. Replicas need none of this: they claim every nonce in the shared database.
//!
//! A file that cannot be read fails closed: every change stamped before the start plus the
//! clock-skew window is refused (for about two minutes), and the log says why.

use crate::fsutil;
use crate::keys::PublicKey;
use crate::proto::auth::{AuthError, NONCE_LEN};
use std::collections::HashMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// The file beside the state.
pub const FILE_NAME: &str = "replay-floor.txt";

/// Appended lines past which the file is rewritten with only the live keys.
const COMPACT_AFTER_LINES: usize = 4096;

/// A key's newest accepted change: its timestamp and the nonces accepted at it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Newest {
    ts: u64,
    nonces: Vec<[u8; NONCE_LEN]>,
}

impl Newest {
    /// Takes in an accepted change; false when it adds nothing (older, or already held).
    fn add(&mut self, ts: u64, nonce: [u8; NONCE_LEN]) -> bool {
        if ts > self.ts {
            *self = Newest {
                ts,
                nonces: vec![nonce],
            };
        } else if ts == self.ts && !self.nonces.contains(&nonce) {
            self.nonces.push(nonce);
        } else {
            return false;
        }
        true
    }

    /// Whether a request stamped `ts` with `nonce` may be one of those accepted.
    fn covers(&self, ts: u64, nonce: &[u8; NONCE_LEN]) -> bool {
        ts < self.ts || (ts == self.ts && self.nonces.contains(nonce))
    }
}

/// What earlier processes accepted.
#[derive(Debug)]
enum Before {
    /// Each key's newest state-changing request.
    Keys(HashMap<PublicKey, Newest>),
    /// The file was unreadable: refuse every change stamped up to this time.
    Unknown { until: u64 },
}

struct Inner {
    newest: HashMap<PublicKey, Newest>,
    file: Option<File>,
    lines: usize,
}

/// Each key's newest accepted state-changing request, on disk (see the module doc).
pub struct WriteFloor {
    path: PathBuf,
    before: Before,
    max_skew_secs: u64,
    inner: Mutex<Inner>,
}

impl fmt::Debug for WriteFloor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteFloor")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Why a state-changing request was not admitted.
#[derive(Debug)]
pub enum FloorError {
    /// It may be a replay from before the restart (401).
    Auth(AuthError),
    /// It could not be recorded, so it is not accepted (503).
    Io(io::Error),
}

impl FloorError {
    /// The HTTP status to answer with.
    pub fn http_status(&self) -> u16 {
        match self {
            FloorError::Auth(e) => e.http_status(),
            FloorError::Io(_) => 503,
        }
    }
}

impl fmt::Display for FloorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FloorError::Auth(e) => e.fmt(f),
            FloorError::Io(e) => write!(f, "cannot record the request against replays: {e}"),
        }
    }
}

/// One line: `KEY TIMESTAMP NONCE` (base64 key, decimal seconds, hex nonce).
fn parse_line(line: &str) -> Option<(PublicKey, u64, [u8; NONCE_LEN])> {
    let mut fields = line.split(' ');
    let key = PublicKey::from_base64(fields.next()?).ok()?;
    let ts = fields.next()?.parse().ok()?;
    let nonce = hex::decode(fields.next()?).ok()?.try_into().ok()?;
    fields.next().is_none().then_some((key, ts, nonce))
}

fn line(key: &PublicKey, ts: u64, nonce: &[u8; NONCE_LEN]) -> String {
    format!("{key} {ts} {}\n", hex::encode(nonce))
}

/// The keys in the file's text; None when a line other than a torn last one (a crash
/// mid-append, whose request never took effect) does not parse.
fn parse(text: &str) -> Option<HashMap<PublicKey, Newest>> {
    let mut keys: HashMap<PublicKey, Newest> = HashMap::new();
    let lines: Vec<&str> = text.split('\n').collect();
    for (i, text) in lines.iter().enumerate() {
        match parse_line(text) {
            Some((key, ts, nonce)) => {
                keys.entry(key).or_default().add(ts, nonce);
            }
            None if i + 1 == lines.len() => {} // empty after the last newline, or torn
            None => return None,
        }
    }
    Some(keys)
}

fn render(keys: &HashMap<PublicKey, Newest>) -> String {
    let mut text = String::new();
    for (key, newest) in keys {
        for nonce in &newest.nonces {
            text.push_str(&line(key, newest.ts, nonce));
        }
    }
    text
}

impl WriteFloor {
    /// Loads `replay-floor.txt` beside `state` as of `now` (unix seconds), keeps the keys
    /// still inside the clock-skew window, and rewrites it with those alone.
    pub fn beside(state: &Path, now: u64, max_skew_secs: u64) -> WriteFloor {
        let path = fsutil::parent_dir(state).join(FILE_NAME);
        let before = match std::fs::read_to_string(&path) {
            Ok(text) => parse(&text).map(Before::Keys),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Some(Before::Keys(HashMap::new())),
            Err(e) => {
                log::error!("cannot read {}: {e}", path.display());
                None
            }
        };
        let mut before = before.unwrap_or_else(|| {
            log::error!(
                "{} is unreadable: refusing registrations and deregistrations stamped before \
                 {max_skew_secs} s from now, since replays of earlier ones cannot be told apart",
                path.display()
            );
            Before::Unknown {
                until: now + max_skew_secs,
            }
        });
        // Keys whose newest change is outside the window matter no more: anything stamped
        // that long ago is refused by the clock check.
        if let Before::Keys(keys) = &mut before {
            keys.retain(|_, n| n.ts.saturating_add(max_skew_secs) >= now);
        }
        let newest = match &before {
            Before::Keys(keys) => keys.clone(),
            Before::Unknown { .. } => HashMap::new(),
        };
        let floor = WriteFloor {
            path,
            before,
            max_skew_secs,
            inner: Mutex::new(Inner {
                newest,
                file: None,
                lines: 0,
            }),
        };
        if let Err(e) = floor.compact(&mut floor.lock(), now) {
            log::error!("{e}: state-changing requests are refused until it can be written");
        }
        floor
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Rewrites the file with the keys still inside the window and reopens it for appends.
    fn compact(&self, inner: &mut Inner, now: u64) -> io::Result<()> {
        let skew = self.max_skew_secs;
        inner.newest.retain(|_, n| n.ts.saturating_add(skew) >= now);
        inner.file = None;
        fsutil::write_atomic(&self.path, render(&inner.newest).as_bytes(), 0o600)?;
        let file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(|e| fsutil::with_path(e, "cannot open", &self.path))?;
        inner.file = Some(file);
        inner.lines = inner.newest.values().map(|n| n.nonces.len()).sum();
        Ok(())
    }

    /// Admits a state-changing request of `key` stamped `ts` with `nonce` (checked by the
    /// MAC already), recording it on disk before it may take effect; refuses one that may be
    /// a change its key made before the restart.
    pub fn admit(
        &self,
        key: &PublicKey,
        (ts, nonce): (u64, [u8; NONCE_LEN]),
        now: u64,
    ) -> Result<(), FloorError> {
        let stale = match &self.before {
            Before::Keys(keys) => keys.get(key).is_some_and(|n| n.covers(ts, &nonce)),
            Before::Unknown { until } => ts <= *until,
        };
        if stale {
            return Err(FloorError::Auth(AuthError::BeforeRestart));
        }
        let mut inner = self.lock();
        let mut newest = inner.newest.get(key).cloned().unwrap_or_default();
        if !newest.add(ts, nonce) {
            return Ok(()); // a later one is on disk already
        }
        if inner.file.is_none() || inner.lines >= COMPACT_AFTER_LINES.max(4 * inner.newest.len()) {
            self.compact(&mut inner, now).map_err(FloorError::Io)?;
        }
        let appended = match inner.file.as_mut() {
            Some(file) => file
                .write_all(line(key, ts, &nonce).as_bytes())
                .and_then(|()| file.sync_data()),
            None => Err(io::Error::other("not open")),
        };
        if let Err(e) = appended {
            inner.file = None; // reopened (and rewritten whole) at the next change
            let e = fsutil::with_path(e, "cannot append to", &self.path);
            return Err(FloorError::Io(e));
        }
        inner.lines += 1;
        inner.newest.insert(*key, newest);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> PublicKey {
        PublicKey::from_bytes([n; 32])
    }

    const N1: [u8; NONCE_LEN] = [1; NONCE_LEN];
    const N2: [u8; NONCE_LEN] = [2; NONCE_LEN];

    #[test]
    fn a_change_its_key_may_have_made_before_a_restart_is_refused_and_newer_ones_pass() {
        let dir = std::env::temp_dir().join(format!("wgmesh-floor-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let state = dir.join("peers.json");
        let first = WriteFloor::beside(&state, 1000, 120);
        first.admit(&key(1), (1000, N1), 1000).unwrap();
        first.admit(&key(1), (1005, N1), 1005).unwrap();
        first.admit(&key(1), (1003, N2), 1005).unwrap(); // in order enough: the cache judges
        first.admit(&key(2), (900, N1), 1005).unwrap();
        drop(first);
        // A torn last line (a crash mid-append) is ignored.
        let path = dir.join(FILE_NAME);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("AAAA");
        std::fs::write(&path, text).unwrap();
        let second = WriteFloor::beside(&state, 1010, 120);
        for stale in [(1005, N1), (1003, N2), (1000, N1)] {
            let refused = second.admit(&key(1), stale, 1010).unwrap_err();
            assert_eq!(refused.http_status(), 401);
            assert!(refused.to_string().contains("restarted"), "{refused}");
        }
        // The same second with a fresh nonce, and any later second, pass.
        second.admit(&key(1), (1005, N2), 1010).unwrap();
        second.admit(&key(1), (1006, N1), 1010).unwrap();
        second.admit(&key(2), (901, N1), 1010).unwrap();
        second.admit(&key(3), (1, N1), 1010).unwrap();
        drop(second);
        // After another restart, what the second process accepted counts too; keys older
        // than the window were dropped.
        let third = WriteFloor::beside(&state, 1010, 120);
        assert!(third.admit(&key(1), (1006, N1), 1010).is_err());
        assert!(third.admit(&key(1), (1005, N2), 1010).is_err());
        assert!(third.admit(&key(2), (901, N1), 1010).is_err());
        third.admit(&key(3), (1, N1), 1010).unwrap();
        // A damaged file fails closed for the window.
        std::fs::write(&path, "garbage\nmore garbage\n").unwrap();
        let damaged = WriteFloor::beside(&state, 2000, 120);
        assert!(damaged.admit(&key(9), (2100, N1), 2000).is_err());
        damaged.admit(&key(9), (2121, N1), 2121).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
