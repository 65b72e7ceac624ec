//! The server's trust state beside the registry: the admin secret, the persisted join tokens
//! and the per-source rate limits. Each lives in its own small type so the API handlers only
//! ask yes/no questions ("is this the admin?", "may this address try again?").
//!
//! # Why an admin secret over HTTP rather than a Unix socket
//!
//! Admin operations (tokens, peer removal, policy reload) reuse the HTTP layer that already
//! exists, with its size limits and timeouts, and whatever TLS the control plane gets, so an
//! operator can run them from another machine too. A peer can never reach them with its own
//! credentials: peers authenticate with per-request MACs from their WireGuard key, while the
//! admin presents a 256-bit secret that exists only in `admin.secret` (mode 0600, beside the
//! state file), compared in constant time. A Unix socket would add a second listener, a second
//! request parser and platform differences (Windows) for no gain in what it protects.

use crate::fsutil;
use crate::server::audit::{AuditEvent, AuditLog};
use crate::server::config::{files_beside, ServerConfig, ServerError};
use crate::server::policy::{Policy, PolicyError};
use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// The header the admin secret travels in, as `Authorization: Bearer SECRET`.
pub const ADMIN_HEADER: &str = "Authorization";

/// The secret that opens `/admin/...`, created on first start.
pub struct AdminSecret {
    secret: String,
}

impl std::fmt::Debug for AdminSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminSecret(<redacted>)")
    }
}

impl AdminSecret {
    /// Loads the secret from `path`, creating it (mode 0600) if it does not exist yet, so a
    /// fresh server is administrable by whoever can read its state folder and nobody else.
    pub fn load_or_create(path: &Path) -> io::Result<AdminSecret> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let secret = text.trim().to_owned();
                if secret.len() < 32 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "admin secret {} is too short to be safe; delete it to make a new one",
                            path.display()
                        ),
                    ));
                }
                Ok(AdminSecret { secret })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let secret = crate::keys::random_secret();
                fsutil::write_atomic(path, format!("{secret}\n").as_bytes(), 0o600)?;
                log::info!("created admin secret {}", path.display());
                Ok(AdminSecret { secret })
            }
            Err(e) => Err(fsutil::with_path(e, "cannot read admin secret", path)),
        }
    }

    /// The cluster's secret as the replica store keeps it, written to `path` (0600) too so
    /// the CLI on this host finds it where it always looks.
    pub fn adopt(secret: String, path: &Path) -> io::Result<AdminSecret> {
        fsutil::write_atomic(path, format!("{secret}\n").as_bytes(), 0o600)?;
        Ok(AdminSecret { secret })
    }

    /// Whether an `Authorization` header value carries this secret. Compared in constant time
    /// so response timing says nothing about how much of a guess was right.
    pub fn matches(&self, header: Option<&str>) -> bool {
        let Some(presented) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
            return false;
        };
        bool::from(presented.trim().as_bytes().ct_eq(self.secret.as_bytes()))
    }
}

/// A per-source token bucket: `per_minute` events refill over a minute, and up to
/// `per_minute` may come at once. Used for registrations and for failed authentications.
#[derive(Debug)]
pub struct RateLimiter {
    per_minute: u32,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// How many sources a limiter tracks before it forgets the ones whose buckets are full again:
/// bounds memory under a spray of source addresses.
const MAX_TRACKED_SOURCES: usize = 65_536;

/// The unit a limit applies to: an IPv4 address, or an IPv6 /64, because one host or site
/// usually holds a whole /64 and could otherwise rotate through 2^64 fresh buckets.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
    }
}

impl RateLimiter {
    /// A limiter allowing `per_minute` events per source per minute (0 = unlimited).
    pub fn new(per_minute: u32) -> RateLimiter {
        RateLimiter {
            per_minute,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn refill(&self, bucket: &mut Bucket, now: Instant) {
        let cap = f64::from(self.per_minute);
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * cap / 60.0).min(cap);
        bucket.updated = now;
    }

    fn retry_after(&self, bucket: &Bucket) -> Duration {
        let missing = 1.0 - bucket.tokens;
        let secs = (missing * 60.0 / f64::from(self.per_minute))
            .ceil()
            .max(1.0);
        Duration::from_secs(secs as u64)
    }

    /// Whether `source` may act now, without using anything up: for failed-auth limits,
    /// checked before the (expensive) verification and charged only on failure.
    pub fn check(&self, source: IpAddr, now: Instant) -> Result<(), Duration> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let source = source_key(source);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        match buckets.get_mut(&source) {
            None => Ok(()),
            Some(bucket) => {
                self.refill(bucket, now);
                if bucket.tokens >= 1.0 {
                    Ok(())
                } else {
                    Err(self.retry_after(bucket))
                }
            }
        }
    }

