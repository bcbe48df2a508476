//! Messages, framing, peer checks and role table shared by seam's five daemons.

mod attr_wire;
pub mod codec;
pub mod fds;
pub mod frame;
pub mod heap;
pub mod ipc;
pub mod lifecycle;
pub mod msg;
pub mod privilege;
pub mod role;
pub mod sampling;
pub mod selfstats;
pub mod telemetry;

pub use role::Role;

/// Bumped whenever a message layout changes; peers with another version are refused.
pub const PROTOCOL_VERSION: u32 = 7;
