//! `wgmesh up --login`: the machine asks the server for a single sign-on login, shows its
//! person where to log in (and the code), and waits until the server says the login is
//! done; the registration that follows presents it. Nothing here needs a browser on this
//! machine: the person logs in on any device.

use crate::agent::client::{ApiClient, ClientError};
use crate::agent::error::AgentError;
use std::io::Write;
use std::time::{Duration, Instant};

/// How often the server is asked whether the person has logged in.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Runs the login for this machine (`hostname`), telling the person on `out`; the login
/// id to register with.
pub fn log_in(
    client: &ApiClient,
    hostname: &str,
    out: &mut dyn Write,
) -> Result<String, AgentError> {
    let started = client.sso_start(hostname).map_err(|e| match e {
        ClientError::Refused {
            status: 404,
            message,
        } => AgentError::Usage(message),
        other => AgentError::Server(other),
    })?;
    let what = match started.flow.as_str() {
        "device" => "enter",
        _ => "check that the page shows",
    };
    let _ = writeln!(
        out,
        "To join the mesh, log in on any device at:\n\n    {}\n\nand {what} the code {}\n\
         Waiting for the login (up to {} minutes)...",
        started.url,
        started.user_code,
        started.expires_in.div_ceil(60)
    );
    let _ = out.flush();
    let deadline = Instant::now() + Duration::from_secs(started.expires_in);
    loop {
        std::thread::sleep(POLL_INTERVAL);
        match client.sso_poll(&started.login_id) {
            Ok(poll) if poll.status == "done" => {
                let who = poll.owner.unwrap_or_default();
                let _ = writeln!(out, "Logged in as {who}; joining the mesh.");
                return Ok(started.login_id);
            }
            Ok(_) => {}
            // The server restarting or a replica failing over: keep waiting.
            Err(ClientError::Unreachable(why)) => log::warn!("login poll: {why}"),
            Err(ClientError::Refused { status, message }) if status >= 500 => {
                log::warn!("login poll: {message}")
            }
            Err(e) => return Err(AgentError::Server(e)),
        }
        if Instant::now() >= deadline {
            return Err(AgentError::Usage(
                "nobody logged in before the login expired: run `wgmesh up --login` again".into(),
            ));
        }
    }
}
