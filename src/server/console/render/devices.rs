//! The devices page: phones and other devices without the agent, behind their gateways; a
//! form to add one (its configuration and QR code shown once, with the private key when the
//! server generated it), and removal.

use super::layout::{csrf_field, message, page, Tab, Viewer};
use crate::proto::devices::DeviceView;
use maud::{html, Markup, PreEscaped};

/// A device just added: its configuration and QR code, shown on this one answer.
pub struct Added<'a> {
    /// The device's name.
    pub name: &'a str,
    /// The wg-quick text.
    pub config: &'a str,
    /// The QR code as an SVG document made by [`crate::devconf::svg`] (our own markup, no
    /// input of anyone's but the configuration's base64 and addresses, which it encodes as
    /// modules, never as text).
    pub qr_svg: &'a str,
    /// Whether the server generated the key (it is in the text, and never shown again).
    pub generated: bool,
}

/// The devices page. `gateways` are the `.mesh` names of the nodes running `up --gateway`.
pub fn devices(
    viewer: Viewer<'_>,
    list: &[DeviceView],
    gateways: &[String],
    added: Option<Added<'_>>,
    error: Option<&str>,
) -> Markup {
    page(
        Tab::Devices,
        "Devices",
        viewer,
        html! {
            @if let Some(e) = error { (message("error", e)) }
            @if let Some(a) = added {
                section.created {
                    h2 { "Device " (a.name) " added" }
                    @if a.generated {
                        p { "Its private key is in this configuration and was not stored: scan or copy it now, it is shown this once." }
                    } @else {
                        p { "Put the device's own private key in place of the placeholder." }
                    }
                    div.qr { (PreEscaped(svg_body(a.qr_svg))) }
                    pre #device-config { (a.config) }
                    button type="button" data-copy="device-config" { "Copy" }
                }
            }
            table.devices {
                thead { tr {
                    th { "Name" } th { "Addresses" } th { "Via" } th { "Tags" } th { "Added" } th {}
                } }
                tbody {
                    @for d in list {
                        tr data-device=(d.name) {
                            td { (d.name) ".mesh" }
                            td { @for a in &d.addresses { code { (a.addr()) } " " } }
                            td { (d.via_name) }
                            td { @for tag in &d.tags { span.tag { (tag) } " " } }
                            td { (d.created_at) }
                            td {
                                @if viewer.role.may_change() {
                                    form method="post" action=(format!("/console/devices/{}/remove", d.name)) data-confirm=(format!("Remove {}? It loses its access at once.", d.name)) {
                                        (csrf_field(viewer.csrf))
                                        button.danger type="submit" { "Remove" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if list.is_empty() { p { "No devices yet." } }
            @if viewer.role.may_change() {
                h2 { "Add a device" }
                @if gateways.is_empty() {
                    p { "No gateway yet: run " code { "wgmesh up --gateway" } " on a Linux node first." }
                } @else {
                    form.create method="post" action="/console/devices" {
                        (csrf_field(viewer.csrf))
                        label { "Name " input type="text" name="name" placeholder="phone" required; }
                        label { "Via " select name="via" { @for g in gateways { option value=(g) { (g) } } } }
                        label { "Tags " input type="text" name="tags" placeholder="tag:phone"; }
                        label { "Its own public key " input type="text" name="public_key" placeholder="empty: the server makes a key pair"; }
                        label { input type="checkbox" name="exit" value="true"; " all internet traffic through the gateway" }
                        button type="submit" { "Add device" }
                    }
                }
            }
        },
    )
}

/// The `<svg>` element of an SVG document (without the XML prologue, which is not HTML).
fn svg_body(document: &str) -> &str {
    document.find("<svg").map_or("", |start| &document[start..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::console::session::Role;

    #[test]
    fn the_page_escapes_names_and_shows_the_config_once() {
        let viewer = Viewer {
            role: Role::Admin,
            csrf: "tok",
        };
        let qr = crate::devconf::svg("[Interface]").unwrap();
        let page = devices(
            viewer,
            &[],
            &["gw".into()],
            Some(Added {
                name: "<phone>",
                config: "[Interface]\nPrivateKey = K<\n",
                qr_svg: &qr,
                generated: true,
            }),
            None,
        )
        .into_string();
        assert!(page.contains("Device &lt;phone&gt; added"), "{page}");
        assert!(page.contains("PrivateKey = K&lt;"), "{page}");
        assert!(page.contains("<svg") && !page.contains("<?xml"), "{page}");
        assert!(page.contains("shown this once"));
        let auditor = Viewer {
            role: Role::Auditor,
            csrf: "tok",
        };
        let read_only = devices(auditor, &[], &["gw".into()], None, None).into_string();
        assert!(!read_only.contains("Add device"));
    }
}
