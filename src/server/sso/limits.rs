//! How long and how many logins may wait: read by the login tables and by the error that
//! tells a person their login was forgotten.

use std::time::Duration;

/// How long a login may wait for its person (device codes usually live 10-15 minutes).
pub const LOGIN_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// At most this many logins wait at once; more are refused with 503 until some finish.
pub const MAX_PENDING: usize = 1024;
