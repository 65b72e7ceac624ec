//! A replica ending a machine's login: one transaction that writes the changed record,
//! then applied here (the other replicas follow the change like any other).

use super::{db_failed, lock, ReplicaStorage};
use crate::server::pg;
use crate::server::storage::{logout, StorageError};
use crate::server::store::PeerRecord;
use crate::types::PeerId;
use std::time::SystemTime;

impl ReplicaStorage {
    /// See [`crate::server::storage::Storage::end_login`].
    pub(super) fn write_end_login(
        &self,
        id: &PeerId,
        now: SystemTime,
    ) -> Result<Option<PeerRecord>, StorageError> {
        let mut seq = lock(&self.seq);
        let result = self.db.write("peers", |tx| {
            self.catch_up_in(tx, &mut seq)?;
            let Some(record) = self.state.registry().by_id(id).cloned() else {
                return Ok(None);
            };
            match logout::end_login(&record, now) {
                Ok(changed) => {
                    let s = pg::put_peer(tx, &changed)?;
                    Ok(Some(Ok((changed, s))))
                }
                Err(e) => Ok(Some(Err(e))),
            }
        });
        let Some(decided) = result.map_err(|e| db_failed(&e))? else {
            return Ok(None);
        };
        let (changed, s) = decided?;
        self.state.change(|reg| {
            reg.advance_to(super::follow::version_of(s));
            reg.commit(changed.clone())
        });
        *seq = s;
        Ok(Some(changed))
    }
}
