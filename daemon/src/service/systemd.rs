//! The service manager's notification socket (`sd_notify`): readiness, reload and stop notices, watchdog pings
//! and one-line status for `systemctl status`.
//!
//! Under systemd with `Type=notify` the socket is `NOTIFY_SOCKET` and the watchdog period `WATCHDOG_USEC`; outside
//! systemd neither is set and every call here does nothing, so the daemon runs the same way from a shell. The
//! protocol itself comes from the `sd-notify` crate.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sd_notify::NotifyState;

/// Sends notices to the service manager, if there is one.
#[derive(Debug)]
pub struct Notifier {
    watchdog: Option<Duration>,
    warned: AtomicBool,
}

impl Notifier {
    /// The notifier the environment describes (`NOTIFY_SOCKET`, `WATCHDOG_USEC`, `WATCHDOG_PID`).
    pub fn from_env() -> Self {
        Self { watchdog: sd_notify::watchdog_enabled(), warned: AtomicBool::new(false) }
    }

    /// The period within which the service manager expects a ping, when it asked for them.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Start-up (or a reload) is complete: sockets open, models warmed up, subscribers declared.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// A reload began; [`Notifier::ready`] ends it.
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now, NotifyState::Status("reloading the configuration")]),
            Err(_) => self.send(&[NotifyState::Reloading, NotifyState::Status("reloading the configuration")]),
        }
    }

    /// Shutdown began: draining.
    pub fn stopping(&self, status: &str) {
        self.send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }

    /// A new status line.
    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// Tells the watchdog the daemon is making progress.
    pub fn ping(&self, status: &str) {
        self.send(&[NotifyState::Watchdog, NotifyState::Status(status)]);
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if let Err(error) = sd_notify::notify(states) {
            // A missing or full socket must not stop the daemon; say so once, not at every ping.
            if !self.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(%error, "cannot notify the service manager (NOTIFY_SOCKET)");
            }
        }
    }
}