    /// Uses up one event for `source`, or says how long to wait if none is left.
    pub fn take(&self, source: IpAddr, now: Instant) -> Result<(), Duration> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let source = source_key(source);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_TRACKED_SOURCES && !buckets.contains_key(&source) {
            let cap = f64::from(self.per_minute);
            let per_sec = cap / 60.0;
            buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.updated).as_secs_f64() * per_sec < cap
            });
        }
        let bucket = buckets.entry(source).or_insert(Bucket {
            tokens: f64::from(self.per_minute),
            updated: now,
        });
        self.refill(bucket, now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(self.retry_after(bucket))
        }
    }
}

/// The access policy in force and where it came from, swapped whole on reload so a request
/// sees either the old policy or the new one, never a mix.
#[derive(Debug)]
pub struct PolicyHolder {
    path: Option<PathBuf>,
    current: RwLock<(Arc<Policy>, u64)>,
}

impl PolicyHolder {
    /// Loads the policy file, or allows everyone to see everyone when there is none. A
    /// prefix overlapping the mesh networks (`mesh`) is refused.
    pub fn load(path: Option<PathBuf>, mesh: &[ipnet::IpNet]) -> Result<PolicyHolder, PolicyError> {
        let policy = match &path {
            Some(p) => checked(p, mesh)?,
            None => Policy::allow_all(),
        };
        Ok(PolicyHolder {
            path,
            current: RwLock::new((Arc::new(policy), 1)),
        })
    }

    /// The policy in force and its version (bumped on every change, part of `/peers` ETags).
    pub fn current(&self) -> (Arc<Policy>, u64) {
        let guard = self.current.read().unwrap_or_else(|p| p.into_inner());
        (guard.0.clone(), guard.1)
    }

    /// Puts a policy received from elsewhere (the replica store) in force; returns whether
    /// it changed anything.
    pub fn replace(&self, fresh: Policy) -> bool {
        let mut guard = self.current.write().unwrap_or_else(|p| p.into_inner());
        if *guard.0 == fresh {
            return false;
        }
        *guard = (Arc::new(fresh), guard.1 + 1);
        true
    }

    /// The policy file, if the server was given one.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Re-reads the policy file. A file that does not parse (or names a prefix overlapping
    /// the mesh networks `mesh`) leaves the old policy in force (a typo must not open or
    /// close the whole mesh) and returns why. Returns whether the policy changed, and the
    /// policy now in force.
    pub fn reload(&self, mesh: &[ipnet::IpNet]) -> Result<(bool, Arc<Policy>), PolicyError> {
        let Some(path) = &self.path else {
            return Err(PolicyError(
                "no policy file: the server was started without --policy, so everyone sees \
                 everyone; restart it with --policy FILE to use one"
                    .into(),
            ));
        };
        let fresh = checked(path, mesh)?;
        let mut guard = self.current.write().unwrap_or_else(|p| p.into_inner());
        if *guard.0 == fresh {
            return Ok((false, guard.0.clone()));
        }
        let fresh = Arc::new(fresh);
        *guard = (fresh.clone(), guard.1 + 1);
        Ok((true, fresh))
    }
}

/// A policy file read, parsed and checked against the mesh networks; errors name the file.
pub fn checked(path: &Path, mesh: &[ipnet::IpNet]) -> Result<Policy, PolicyError> {
    let policy = Policy::load(path)?;
    policy
        .check_mesh(mesh)
        .map_err(|e| PolicyError(format!("{}: {e}", path.display())))?;
    Ok(policy)
}

/// Where audit events go instead of the local file: the replicas' shared table, so every
/// replica's events land in one place.
pub trait AuditSink: Send + Sync + std::fmt::Debug {
    /// Appends one event; an error makes the caller fall back to the local file.
    fn record(&self, event: &AuditEvent) -> io::Result<()>;

