//! zenoh at the edges of the daemon: the session, messages in (ingress), outcomes out (egress).
//!
//! Everything here runs on tokio or inside zenoh's callbacks and only moves bytes; decoding and inference happen on
//! the pipeline workers' own threads.

pub mod egress;
pub mod ingress;
pub mod session;
pub mod share;
