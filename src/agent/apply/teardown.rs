//! Taking the agent down: telling the server this node goes offline (bounded, best effort)
//! and removing what the config records as applied, as the recorded OS does it. Used by
//! `down` from the config alone and by a stopping `up` through its engine.

use crate::agent::apply::sink::{apply_steps, Sink};
use crate::agent::client::ApiClient;
use crate::agent::error::AgentError;
use crate::agent::plan;
use crate::agent::state::config::{Applied, ClientConfig};
use crate::os::TargetOs;
use std::path::Path;

/// How long `down` or a stopping `up` waits to tell the server it goes offline: short,
/// since stopping must not hang on an unreachable server.
const OFFLINE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Removes what `config` records as applied, as the recorded OS does it; returns that OS,
/// or `None` when nothing is recorded.
pub(in crate::agent) fn undo_recorded(
    config: &mut ClientConfig,
    path: &Path,
    persist: bool,
    sink: &mut Sink<'_>,
) -> Result<Option<TargetOs>, AgentError> {
    let Some(applied) = config.applied.clone() else {
        return Ok(None);
    };
    let os: TargetOs = applied
        .os
        .parse()
        .map_err(|e| AgentError::Usage(format!("recorded OS: {e}")))?;
    let owned = match sink {
        Sink::Run(runner) => {
            crate::agent::observe::host::utun_ours(&mut Some(&mut **runner), os, config)
                .unwrap_or(true)
        }
        Sink::Print(_) => true,
    };
    let steps = plan::undo(os, config, owned)?;
    apply_steps(config, path, persist, &steps, sink)?;
    log::info!("removed interface {}", applied.interface);
    Ok(Some(os))
}

/// Tells the server this node stops on purpose, from its config alone (`down`), checking
/// the answer against the pinned server key.
fn tell_offline(config: &ClientConfig) {
    let (Some(server), Some(assignment)) = (&config.server, &config.assignment) else {
        return;
    };
    let client = ApiClient::new(server.clone(), OFFLINE_TIMEOUT).with_identity(
        config.private_key.clone(),
        Some(assignment.server_public_key),
    );
    offline_with(&client, &assignment.peer_id);
}

pub(in crate::agent) fn offline_with(client: &ApiClient, peer_id: &crate::types::PeerId) {
    match client.with_timeout(OFFLINE_TIMEOUT).offline(peer_id) {
        Ok(()) => log::info!("told the server {peer_id} is going offline"),
        Err(e) => log::warn!(
            "could not tell the server we are going offline ({e}); the others drop this node at the heartbeat timeout"
        ),
    }
}

/// `down`: tells the server this node goes offline (best effort; not in a dry run), then
/// removes what the config at `path` records as applied, optionally as `os` would (to show
/// another OS's teardown of this configuration's interface). Returns whether there was
/// anything to remove.
pub fn down(path: &Path, os: Option<TargetOs>, sink: &mut Sink<'_>) -> Result<bool, AgentError> {
    let Some(mut config) = ClientConfig::load(path)? else {
        log::info!("nothing to take down: no config at {}", path.display());
        return Ok(false);
    };
    if !sink.is_dry_run() {
        // Others drop us now rather than at the heartbeat timeout.
        tell_offline(&config);
    }
    if let Some(os) = os {
        let interface = config.interface.to_string();
        let applied = config.applied.get_or_insert_with(|| Applied {
            interface,
            ..Applied::default()
        });
        applied.os = os.as_str().to_owned();
    }
    let removed = undo_recorded(&mut config, path, true, sink)?.is_some();
    if !removed {
        log::info!("nothing to take down: this agent has nothing set up");
    }
    Ok(removed)
}
