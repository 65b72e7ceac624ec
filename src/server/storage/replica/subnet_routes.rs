//! A replica's subnet-route decisions: decided on the cluster's latest state inside the
//! write transaction (like a registration), written, then applied here at the sequence the
//! database gave, so every replica shows the same approvals at the same `/peers` version.
//! A policy reload's approvals ([`subnet_routes::reload_approvals`]) are written the same way.

use super::{db_failed, lock, ReplicaStorage};
use crate::server::pg;
use crate::server::policy::Policy;
use crate::server::storage::subnet_routes::{self, Verdict};
use crate::server::storage::StorageError;
use crate::server::store::PeerRecord;
use crate::types::PeerId;
use ipnet::IpNet;

impl ReplicaStorage {
    /// Approves or rejects one advertised route of `id` in one transaction.
    pub(super) fn write_route_decision(
        &self,
        id: &PeerId,
        prefix: IpNet,
        verdict: Verdict,
    ) -> Result<PeerRecord, StorageError> {
        let mut seq = lock(&self.seq);
        let written = self.db.write("peers", |tx| {
            self.catch_up_in(tx, &mut seq)?;
            let decided = {
                let registry = self.state.registry();
                match registry.by_id(id) {
                    None => Err(StorageError::Refused(
                        404,
                        format!("no peer {id} is registered (see `wgmesh routes list`)"),
                    )),
                    Some(owner) => subnet_routes::decide(&registry, owner, prefix, verdict)
                        .map(|record| (record.clone() != *owner, record))
                        .map_err(StorageError::from),
                }
            };
            match decided {
                Ok((true, record)) => pg::put_peer(tx, &record).map(|s| Ok((Some(s), record))),
                Ok((false, record)) => Ok(Ok((None, record))),
                Err(e) => Ok(Err(e)),
            }
        });
        let (wrote, record) = written.map_err(|e| db_failed(&e))??;
        if let Some(s) = wrote {
            self.state.change(|reg| {
                reg.advance_to(super::follow::version_of(s));
                reg.commit(record.clone())
            });
            *seq = s;
        }
        Ok(record)
    }

    /// Approves, in one transaction on the cluster's latest state, the advertised routes the
    /// rules of `policy` (just published, or in force at start) cover; how many records
    /// changed.
    pub(super) fn write_reload_approvals(&self, policy: &Policy) -> Result<usize, StorageError> {
        if policy.route_rules().is_empty() {
            return Ok(0);
        }
        let mut seq = lock(&self.seq);
        // Announced only when something was approved: every replica runs this at start.
        let written = self.db.write_if(
            "peers",
            |tx| {
                self.catch_up_in(tx, &mut seq)?;
                let approved = subnet_routes::reload_approvals(policy, &self.state.registry());
                let mut out = Vec::with_capacity(approved.len());
                for record in approved {
                    out.push((pg::put_peer(tx, &record)?, record));
                }
                Ok(out)
            },
            |out| !out.is_empty(),
        );
        let written = written.map_err(|e| db_failed(&e))?;
        let count = written.len();
        if let Some((last, _)) = written.last() {
            let last = *last;
            self.state.change(|reg| {
                for (s, record) in written {
                    reg.advance_to(super::follow::version_of(s));
                    reg.commit(record);
                }
            });
            *seq = last;
        }
        Ok(count)
    }
}
