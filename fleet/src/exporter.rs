//! `zinferd fleet --prometheus ADDR`: an HTTP endpoint that serves the fleet's metrics, gathered at each scrape.
//!
//! One exporter per site: it joins the site's zenoh fabric like any client, and the boards open no HTTP port. A
//! scrape gathers every daemon's status once ([`crate::gather`]) and renders it ([`crate::prometheus`]); nothing is
//! cached, so what Prometheus stores is what the daemons said at that scrape. Requests are served one at a time,
//! which is all a Prometheus server needs (it scrapes a target sequentially).

use std::time::Duration;

use tiny_http::{Header, Method, Response, Server};

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Why the exporter stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExporterError {
    /// The address could not be bound.
    #[error("cannot listen on {address}: {reason} (is the address free, and is it host:port?)")]
    Bind {
        /// The address asked for.
        address: String,
        /// What the system said.
        reason: String,
    },
}

/// Serves `GET /metrics` on `address` until the process ends, gathering from the daemons under `prefix` through
/// `session` with `timeout` per scrape. Blocks the calling thread; `runtime` runs the zenoh queries.
pub fn serve(
    address: &str,
    runtime: &tokio::runtime::Handle,
    session: &zenoh::Session,
    prefix: &str,
    timeout: Duration,
) -> Result<(), ExporterError> {
    let server = Server::http(address)
        .map_err(|error| ExporterError::Bind { address: address.to_owned(), reason: error.to_string() })?;
    tracing::info!(address, prefix, "serving the fleet's metrics at /metrics");
    for request in server.incoming_requests() {
        let path = request.url().split('?').next().unwrap_or_default().to_owned();
        let response = if *request.method() != Method::Get {
            Response::from_string("only GET\n").with_status_code(405)
        } else if path != "/metrics" {
            Response::from_string("zinfer fleet exporter: the metrics are at /metrics\n").with_status_code(404)
        } else {
            match runtime.block_on(crate::gather(session, prefix, timeout)) {
                Ok(snapshots) => {
                    let header = Header::from_bytes("Content-Type", CONTENT_TYPE).ok();
                    let response = Response::from_string(crate::prometheus::render(&snapshots));
                    match header {
                        Some(header) => response.with_header(header),
                        None => response,
                    }
                }
                Err(error) => Response::from_string(format!("{error}\n")).with_status_code(503),
            }
        };
        if let Err(error) = request.respond(response) {
            tracing::warn!(%error, "answering a scrape failed");
        }
    }
    Ok(())
}
