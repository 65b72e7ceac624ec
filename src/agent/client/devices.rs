//! The gateway's signed `GET /devices`: the devices behind this node and what each may reach.

use super::{ApiClient, ClientError};
use crate::proto::devices::{GatewayDevice, GatewayDevicesResponse};
use crate::types::PeerId;

/// Largest answer accepted: about 10,000 devices' entries with their reach lists.
const MAX_DEVICES_BYTES: u64 = 32 * 1024 * 1024;

impl ApiClient {
    /// `GET /devices?peer_id=ID`: the devices this gateway carries.
    pub fn gateway_devices(&self, peer_id: &PeerId) -> Result<Vec<GatewayDevice>, ClientError> {
        let path = format!("/devices?peer_id={peer_id}");
        let answer = self.exchange("GET", &path, None, &[], MAX_DEVICES_BYTES)?;
        match answer.status {
            200 => serde_json::from_slice::<GatewayDevicesResponse>(&answer.body)
                .map(|r| r.devices)
                .map_err(|e| ClientError::Protocol(format!("device list: {e}"))),
            _ => Err(Self::refused(&answer)),
        }
    }
}
