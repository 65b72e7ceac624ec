//! Ending a machine's single sign-on login at once (`wgmesh peers logout`): the record as
//! both stores write it. The machine goes offline (every list drops it), and its signed
//! requests are refused until it logs in again with `wgmesh up --login`.

use super::StorageError;
use crate::server::store::PeerRecord;
use std::time::SystemTime;

/// The record with its login ended at `now`, or why it has no login to end.
pub fn end_login(record: &PeerRecord, now: SystemTime) -> Result<PeerRecord, StorageError> {
    let Some(owner) = &record.owner else {
        return Err(StorageError::Refused(
            409,
            format!(
                "peer {} ({}) joined with a token, not a single sign-on login: remove it with \
                 `wgmesh peers remove {}` instead",
                record.id, record.hostname, record.id
            ),
        ));
    };
    let mut changed = record.clone();
    let mut owner = owner.clone();
    owner.logged_out_at = Some(owner.logged_out_at.unwrap_or(now));
    changed.owner = Some(owner);
    changed.online = false;
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::sso::identity::Owner;

    fn record(owner: Option<Owner>) -> PeerRecord {
        let text = serde_json::json!({
            "id": "peer-aaaaaaaaaaaaaaaa",
            "public_key": crate::keys::PublicKey::from_bytes([7; 32]).to_base64(),
            "virtual_ip": "10.100.0.2",
            "hostname": "laptop",
            "os": "linux",
            "registered_at": "2026-01-01T00:00:00Z",
            "last_heartbeat": "2026-01-01T00:00:00Z",
            "online": true,
        });
        let mut r: PeerRecord = serde_json::from_value(text).unwrap();
        r.id = crate::types::PeerId::for_key(&r.public_key);
        r.owner = owner;
        r
    }

    #[test]
    fn ending_a_login_takes_the_peer_offline_and_keeps_the_first_end() {
        let first = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(5_000);
        let owner = Owner {
            subject: "s".into(),
            email: Some("a@example.com".into()),
            logged_in_at: SystemTime::UNIX_EPOCH,
            logged_out_at: None,
        };
        let ended = end_login(&record(Some(owner)), first).unwrap();
        assert!(!ended.online);
        assert_eq!(ended.owner.as_ref().unwrap().logged_out_at, Some(first));
        let again = end_login(&ended, first + std::time::Duration::from_secs(9)).unwrap();
        assert_eq!(again.owner.unwrap().logged_out_at, Some(first));
    }

    #[test]
    fn a_token_peer_has_no_login_to_end() {
        let e = end_login(&record(None), SystemTime::now()).unwrap_err();
        assert_eq!(e.http_status(), 409);
        assert!(e.to_string().contains("wgmesh peers remove"), "{e}");
    }
}
