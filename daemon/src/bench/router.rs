//! `zinferd bench router`: how many messages one zenoh router forwards on this machine, from many sessions to one
//! subscriber; the measurement behind the bandwidth figures of `docs/fleet.md`.
//!
//! A router (in this process, loopback only), `sessions` client sessions behind it that publish messages of
//! `payload` bytes at a steady pace (congestion control `block`, as zinferd's results), and one client session
//! subscribed to all of them; the offered rate doubles until the router falls behind. Flooding instead (every
//! session publishing as fast as it can) measures nothing useful: with 20 sessions, zenoh closed the subscriber's
//! transport ("Unable to push non droppable network message") within seconds. Everything shares this machine's
//! cores, so it is a lower bound on what a router alone on a machine like this forwards.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use zenoh::qos::CongestionControl;

/// What to run.
#[derive(Debug, Clone)]
pub struct RouterOptions {
    /// Publishing sessions.
    pub sessions: usize,
    /// Bytes per message.
    pub payload: usize,
    /// Seconds per level.
    pub seconds: f64,
}

/// One offered rate.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RouterLevel {
    /// Messages per second offered, all sessions together (each publishes its share at a steady pace).
    pub offered_per_s: f64,
    /// Messages per second the subscriber received.
    pub delivered_per_s: f64,
    /// Payload megabytes (10^6) per second received.
    pub megabytes_per_s: f64,
    /// Messages published but not received a second after publishing stopped.
    pub behind: u64,
    /// Publications that zenoh refused (it closes a transport that stays blocked).
    pub failed: u64,
}

/// The run's figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RouterReport {
    /// Publishing sessions.
    pub sessions: usize,
    /// Bytes per message.
    pub payload: usize,
    /// The offered rates, doubling until the router falls behind.
    pub levels: Vec<RouterLevel>,
}

/// Runs the router benchmark: the offered rate doubles from 10,000 messages/s (1,000 boards at 10 messages/s)
/// until less than 95% of it is delivered, or zenoh refuses publications.
pub async fn run(options: &RouterOptions) -> anyhow::Result<RouterReport> {
    let mut levels = Vec::new();
    let mut offered = 10_000.0;
    for _ in 0..6 {
        let level = level(options, offered).await?;
        let keeping_up = level.delivered_per_s >= 0.95 * offered && level.failed == 0;
        levels.push(level);
        if !keeping_up {
            break;
        }
        offered *= 2.0;
    }
    Ok(RouterReport { sessions: options.sessions.max(1), payload: options.payload, levels })
}

/// One level, with a router and sessions of its own (a transport closed by the previous level does not carry over).
async fn level(options: &RouterOptions, offered: f64) -> anyhow::Result<RouterLevel> {
    let (router, endpoint) = super::open_listening("router").await?;
    let open = |mode: &'static str| {
        let endpoint = endpoint.clone();
        async move { super::open_session(mode, "connect", &endpoint).await }
    };
    let received = Arc::new(AtomicU64::new(0));
    let subscriber_session = open("client").await?;
    let counter = Arc::clone(&received);
    let subscriber = subscriber_session
        .declare_subscriber("bench/router/**")
        .callback(move |_| {
            counter.fetch_add(1, Ordering::Relaxed);
        })
        .await
        .map_err(|error| anyhow::anyhow!("subscribing: {error}"))?;
    let sessions = options.sessions.max(1);
    let mut publishers = Vec::new();
    for index in 0..sessions {
        let session = open("client").await?;
        let publisher = session
            .declare_publisher(format!("bench/router/{index}"))
            .congestion_control(CongestionControl::Block)
            .await
            .map_err(|error| anyhow::anyhow!("declaring a publisher: {error}"))?;
        publishers.push((session, publisher));
    }
    // Until the subscriber is routed to every publisher.
    let deadline = Instant::now() + Duration::from_secs(10);
    for (_, publisher) in &publishers {
        while !publisher.matching_status().await.is_ok_and(|status| status.matching()) {
            anyhow::ensure!(Instant::now() < deadline, "the subscriber was not routed to every publisher in 10 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    let duration = Duration::from_secs_f64(options.seconds.max(0.5));
    let per_session = offered / sessions as f64;
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let payload = vec![b'x'; options.payload];
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (session, publisher) in publishers {
        let (sent, failed, payload) = (Arc::clone(&sent), Arc::clone(&failed), payload.clone());
        tasks.push(tokio::spawn(async move {
            let mut count = 0usize;
            while started.elapsed() < duration {
                let due = (started.elapsed().as_secs_f64() * per_session) as usize;
                while count < due {
                    if publisher.put(payload.clone()).await.is_err() {
                        failed.fetch_add(1, Ordering::Relaxed);
                    } else {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    count += 1;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            drop(publisher);
            session
        }));
    }
    let mut sessions_done = Vec::new();
    for task in tasks {
        sessions_done.push(task.await.context("a publishing task")?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let delivered = received.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let behind = sent.load(Ordering::Relaxed).saturating_sub(received.load(Ordering::Relaxed));
    drop(subscriber);
    for session in sessions_done {
        let _ = session.close().await;
    }
    let _ = subscriber_session.close().await;
    drop(router);
    let delivered_per_s = delivered as f64 / elapsed;
    Ok(RouterLevel {
        offered_per_s: offered,
        delivered_per_s,
        megabytes_per_s: delivered_per_s * options.payload as f64 / 1e6,
        behind,
        failed: failed.load(Ordering::Relaxed),
    })
}

/// The report as markdown.
pub fn markdown(report: &RouterReport) -> String {
    let mut text = format!(
        "one zenoh router on loopback, {} publishing client sessions (steady pace, congestion control block), one \
         subscriber, {}-byte messages\n\n| offered msg/s | delivered msg/s | payload MB/s | behind after 1 s | refused |\n\
         |---|---|---|---|---|\n",
        report.sessions, report.payload
    );
    for level in &report.levels {
        text += &format!(
            "| {:.0} | {:.0} | {:.1} | {} | {} |\n",
            level.offered_per_s, level.delivered_per_s, level.megabytes_per_s, level.behind, level.failed
        );
    }
    text
}
