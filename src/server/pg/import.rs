//! `wgmesh server --state peers.json --import-to postgresql://...`: moves a single server's
//! JSON registry, join tokens, server key and admin secret into the replica database, so
//! no peer is renumbered and every agent keeps the server key it pinned.

use super::{put_peer, put_token, PgStore};
use crate::server::store::Store;
use crate::server::trust::{files_beside, TokenFile};
use crate::server::ServerConfig;

/// Runs the import; the error says what to fix. Prints a summary on stdout.
pub fn run(config: &ServerConfig, url: &str) -> Result<(), String> {
    if !config.state.exists() {
        return Err(format!(
            "{} does not exist: pass the --state file of the server to import",
            config.state.display()
        ));
    }
    if !config.key_file.exists() {
        return Err(format!(
            "the server key {} is missing: without it every agent would refuse the replicas \
             (they pinned that key)",
            config.key_file.display()
        ));
    }
    let key = crate::server::load_or_create_key(&config.key_file).map_err(|e| e.to_string())?;
    let (_, snapshot) = Store::open(&config.state, config.network).map_err(|e| e.to_string())?;
    let (secret_file, tokens_file, _) = files_beside(&config.state);
    let secret = match std::fs::read_to_string(&secret_file) {
        Ok(text) => text.trim().to_owned(),
        Err(_) => crate::server::trust::random_secret(),
    };
    let tokens = TokenFile::load(tokens_file).map_err(|e| e.to_string())?;
    let db = PgStore::open(url).map_err(|e| e.to_string())?;
    db.identity(config.network, Some((key, secret)))
        .map_err(|e| e.to_string())?;
    let peers = snapshot.peers.len();
    let token_count = tokens.store.list().len();
    db.write("peers", |tx| {
        let existing: i64 = tx
            .query_one("SELECT count(*) FROM wgmesh_peers", &[])?
            .get(0);
        if existing > 0 {
            return Err(super::pool::DbError::Data(format!(
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
    .map_err(|e| e.to_string())?;
    println!(
        "imported {peers} peers (addresses kept) and {token_count} join tokens from {} into \
         PostgreSQL, with this server's key and admin secret; start replicas with --store",
        config.state.display()
    );
    Ok(())
}
