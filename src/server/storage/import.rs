//! `wgmesh server --state peers.json --import-to postgresql://...`: moves a single server's
//! JSON registry, join tokens, server key and admin secret into the replica database, so
//! no peer is renumbered and every agent keeps the server key it pinned.

use super::json::TokenFile;
use crate::server::config::{files_beside, load_or_create_key, ServerConfig, ServerError};
use crate::server::pg::pool::DbError;
use crate::server::pg::{put_peer, put_token, PgStore};
use crate::server::store::Store;

/// Runs the import; the error says what to fix. Prints a summary on stdout.
pub fn run(config: &ServerConfig, url: &str) -> Result<(), ServerError> {
    if !config.state.exists() {
        return Err(ServerError::Config(format!(
            "{} does not exist: pass the --state file of the server to import",
            config.state.display()
        )));
    }
    if !config.key_file.exists() {
        return Err(ServerError::Config(format!(
            "the server key {} is missing: without it every agent would refuse the replicas \
             (they pinned that key)",
            config.key_file.display()
        )));
    }
    let key = load_or_create_key(&config.key_file)?;
    let (_, snapshot) = Store::open(&config.state, config.network).map_err(ServerError::Store)?;
    let (secret_file, tokens_file, _) = files_beside(&config.state);
    let secret = match std::fs::read_to_string(&secret_file) {
        Ok(text) => text.trim().to_owned(),
        Err(_) => crate::keys::random_secret(),
    };
    let tokens = TokenFile::load(tokens_file).map_err(ServerError::Io)?;
    let db_error = |e: DbError| ServerError::Database(e.to_string());
    let db = PgStore::open(url).map_err(db_error)?;
    db.identity(config.network, Some((key, secret)))
        .map_err(db_error)?;
    let peers = snapshot.peers.len();
    let token_count = tokens.store.list().len();
    db.write("peers", |tx| {
        let existing: i64 = tx
            .query_one("SELECT count(*) FROM wgmesh_peers", &[])?
            .get(0);
        if existing > 0 {
            return Err(DbError::Data(format!(
                "the database already holds {existing} peers: import into an empty database, \
                 before any replica registers peers"
            )));
        }
        for peer in &snapshot.peers {
            put_peer(tx, peer)?;
        }
        for token in tokens.store.list() {
            put_token(tx, token)?;
        }
        Ok(())
    })
    .map_err(db_error)?;
    println!(
        "imported {peers} peers (addresses kept) and {token_count} join tokens from {} into \
         PostgreSQL, with this server's key and admin secret; start replicas with --store",
        config.state.display()
    );
    Ok(())
}
