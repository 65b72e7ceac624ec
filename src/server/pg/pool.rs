//! A small bounded pool of PostgreSQL connections: at most `max` open at once, a caller
//! waits (up to a limit) for one to come back, and a connection that broke is dropped, not
//! returned, so an outage heals by itself once the database answers again.
//!
//! Hand-written (a `Mutex<Vec<Client>>` and a `Condvar`) rather than r2d2: it is all the
//! replica store needs, and it keeps the dependency tree small.

use postgres::{Client, Config, NoTls};
use std::ops::{Deref, DerefMut};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long a new connection may take before the database counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a request waits for a free connection before it is answered 503.
pub const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why no database work could be done.
#[derive(Debug)]
pub enum DbError {
    /// The database refused or the connection failed; the text says how.
    Pg(postgres::Error),
    /// Every connection stayed busy for [`CHECKOUT_TIMEOUT`].
    Busy,
    /// The database holds something this build cannot use (the text says what).
    Data(String),
    /// The last operation found the database unreachable (its error, as text).
    Unreachable(String),
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DbError::Pg(e) => match e.as_db_error() {
                Some(db) => write!(f, "database error: {}", db.message()),
                None => write!(f, "database unreachable: {e}"),
            },
            DbError::Busy => f.write_str("every database connection is busy"),
            DbError::Data(m) | DbError::Unreachable(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for DbError {}

impl DbError {
    /// Whether the database is unreachable or unavailable (answer 503, retry later), as
    /// opposed to refusing this one statement.
    pub fn is_outage(&self) -> bool {
        match self {
            DbError::Busy | DbError::Unreachable(_) => true,
            DbError::Data(_) => false,
            DbError::Pg(e) => match e.code() {
                None => true,
                // 08: connection exception, 53: insufficient resources, 57: operator
                // intervention (shutting down, starting up).
                Some(code) => ["08", "53", "57"]
                    .iter()
                    .any(|c| code.code().starts_with(c)),
            },
        }
    }
}

impl From<postgres::Error> for DbError {
    fn from(e: postgres::Error) -> Self {
        DbError::Pg(e)
    }
}

struct Slots {
    idle: Vec<Client>,
    open: usize,
}

/// The pool; share it by reference.
pub struct Pool {
    config: Config,
    max: usize,
    slots: Mutex<Slots>,
    freed: Condvar,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("max", &self.max).finish()
    }
}

/// A checked-out connection; goes back to the pool on drop unless it broke.
pub struct Conn<'a> {
    pool: &'a Pool,
    client: Option<Client>,
}

impl Deref for Conn<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client.as_ref().expect("present until drop")
    }
}

impl DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.client.as_mut().expect("present until drop")
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        let client = self.client.take();
        let mut slots = self.pool.lock();
        match client {
            Some(c) if !c.is_closed() => slots.idle.push(c),
            _ => slots.open -= 1,
        }
        drop(slots);
        self.pool.freed.notify_one();
    }
}

impl Pool {
    /// A pool of at most `max` connections made from `config` (no TLS: loopback or a
    /// private network; see README).
    pub fn new(mut config: Config, max: usize) -> Pool {
        config.connect_timeout(CONNECT_TIMEOUT);
        config.application_name("wgmesh");
        Pool {
            config,
            max: max.max(1),
            slots: Mutex::new(Slots {
                idle: Vec::new(),
                open: 0,
            }),
            freed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh connection outside the pool (for LISTEN, which holds one for good).
    pub fn connect(&self) -> Result<Client, DbError> {
        Ok(self.config.connect(NoTls)?)
    }

    /// A connection: an idle one, a new one while under the bound, or the next one freed.
    pub fn get(&self) -> Result<Conn<'_>, DbError> {
        let deadline = Instant::now() + CHECKOUT_TIMEOUT;
        let mut slots = self.lock();
        loop {
            while let Some(client) = slots.idle.pop() {
                if client.is_closed() {
                    slots.open -= 1;
                    continue;
                }
                return Ok(Conn {
                    pool: self,
                    client: Some(client),
                });
            }
            if slots.open < self.max {
                slots.open += 1;
                drop(slots);
                return match self.connect() {
                    Ok(client) => Ok(Conn {
                        pool: self,
                        client: Some(client),
                    }),
                    Err(e) => {
                        self.lock().open -= 1;
                        self.freed.notify_one();
                        Err(e)
                    }
                };
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(DbError::Busy);
            }
            slots = self
                .freed
                .wait_timeout(slots, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Drops every idle connection (after an outage they may all be dead).
    pub fn clear_idle(&self) {
        let mut slots = self.lock();
        let n = slots.idle.len();
        slots.idle.clear();
        slots.open -= n;
    }
}
