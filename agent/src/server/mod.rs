//! The daemon's outside: the control [`socket`] and its event loop, the line [`protocol`]
//! spoken on it, its per-connection limits ([`conn`]) and peer checks ([`access`]), and the
//! [`client`] the `tek` commands use to talk to it.

pub mod access;
pub mod client;
pub mod conn;
pub mod protocol;
pub mod socket;

pub use conn::Limits;
pub use socket::{DeviceEvent, bind_socket, hotplug_events, run, run_with};
