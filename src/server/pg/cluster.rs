//! Which replicas are alive: each announces the URL agents reach it at once per sweep, and
//! `GET /replicas` lists those heard from lately (for the relay's rendezvous, issue 11).

use super::pool::DbError;
use super::{millis, PgStore};
use std::time::SystemTime;

impl PgStore {
    /// Records that the replica at `url` is alive now.
    pub fn announce(&self, url: &str) -> Result<(), DbError> {
        let now = millis(SystemTime::now());
        let result = (|| {
            self.pool.get()?.execute(
                "INSERT INTO wgmesh_replicas (url, last_seen) VALUES ($1, $2)
                 ON CONFLICT (url) DO UPDATE SET last_seen = excluded.last_seen",
                &[&url, &now],
            )?;
            Ok(())
        })();
        self.note(result)
    }

    /// The replicas that announced themselves since `since`, sorted.
    pub fn replicas(&self, since: SystemTime) -> Result<Vec<String>, DbError> {
        let result = (|| {
            let rows = self.pool.get()?.query(
                "SELECT url FROM wgmesh_replicas WHERE last_seen >= $1 ORDER BY url",
                &[&millis(since)],
            )?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })();
        self.note(result)
    }
}
