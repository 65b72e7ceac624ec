//! The console's devices page and its two actions (add, remove), through the same `Api`
//! methods as `/admin/devices`, audited with the session's actor.

use super::respond::{html, see_other};
use super::Visit;
use crate::proto::devices::DeviceAddRequest;
use crate::server::api::error::Refusal;
use crate::server::console::render::devices::{self, Added};
use crate::server::http::Response;
use crate::types::Tag;

impl Visit<'_> {
    /// The devices page, with a device just added (its answer) or an error to show.
    pub(super) fn devices(
        &self,
        added: Option<&crate::proto::devices::DeviceAnswer>,
        error: Option<&str>,
    ) -> Response {
        let (list, gateways) = self.api.device_views();
        let text = added.map(|a| crate::devconf::render(&a.config, a.private_key.as_deref()));
        let qr = text.as_deref().and_then(|t| crate::devconf::svg(t).ok());
        let shown = match (added, &text, &qr) {
            (Some(a), Some(text), Some(qr)) => Some(Added {
                name: &a.device.name,
                config: text,
                qr_svg: qr,
                generated: a.private_key.is_some(),
            }),
            _ => None,
        };
        html(
            200,
            devices::devices(self.viewer(), &list, &gateways, shown, error),
        )
    }

    /// `POST /console/devices`: the form's device, or the page again with what was wrong.
    pub(super) fn add_device(&self) -> Result<Response, Refusal> {
        self.require_admin()?;
        let form = self.form();
        let field = |k: &str| form.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
        let tags: Result<Vec<Tag>, _> = field("tags")
            .unwrap_or_default()
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|t| !t.is_empty())
            .map(str::parse::<Tag>)
            .collect();
        let tags = match tags {
            Ok(tags) => tags,
            Err(e) => return Ok(self.devices(None, Some(&format!("tags: {e}")))),
        };
        let public_key = match field("public_key").map(str::parse) {
            None => None,
            Some(Ok(key)) => Some(key),
            Some(Err(e)) => return Ok(self.devices(None, Some(&format!("public key: {e}")))),
        };
        let body = DeviceAddRequest {
            name: field("name").unwrap_or_default().to_owned(),
            via: field("via").unwrap_or_default().to_owned(),
            tags,
            public_key,
            exit: field("exit") == Some("true"),
        };
        match self
            .api
            .create_device(self.req.remote, self.session.role.actor(), body)
        {
            Ok(answer) => Ok(self.devices(Some(&answer), None)),
            Err(refusal) if refusal.status < 500 => Ok(self.devices(None, Some(&refusal.message))),
            Err(refusal) => Err(refusal),
        }
    }

    /// `POST /console/devices/NAME/remove`.
    pub(super) fn remove_device(&self, name: &str) -> Result<Response, Refusal> {
        self.require_admin()?;
        self.api
            .delete_device(self.req.remote, self.session.role.actor(), name)?;
        Ok(see_other("/console/devices"))
    }
}
