//! Seeing a fleet of zinferd daemons from one place.
//!
//! Every zinferd answers `<prefix>/status` with a telemetry snapshot that names it (zenoh id, host name, board). A
//! fleet's daemons share a prefix, so one zenoh query with target *all* and no consolidation reaches every daemon
//! behind the router and gets one snapshot from each ([`gather`]); zenoh's default consolidation would keep one
//! reply per key, that is one daemon. From those snapshots this crate makes:
//!
//! - [`table`]: one row per daemon (rates from two gatherings a moment apart), as text or JSON;
//! - [`prometheus`]: the whole fleet in the Prometheus text format, with Prometheus's naming conventions;
//! - [`exporter`]: an HTTP endpoint that gathers at every scrape and serves that text, so that one exporter per site
//!   stands in for the boards, which open no HTTP port.
//!
//! Nothing here keeps state between gatherings: the daemons hold the counters, Prometheus the history.

pub mod exporter;
pub mod gather;
pub mod prometheus;
pub mod table;

pub use gather::{FleetError, gather};
