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

/// How many times a login the server forgot (it restarted with logins in memory, or the
/// login expired) is started again by itself before giving up.
pub const MAX_NEW_LOGINS: u32 = 3;

/// How one login ended for the machine.
enum Waited {
    /// Logged in: the login id to register with.
    Done(String),
    /// The server does not know the login any more: why.
    Forgotten(String),
}

/// Runs the login for this machine (`hostname`), telling the person on `out`; the login
/// id to register with. A login the server forgot is started again, with a new URL and
/// code, up to [`MAX_NEW_LOGINS`] times.
pub fn log_in(
    client: &ApiClient,
    hostname: &str,
    out: &mut dyn Write,
) -> Result<String, AgentError> {
    let mut again = 0;
    loop {
        match one_login(client, hostname, out)? {
            Waited::Done(id) => return Ok(id),
            Waited::Forgotten(why) if again < MAX_NEW_LOGINS => {
                again += 1;
                log::info!("login poll: {why}");
                let _ = writeln!(
                    out,
                    "The server no longer knows this login (it restarted, or the login \
                     expired): starting a new one."
                );
            }
            Waited::Forgotten(why) => return Err(AgentError::Usage(why)),
        }
    }
}

fn one_login(
    client: &ApiClient,
    hostname: &str,
    out: &mut dyn Write,
) -> Result<Waited, AgentError> {
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
                return Ok(Waited::Done(started.login_id));
            }
            Ok(_) => {}
            // The server restarting or a replica failing over: keep waiting.
            Err(ClientError::Unreachable(why)) => log::warn!("login poll: {why}"),
            Err(ClientError::Refused { status, message }) if status >= 500 => {
                log::warn!("login poll: {message}")
            }
            // Forgotten (a restart of a server that keeps logins in memory): a new one.
            Err(ClientError::Refused {
                status: 404,
                message,
            }) => return Ok(Waited::Forgotten(message)),
            Err(e) => return Err(AgentError::Server(e)),
        }
        if Instant::now() >= deadline {
            return Err(AgentError::Usage(
                "nobody logged in before the login expired: run `wgmesh up --login` again".into(),
            ));
        }
    }
}