    /// Every event, oldest first.
    fn events(&self) -> io::Result<Vec<AuditEvent>>;
}

/// Everything that decides who may use the API, built once at start from the
/// configuration: the admin secret, the audit trail and the per-source rate limits. (Who
/// may join is [`crate::server::storage::admission`]; who sees whom is the policy in
/// [`crate::server::state::MeshState`].)
#[derive(Debug)]
pub struct Trust {
    /// Opens `/admin/...`.
    pub admin: AdminSecret,
    /// The audit log beside the state.
    pub audit: AuditLog,
    /// Registrations per source per minute.
    pub register_limit: RateLimiter,
    /// Failed authentications per source per minute, past which a source gets 429.
    pub auth_failure_limit: RateLimiter,
    /// With replicas: the shared database, where audit events go instead of the file.
    pub audit_sink: std::sync::OnceLock<Arc<dyn AuditSink>>,
}

impl Trust {
    /// Loads (or creates) the admin secret and opens the audit log, beside the state file.
    pub fn load(config: &ServerConfig) -> Result<Trust, ServerError> {
        let (secret, _, audit) = files_beside(&config.state);
        let trust = Trust {
            admin: AdminSecret::load_or_create(&secret).map_err(ServerError::Io)?,
            // The error already names the file.
            audit: AuditLog::open(&audit).map_err(ServerError::Io)?,
            register_limit: RateLimiter::new(config.register_per_minute),
            auth_failure_limit: RateLimiter::new(config.auth_failures_per_minute),
            audit_sink: std::sync::OnceLock::new(),
        };
        if config.open {
            log::warn!(
                "OPEN REGISTRATION (--open): anyone who can reach this server can join the mesh \
                 and see its peers; use join tokens (`wgmesh token create`) outside a lab"
            );
        }
        Ok(trust)
    }

    /// Every audit event, oldest first: the cluster's table with replicas, else the file.
    pub fn audit_events(&self) -> io::Result<Vec<AuditEvent>> {
        match self.audit_sink.get() {
            Some(sink) => sink.events(),
            None => self.audit.read_all(),
        }
    }

    /// Appends one audit event; a failing audit log is reported but never stops service.
    pub fn audit(&self, event: AuditEvent) {
        if let Some(sink) = self.audit_sink.get() {
            match sink.record(&event) {
                Ok(()) => return,
                Err(e) => log::error!("cannot write the audit table, using the file: {e}"),
            }
        }
        if let Err(e) = self.audit.record(&event) {
            log::error!(
                "cannot write the audit log {}: {e}",
                self.audit.path().display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_allows_a_burst_then_asks_to_wait_and_refills() {
        let limiter = RateLimiter::new(3);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            limiter.take(ip, t0).unwrap();
        }
        let wait = limiter.take(ip, t0).unwrap_err();
        assert_eq!(wait, Duration::from_secs(20));
        assert!(limiter.check(ip, t0).is_err());
        limiter.take(other, t0).unwrap();
        limiter.take(ip, t0 + Duration::from_secs(20)).unwrap();
        assert!(RateLimiter::new(0).take(ip, t0).is_ok());
    }

    #[test]
    fn ipv6_sources_share_a_bucket_per_64() {
        let limiter = RateLimiter::new(1);
        let t0 = Instant::now();
        limiter
            .take("2001:db8:1:2::1".parse().unwrap(), t0)
            .unwrap();
        assert!(limiter
            .take("2001:db8:1:2:ffff::9".parse().unwrap(), t0)
            .is_err());
        limiter
            .take("2001:db8:1:3::1".parse().unwrap(), t0)
            .unwrap();
    }

    #[test]
    fn admin_secret_is_created_0600_and_compared_exactly() {
        let dir = std::env::temp_dir().join(format!("wgmesh-admin-{}", std::process::id()));
        let path = dir.join("admin.secret");
        let secret = AdminSecret::load_or_create(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let again = AdminSecret::load_or_create(&path).unwrap();
        let header = format!("Bearer {}", text.trim());
        assert!(secret.matches(Some(&header)) && again.matches(Some(&header)));
        assert!(!secret.matches(Some(text.trim())));
        assert!(!secret.matches(Some("Bearer x")));
        assert!(!secret.matches(None));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
