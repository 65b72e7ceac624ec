//! Replay protection across replicas (issue 11): a signed request accepted by one replica is
//! refused when replayed to another, because every replica claims each request's nonce in
//! one shared (unlogged) table before acting on it.
//!
//! Claims are made in group commits so that heartbeats, the bulk of the traffic, do not cost
//! a database round trip each: the first request to arrive while no claim is in flight
//! becomes the leader and claims everything queued so far with one `INSERT ... SELECT FROM
//! unnest(...) ON CONFLICT DO NOTHING RETURNING`; requests arriving meanwhile queue for the
//! next one. Under load a batch holds every request of one database round trip; alone, a
//! request pays one round trip (well under a millisecond on a LAN). Nothing waits on a timer.

use super::pool::DbError;
use std::collections::{HashMap, HashSet};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::SystemTime;

/// What a failed batch tells each of its requests: whether it was an outage (503, retry)
/// and the database's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimFailed {
    /// The database was unreachable or busy (the request may be retried).
    pub outage: bool,
    /// What went wrong.
    pub text: String,
}

impl From<&DbError> for ClaimFailed {
    fn from(e: &DbError) -> ClaimFailed {
        ClaimFailed {
            outage: e.is_outage(),
            text: e.to_string(),
        }
    }
}

#[derive(Debug, Default)]
struct Queue {
    next_ticket: u64,
    /// Tickets waiting for the next batch, with their nonces.
    waiting: Vec<(u64, Vec<u8>)>,
    /// Whether a batch is being claimed now.
    claiming: bool,
    /// Answers not yet picked up, by ticket.
    answers: HashMap<u64, Result<bool, ClaimFailed>>,
}

/// The group-commit queue of nonce claims. One per replica.
#[derive(Debug, Default)]
pub struct NonceClaims {
    queue: Mutex<Queue>,
    answered: Condvar,
}

impl NonceClaims {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Claims `nonce`: true when no replica accepted it before (the request may proceed),
    /// false for a replay. `insert` claims a batch of distinct nonces and returns those it
    /// inserted ([`super::PgStore::claim_nonces`]); it runs on whichever caller leads the
    /// batch, never under the queue's lock.
    pub fn claim(
        &self,
        nonce: &[u8],
        insert: impl Fn(&[Vec<u8>]) -> Result<HashSet<Vec<u8>>, DbError>,
    ) -> Result<bool, ClaimFailed> {
        let mut queue = self.lock();
        let ticket = queue.next_ticket;
        queue.next_ticket += 1;
        queue.waiting.push((ticket, nonce.to_vec()));
        loop {
            if let Some(answer) = queue.answers.remove(&ticket) {
                return answer;
            }
            if queue.claiming {
                queue = self.answered.wait(queue).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            // Lead the next batch: everything queued so far, this request included.
            queue.claiming = true;
            let batch = std::mem::take(&mut queue.waiting);
            drop(queue);
            let answers = claim_batch(&batch, &insert);
            queue = self.lock();
            queue.answers.extend(answers);
            queue.claiming = false;
            self.answered.notify_all();
        }
    }
}

/// Claims one batch: each distinct nonce once (a nonce twice in one batch is a replay of the
/// first), and answers every ticket.
fn claim_batch(
    batch: &[(u64, Vec<u8>)],
    insert: &impl Fn(&[Vec<u8>]) -> Result<HashSet<Vec<u8>>, DbError>,
) -> Vec<(u64, Result<bool, ClaimFailed>)> {
    let mut first: HashMap<&[u8], u64> = HashMap::new();
    for (ticket, nonce) in batch {
        first.entry(nonce.as_slice()).or_insert(*ticket);
    }
    let distinct: Vec<Vec<u8>> = first.keys().map(|n| n.to_vec()).collect();
    match insert(&distinct) {
        Ok(inserted) => batch
            .iter()
            .map(|(ticket, nonce)| {
                let mine = first.get(nonce.as_slice()) == Some(ticket);
                (*ticket, Ok(mine && inserted.contains(nonce)))
            })
            .collect(),
        Err(e) => {
            let failed = ClaimFailed::from(&e);
            batch
                .iter()
                .map(|(ticket, _)| (*ticket, Err(failed.clone())))
                .collect()
        }
    }
}

impl super::PgStore {
    /// Forgets nonces whose timestamps are too old to be accepted anyway.
    pub fn purge_nonces(&self, now: SystemTime) -> Result<u64, DbError> {
        let now = super::millis(now) / 1000;
        let result = (|| {
            Ok(self
                .pool
                .get()?
                .execute("DELETE FROM wgmesh_nonces WHERE expires < $1", &[&now])?)
        })();
        self.note(result)
    }

