//! The shutdown signal: SIGINT or SIGTERM.

use tokio::signal::unix::{Signal, SignalKind, signal};

/// Resolves on the first SIGINT or SIGTERM. If a handler cannot be installed, resolves only on the other one.
pub async fn signal_received() {
    let mut terminate = signal(SignalKind::terminate()).ok();
    let mut interrupt = signal(SignalKind::interrupt()).ok();
    tokio::select! {
        _ = recv(terminate.as_mut()) => tracing::info!("SIGTERM received"),
        _ = recv(interrupt.as_mut()) => tracing::info!("SIGINT received"),
    }
}

async fn recv(stream: Option<&mut Signal>) {
    match stream {
        Some(stream) => {
            stream.recv().await;
        }
        None => std::future::pending().await,
    }
}
