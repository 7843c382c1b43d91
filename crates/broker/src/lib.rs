//! The agent-side credential broker: an encrypted vault of upstream credentials and a forward
//! proxy that swaps the agent's placeholders for the real credentials per host/path rule, so the
//! agent's process never holds a real secret.

pub mod credentials;
pub mod lifecycle;
pub mod proxy;
pub mod vault;