    /// Claims a batch of distinct nonces until `expires` (unix seconds): returns those no
    /// replica had claimed before (the others are replays).
    pub fn claim_nonces(
        &self,
        nonces: &[Vec<u8>],
        expires: u64,
    ) -> Result<HashSet<Vec<u8>>, DbError> {
        let result = (|| {
            let rows = self.pool.get()?.query(
                "INSERT INTO wgmesh_nonces (nonce, expires)
                 SELECT n, $2 FROM unnest($1::bytea[]) AS n
                 ON CONFLICT DO NOTHING RETURNING nonce",
                &[&nonces, &(expires as i64)],
            )?;
            Ok(rows.iter().map(|row| row.get::<_, Vec<u8>>(0)).collect())
        })();
        self.note(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A fake table: inserts what it has not seen, and counts round trips.
    struct Table {
        seen: Mutex<HashSet<Vec<u8>>>,
        trips: AtomicUsize,
    }

    impl Table {
        fn insert(&self, nonces: &[Vec<u8>]) -> Result<HashSet<Vec<u8>>, DbError> {
            self.trips.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(5));
            let mut seen = self.seen.lock().unwrap();
            Ok(nonces
                .iter()
                .filter(|n| seen.insert(n.to_vec()))
                .cloned()
                .collect())
        }
    }

    #[test]
    fn each_nonce_is_admitted_once_and_concurrent_claims_share_round_trips() {
        let claims = Arc::new(NonceClaims::default());
        let table = Arc::new(Table {
            seen: Mutex::new(HashSet::new()),
            trips: AtomicUsize::new(0),
        });
        // 8 threads claim 50 nonces each; every nonce is claimed by two threads at once.
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let (claims, table) = (claims.clone(), table.clone());
                std::thread::spawn(move || {
                    (0..50u32)
                        .map(|i| {
                            let nonce = format!("{}-{i}", t / 2).into_bytes();
                            claims
                                .claim(&nonce, |b| table.insert(b))
                                .expect("the fake table never fails")
                        })
                        .filter(|admitted| *admitted)
                        .count()
                })
            })
            .collect();
        let admitted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(
            admitted,
            4 * 50,
            "each of the 200 nonces admitted exactly once"
        );
        let trips = table.trips.load(Ordering::SeqCst);
        assert!(
            trips < 400,
            "claims were grouped: {trips} round trips for 400"
        );
    }

    #[test]
    fn a_failed_batch_fails_every_request_in_it_and_the_next_batch_recovers() {
        let claims = NonceClaims::default();
        let down = claims.claim(b"n1", |_| Err(DbError::Busy));
        assert_eq!(
            down,
            Err(ClaimFailed {
                outage: true,
                text: DbError::Busy.to_string()
            })
        );
        // Nothing was claimed, so the same nonce is admitted once the database answers.
        let up = claims.claim(b"n1", |b| Ok(b.iter().cloned().collect()));
        assert_eq!(up, Ok(true));
    }

    #[test]
    fn a_nonce_twice_in_one_batch_admits_only_the_first() {
        let batch = vec![(1, b"x".to_vec()), (2, b"x".to_vec()), (3, b"y".to_vec())];
        let answers = claim_batch(&batch, &|b: &[Vec<u8>]| Ok(b.iter().cloned().collect()));
        assert_eq!(
            answers,
            vec![(1, Ok(true)), (2, Ok(false)), (3, Ok(true))],
            "the second x is a replay of the first"
        );
    }
}
