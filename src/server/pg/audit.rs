//! The cluster's audit log: one table (`wgmesh_audit`), one JSON event per row, so every
//! replica's events land in one place in order.

use super::pool::DbError;
use super::{bad_data, millis, PgStore};
use crate::server::audit::AuditEvent;

impl PgStore {
    /// Appends one audit event to the audit table.
    pub fn record_audit(&self, event: &AuditEvent) -> Result<(), DbError> {
        let text = serde_json::to_string(event).map_err(|e| DbError::Data(e.to_string()))?;
        let kind = serde_json::to_value(event.event)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let result = (|| {
            self.pool.get()?.execute(
                "INSERT INTO wgmesh_audit (time_ms, event, record) VALUES ($1, $2, $3)",
                &[&millis(event.time), &kind, &text],
            )?;
            Ok(())
        })();
        self.note(result)
    }

    /// Every audit event, oldest first (for tests and export).
    pub fn audit_events(&self) -> Result<Vec<AuditEvent>, DbError> {
        let rows = self
            .pool
            .get()?
            .query("SELECT record FROM wgmesh_audit ORDER BY id", &[])?;
        rows.iter()
            .map(|r| {
                serde_json::from_str(&r.get::<_, String>(0)).map_err(|e| bad_data("audit line", e))
            })
            .collect()
    }
}

impl crate::server::trust::AuditSink for PgStore {
    fn record(&self, event: &AuditEvent) -> std::io::Result<()> {
        self.record_audit(event).map_err(std::io::Error::other)
    }

    fn events(&self) -> std::io::Result<Vec<AuditEvent>> {
        self.audit_events().map_err(std::io::Error::other)
    }
}
