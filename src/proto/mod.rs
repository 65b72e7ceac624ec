//! Wire formats spoken on the network that are not the coordination API's JSON.

pub mod wg_wire;
