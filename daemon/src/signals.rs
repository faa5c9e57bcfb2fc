//! Unix signals as [`Control`] commands: SIGHUP reloads, SIGTERM and SIGINT shut down (drain).

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;

use crate::service::Control;

/// Forwards signals to the returned receiver until it is dropped. A signal whose handler cannot be installed is
/// logged and ignored; the others still work.
pub fn controls() -> mpsc::Receiver<Control> {
    let (sender, receiver) = mpsc::channel(4);
    let install = |kind: SignalKind, name: &str| {
        signal(kind).map_err(|error| tracing::warn!(%error, signal = name, "cannot handle this signal")).ok()
    };
    let mut hangup = install(SignalKind::hangup(), "SIGHUP");
    let mut terminate = install(SignalKind::terminate(), "SIGTERM");
    let mut interrupt = install(SignalKind::interrupt(), "SIGINT");
    tokio::spawn(async move {
        loop {
            let command = tokio::select! {
                _ = recv(hangup.as_mut()) => {
                    tracing::info!("SIGHUP received");
                    Control::Reload
                }
                _ = recv(terminate.as_mut()) => {
                    tracing::info!("SIGTERM received");
                    Control::Shutdown
                }
                _ = recv(interrupt.as_mut()) => {
                    tracing::info!("SIGINT received");
                    Control::Shutdown
                }
            };
            if sender.send(command).await.is_err() {
                return;
            }
        }
    });
    receiver
}

async fn recv(stream: Option<&mut Signal>) {
    match stream {
        Some(stream) => {
            stream.recv().await;
        }
        None => std::future::pending().await,
    }
}
