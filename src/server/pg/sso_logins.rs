//! Single sign-on logins in progress in the shared database, so that a login started on one
//! replica is polled, approved and finished on any other (no sticky sessions). Each step is
//! one transaction over one row, locked `FOR UPDATE`; the rules of each step are
//! [`StoredLogin`]'s, the same as the in-memory table's. Ages are measured by the database's
//! clock, so replicas whose clocks differ agree on when a login expires.

use super::pool::DbError;
use super::PgStore;
use crate::keys::PublicKey;
use crate::server::sso::identity::Identity;
use crate::server::sso::logins::{
    random_id, CodeFlow, LoginTable, Outcome, Purpose, StoredLogin, LOGIN_LIFETIME, MAX_PENDING,
};
use crate::server::sso::SsoError;
use postgres::Transaction;

/// The database's time in milliseconds, in SQL.
const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

fn lifetime_ms() -> i64 {
    LOGIN_LIFETIME.as_millis() as i64
}

fn store_failed(e: DbError) -> SsoError {
    SsoError::Store(e.to_string())
}

fn parse(text: &str) -> Result<StoredLogin, DbError> {
    serde_json::from_str(text)
        .map_err(|e| DbError::Data(format!("the database holds an unusable login: {e}")))
}

fn text_of(login: &StoredLogin) -> String {
    serde_json::to_string(login).expect("a login serializes")
}

impl PgStore {
    /// Runs `f` in a transaction of its own (no cluster write lock: logins are no part of
    /// the mesh's sequence of changes).
    fn login_tx<R>(
        &self,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<R, DbError>,
    ) -> Result<R, SsoError> {
        let result = (|| {
            let mut conn = self.pool.get()?;
            let mut tx = conn.transaction()?;
            let value = f(&mut tx)?;
            tx.commit()?;
            Ok(value)
        })();
        self.note(result).map_err(store_failed)
    }

    /// The fresh login `id`, locked for this transaction.
    fn locked_login(tx: &mut Transaction<'_>, id: &str) -> Result<Option<StoredLogin>, DbError> {
        let sql = format!(
            "SELECT login FROM wgmesh_sso_logins WHERE id = $1 AND started >= {NOW_MS} - $2 \
             FOR UPDATE"
        );
        tx.query_opt(&sql, &[&id, &lifetime_ms()])?
            .map(|row| parse(&row.get::<_, String>(0)))
            .transpose()
    }

    fn save_login(tx: &mut Transaction<'_>, id: &str, login: &StoredLogin) -> Result<(), DbError> {
        let state = login.code.as_ref().map(|c| c.state.clone());
        tx.execute(
            "UPDATE wgmesh_sso_logins SET login = $2, state = $3 WHERE id = $1",
            &[&id, &text_of(login), &state],
        )?;
        Ok(())
    }
}

impl LoginTable for PgStore {
    fn open(&self, purpose: Purpose, user_code: String) -> Result<Option<String>, SsoError> {
        let login = StoredLogin::new(purpose, user_code);
        self.login_tx(|tx| {
            tx.execute(
                &format!("DELETE FROM wgmesh_sso_logins WHERE started < {NOW_MS} - $1"),
                &[&lifetime_ms()],
            )?;
            let waiting: i64 = tx
                .query_one("SELECT count(*) FROM wgmesh_sso_logins", &[])?
                .get(0);
            if waiting >= MAX_PENDING as i64 {
                return Ok(None);
            }
            let id = random_id();
            tx.execute(
                &format!(
                    "INSERT INTO wgmesh_sso_logins (id, started, login) VALUES ($1, {NOW_MS}, $2)"
                ),
                &[&id, &text_of(&login)],
            )?;
            Ok(Some(id))
        })
    }

    fn look(&self, id: &str) -> Result<Option<(Purpose, String, Outcome)>, SsoError> {
        self.login_tx(|tx| {
            let sql = format!(
                "SELECT login FROM wgmesh_sso_logins WHERE id = $1 AND started >= {NOW_MS} - $2"
            );
            let Some(row) = tx.query_opt(&sql, &[&id, &lifetime_ms()])? else {
                return Ok(None);
            };
            let login = parse(&row.get::<_, String>(0))?;
            Ok(Some((login.purpose, login.user_code, login.outcome)))
        })
    }

    fn attach_code(&self, id: &str, state: String, flow: CodeFlow) -> Result<bool, SsoError> {
        self.login_tx(|tx| {
            let Some(mut login) = Self::locked_login(tx, id)? else {
                return Ok(false);
            };
            if !login.attach_code(state, &flow) {
                return Ok(false);
            }
            Self::save_login(tx, id, &login)?;
            Ok(true)
        })
    }

    fn take_code(&self, state: &str) -> Result<Option<(String, Purpose, CodeFlow)>, SsoError> {
        self.login_tx(|tx| {
            let sql = format!(
                "SELECT id FROM wgmesh_sso_logins WHERE state = $1 AND started >= {NOW_MS} - $2"
            );
            let Some(row) = tx.query_opt(&sql, &[&state, &lifetime_ms()])? else {
                return Ok(None);
            };
            let id: String = row.get(0);
            let Some(mut login) = Self::locked_login(tx, &id)? else {
                return Ok(None);
            };
            // Locked now: a callback replayed at the same moment finds the code gone.
            if login.code.as_ref().is_none_or(|c| c.state != state) {
                return Ok(None);
            }
            let Some(flow) = login.take_code() else {
                return Ok(None);
            };
            Self::save_login(tx, &id, &login)?;
            Ok(Some((id, login.purpose, flow)))
        })
    }

    fn finish(&self, id: &str, outcome: Outcome) -> Result<(), SsoError> {
        self.login_tx(|tx| {
            if let Some(mut login) = Self::locked_login(tx, id)? {
                login.finish(outcome);
                Self::save_login(tx, id, &login)?;
            }
            Ok(())
        })
    }

    fn take_done(&self, id: &str, key: &PublicKey) -> Result<Option<Identity>, SsoError> {
        self.login_tx(|tx| {
            let Some(login) = Self::locked_login(tx, id)? else {
                return Ok(None);
            };
            let who = login.done_for(key).cloned();
            if who.is_some() {
                tx.execute("DELETE FROM wgmesh_sso_logins WHERE id = $1", &[&id])?;
            }
            Ok(who)
        })
    }

    fn remove(&self, id: &str) -> Result<(), SsoError> {
        self.login_tx(|tx| {
            tx.execute("DELETE FROM wgmesh_sso_logins WHERE id = $1", &[&id])?;
            Ok(())
        })
    }
}
