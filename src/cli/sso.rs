//! The server's single sign-on flags (`--oidc-*`, `--login-expiry`) turned into an
//! [`SsoConfig`], with a clear error for each way they can be wrong.

use super::exit::{CliError, EXIT_USAGE};
use crate::server::sso::flows::SsoConfig;
use crate::server::sso::provider::ProviderConfig;
use openidconnect::{ClientId, ClientSecret, IssuerUrl};
use std::path::PathBuf;
use std::time::Duration;

/// The flags as given.
pub struct SsoFlags {
    /// `--oidc-issuer`.
    pub issuer: Option<String>,
    /// `--oidc-client-id`.
    pub client_id: Option<String>,
    /// `--oidc-client-secret-file`.
    pub client_secret_file: Option<PathBuf>,
    /// `--oidc-scopes`.
    pub scopes: String,
    /// `--oidc-redirect-url`.
    pub redirect_url: Option<String>,
    /// `--login-expiry`.
    pub login_expiry: String,
    /// `--oidc-no-device-flow`.
    pub no_device_flow: bool,
}

fn usage(message: String) -> CliError {
    CliError::new(EXIT_USAGE, message)
}

/// Parses `--login-expiry` (e.g. `180d`, `12h`); at least one minute.
pub fn login_expiry(text: &str) -> Result<Duration, CliError> {
    let expiry = humantime::parse_duration(text).map_err(|e| {
        usage(format!(
            "--login-expiry {text:?} is not a duration ({e}): write e.g. 180d, 30d or 12h"
        ))
    })?;
    if expiry < Duration::from_secs(60) {
        return Err(usage(format!(
            "--login-expiry {text:?} is shorter than a minute: machines could never stay in"
        )));
    }
    Ok(expiry)
}

/// The single sign-on configuration, or None without `--oidc-issuer`.
pub fn sso_config(flags: SsoFlags, https: bool) -> Result<Option<SsoConfig>, CliError> {
    let login_expiry = login_expiry(&flags.login_expiry)?;
    let Some(issuer) = flags.issuer else {
        if flags.client_id.is_some() || flags.client_secret_file.is_some() {
            return Err(usage(
                "--oidc-client-id and --oidc-client-secret-file need --oidc-issuer".into(),
            ));
        }
        return Ok(None);
    };
    // Exactly as given: the provider's `iss` must match it character for character
    // (Authentik's ends with a slash, Keycloak's does not).
    let issuer_url = IssuerUrl::new(issuer.clone()).map_err(|e| {
        usage(format!(
            "--oidc-issuer {issuer:?} is not a URL ({e}): give the issuer as the provider \
             documents it, e.g. https://accounts.google.com"
        ))
    })?;
    let client_id = flags.client_id.ok_or_else(|| {
        usage("--oidc-issuer needs --oidc-client-id (the client registered for wgmesh)".into())
    })?;
    let path = flags.client_secret_file.ok_or_else(|| {
        usage(
            "--oidc-issuer needs --oidc-client-secret-file (a file holding the client \
             secret, mode 0600)"
                .into(),
        )
    })?;
    let secret = std::fs::read_to_string(&path)
        .map_err(|e| {
            usage(format!(
                "cannot read --oidc-client-secret-file {}: {e}",
                path.display()
            ))
        })?
        .trim()
        .to_owned();
    if secret.is_empty() {
        return Err(usage(format!(
            "--oidc-client-secret-file {} is empty",
            path.display()
        )));
    }
    let mut scopes: Vec<String> = flags
        .scopes
        .split([' ', ','])
        .filter(|s| !s.is_empty() && *s != "openid")
        .map(str::to_owned)
        .collect();
    scopes.dedup();
    Ok(Some(SsoConfig {
        provider: ProviderConfig {
            issuer: issuer_url,
            client_id: ClientId::new(client_id),
            client_secret: ClientSecret::new(secret),
            scopes,
        },
        redirect_url: flags.redirect_url,
        login_expiry,
        https,
        device_flow: !flags.no_device_flow,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> SsoFlags {
        SsoFlags {
            issuer: None,
            client_id: None,
            client_secret_file: None,
            scopes: "openid email profile".into(),
            redirect_url: None,
            login_expiry: "180d".into(),
            no_device_flow: false,
        }
    }

    #[test]
    fn no_issuer_means_no_sso_and_a_lone_client_id_is_refused() {
        assert!(sso_config(flags(), false).unwrap().is_none());
        let lone = SsoFlags {
            client_id: Some("x".into()),
            ..flags()
        };
        let e = sso_config(lone, false).unwrap_err();
        assert!(e.message.contains("need --oidc-issuer"), "{}", e.message);
    }

    #[test]
    fn an_issuer_needs_a_client_id_and_a_readable_secret() {
        let only_issuer = SsoFlags {
            issuer: Some("https://id.example.com".into()),
            ..flags()
        };
        let e = sso_config(only_issuer, false).unwrap_err();
        assert!(e.message.contains("--oidc-client-id"), "{}", e.message);
        let missing = SsoFlags {
            issuer: Some("https://id.example.com".into()),
            client_id: Some("wgmesh".into()),
            client_secret_file: Some("/nonexistent/secret".into()),
            ..flags()
        };
        let e = sso_config(missing, false).unwrap_err();
        assert!(
            e.message.contains("cannot read --oidc-client-secret-file"),
            "{}",
            e.message
        );
    }

    #[test]
    fn login_expiry_reads_humane_durations_and_refuses_nonsense() {
        assert_eq!(
            login_expiry("180d").unwrap(),
            Duration::from_secs(180 * 86_400)
        );
        assert!(login_expiry("soon")
            .unwrap_err()
            .message
            .contains("not a duration"));
        assert!(login_expiry("5s")
            .unwrap_err()
            .message
            .contains("shorter than a minute"));
    }
}
