//! A device's wg-quick configuration (for the official WireGuard apps, which load it from a
//! QR code) and its QR code as terminal text, SVG and PNG. Pure: text in, bytes out.
//!
//! PNG is written with the small `png` crate from the QR's modules rather than through
//! `qrcode`'s `image` feature, which would pull the whole `image` crate (decoders for a
//! dozen formats) into the build for one grayscale picture.

use crate::proto::devices::DeviceConfig;
use qrcode::{EcLevel, QrCode};
use std::fmt::Write as _;

/// What stands in for the private key when the device keeps its own (`--pubkey`): not a
/// valid key, so no app accepts the configuration until the owner pastes theirs.
pub const KEY_PLACEHOLDER: &str = "PASTE_THIS_DEVICES_OWN_PRIVATE_KEY_HERE";

/// Pixels per QR module in the PNG, and the quiet zone around it in modules (the QR
/// standard asks for 4).
const PNG_SCALE: usize = 8;
const QUIET_ZONE: usize = 4;

/// Why a QR code could not be made.
#[derive(Debug)]
pub struct QrError(pub String);

impl std::fmt::Display for QrError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot make a QR code: {}", self.0)
    }
}

impl std::error::Error for QrError {}

fn join<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The wg-quick configuration text: the private key if given, else [`KEY_PLACEHOLDER`].
pub fn render(config: &DeviceConfig, private_key: Option<&str>) -> String {
    let mut out = String::from("[Interface]\n");
    let _ = writeln!(
        out,
        "PrivateKey = {}",
        private_key.unwrap_or(KEY_PLACEHOLDER)
    );
    let _ = writeln!(out, "Address = {}", join(&config.addresses));
    if !config.dns.is_empty() {
        let _ = writeln!(out, "DNS = {}", join(&config.dns));
    }
    out.push_str("\n[Peer]\n");
    let _ = writeln!(out, "PublicKey = {}", config.gateway_public_key);
    if let Some(endpoint) = &config.endpoint {
        let _ = writeln!(out, "Endpoint = {endpoint}");
    }
    let _ = writeln!(out, "AllowedIPs = {}", join(&config.allowed_ips));
    let _ = writeln!(out, "PersistentKeepalive = {}", config.persistent_keepalive);
    out
}

fn code(text: &str) -> Result<QrCode, QrError> {
    QrCode::with_error_correction_level(text.as_bytes(), EcLevel::M)
        .map_err(|e| QrError(e.to_string()))
}

/// The QR code as half-height Unicode blocks for a terminal (light modules drawn, so it
/// scans on the usual dark terminal background).
pub fn terminal(text: &str) -> Result<String, QrError> {
    use qrcode::render::unicode::Dense1x2;
    Ok(code(text)?
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Light)
        .light_color(Dense1x2::Dark)
        .quiet_zone(true)
        .build())
}

/// The QR code as an SVG document.
pub fn svg(text: &str) -> Result<String, QrError> {
    use qrcode::render::svg;
    Ok(code(text)?
        .render::<svg::Color<'_>>()
        .min_dimensions(320, 320)
        .quiet_zone(true)
        .build())
}

/// The QR code as a grayscale PNG ([`PNG_SCALE`] pixels per module, quiet zone included).
pub fn png(text: &str) -> Result<Vec<u8>, QrError> {
    let code = code(text)?;
    let modules = code.width();
    let colors = code.to_colors();
    let side = (modules + 2 * QUIET_ZONE) * PNG_SCALE;
    let mut pixels = vec![255u8; side * side];
    for (i, color) in colors.iter().enumerate() {
        if *color != qrcode::Color::Dark {
            continue;
        }
        let (mx, my) = (i % modules + QUIET_ZONE, i / modules + QUIET_ZONE);
        for y in my * PNG_SCALE..(my + 1) * PNG_SCALE {
            pixels[y * side + mx * PNG_SCALE..y * side + (mx + 1) * PNG_SCALE].fill(0);
        }
    }
    let mut out = Vec::new();
    {
        let side = u32::try_from(side).map_err(|e| QrError(e.to_string()))?;
        let mut encoder = png::Encoder::new(&mut out, side, side);
        encoder.set_color(png::ColorType::Grayscale);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(|e| QrError(e.to_string()))?;
        writer
            .write_image_data(&pixels)
            .map_err(|e| QrError(e.to_string()))?;
        writer.finish().map_err(|e| QrError(e.to_string()))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> DeviceConfig {
        DeviceConfig {
            addresses: vec![
                "10.100.0.7/32".parse().unwrap(),
                "fd00::a64:7/128".parse().unwrap(),
            ],
            dns: vec!["10.100.0.2".parse().unwrap()],
            gateway_public_key: crate::keys::PublicKey::from_bytes([7; 32]),
            endpoint: Some("198.18.0.2:51821".into()),
            allowed_ips: vec![
                "10.100.0.0/16".parse().unwrap(),
                "fd00::/96".parse().unwrap(),
            ],
            persistent_keepalive: 25,
        }
    }

    #[test]
    fn the_config_is_wg_quick_text_with_the_key_or_a_placeholder() {
        let text = render(&config(), None);
        assert_eq!(
            text,
            format!(
                "[Interface]\nPrivateKey = {KEY_PLACEHOLDER}\nAddress = 10.100.0.7/32, fd00::a64:7/128\n\
                 DNS = 10.100.0.2\n\n[Peer]\nPublicKey = {}\nEndpoint = 198.18.0.2:51821\n\
                 AllowedIPs = 10.100.0.0/16, fd00::/96\nPersistentKeepalive = 25\n",
                crate::keys::PublicKey::from_bytes([7; 32])
            )
        );
        assert!(render(&config(), Some("KEY=")).contains("PrivateKey = KEY=\n"));
    }

    #[test]
    fn qr_codes_come_out_in_three_forms() {
        let text = render(
            &config(),
            Some(&crate::keys::PrivateKey::generate().to_base64()),
        );
        let png = png(&text).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert!(svg(&text).unwrap().contains("<svg"));
        let term = terminal(&text).unwrap();
        assert!(term.lines().count() > 20, "{term}");
    }
}
