//! The wire types of a machine's single sign-on login (`wgmesh up --login`): start it,
//! poll it, then register with its id (`RegisterRequest::login`). Every request is signed
//! by the machine's key, so a login can only be used by the machine that started it.

use serde::{Deserialize, Serialize};

/// `POST /sso/login`: start a login for the signing key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginStartRequest {
    /// The machine's hostname, shown on the approval page.
    pub hostname: String,
}

/// The answer: what to show the person at the machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginStartResponse {
    /// Always true (failures are error bodies).
    pub success: bool,
    /// The id to poll and register with.
    pub login_id: String,
    /// Where to log in, on any device.
    pub url: String,
    /// The code to compare (browser flow) or enter (device flow).
    pub user_code: String,
    /// Seconds the login waits for the person.
    pub expires_in: u64,
    /// `device` (the provider's device grant) or `browser` (our page, code + PKCE).
    pub flow: String,
}

/// `POST /sso/poll`: where does login `login_id` stand?
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginPollRequest {
    /// The id `POST /sso/login` gave.
    pub login_id: String,
}

/// The answer while waiting or once done (a refused login is an error body: 401/403).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginPollResponse {
    /// Always true.
    pub success: bool,
    /// `waiting` or `done`.
    pub status: String,
    /// Who logged in, once done (email, else subject).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}
