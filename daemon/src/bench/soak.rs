//! `zinferd bench soak`: a long run of mixed traffic against one `zinferd` child, reloaded every minute, that
//! reports what only time shows: memory that creeps, latency that drifts, messages that go missing.
//!
//! Every pipeline of the configuration gets traffic: text pipelines JSON requests (one in ten malformed after its id,
//! so the daemon must answer an error under the sender's id), with a burst at `--burst-multiple` × the capacity
//! measured at the start for one second in every ten; sensor pipelines JSON frames of `hop` samples from two sources
//! at the model's sample rate (one in ten with a wrong channel count). Every message carries an id, and the run
//! checks from outside that each got exactly one outcome (the promise), counting the ones refused at the door from
//! the daemon's status (not accepted, so without an outcome). It reports; it asserts nothing.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use zenoh::bytes::Encoding;
use zenoh::qos::CongestionControl;
use zinfer_proto::outcome;

use super::{Placement, spawn_daemon};
use crate::client::{Client, decode_result};

/// What to run.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    /// The configuration files (as for `run`); the child reads them again at every reload.
    pub config: Vec<PathBuf>,
    /// How long, in minutes.
    pub minutes: f64,
    /// Seconds between reloads (SIGHUP).
    pub reload_every_s: f64,
    /// Steady text requests per second, per text pipeline.
    pub rate: f64,
    /// Bursts, as a multiple of the text capacity measured at the start.
    pub burst_multiple: f64,
}

/// One minute of the run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Minute {
    /// Minutes since the start (1 = the first).
    pub minute: usize,
    /// Messages published in it.
    pub sent: usize,
    /// Outcomes received in it, by `outcome/reason`.
    pub outcomes: BTreeMap<String, usize>,
    /// Client-side p99 latency (publish → result) of its `ok` results, ms.
    pub p99_ms: f64,
    /// The daemon's RSS at its end, bytes.
    pub rss_bytes: u64,
    /// Reloads sent in it.
    pub reloads: usize,
}

/// The whole run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SoakReport {
    /// The text capacity measured at the start, `ok`/s.
    pub text_capacity_per_s: f64,
    /// Per minute.
    pub minutes: Vec<Minute>,
    /// RSS at the start (after the capacity probe) and at the end, bytes.
    pub rss_start_bytes: u64,
    /// See `rss_start_bytes`.
    pub rss_end_bytes: u64,
    /// Least-squares slope of the per-minute RSS from the second minute on, MiB per hour.
    pub rss_slope_mib_per_hour: f64,
    /// Messages published.
    pub sent: usize,
    /// Messages with exactly one outcome.
    pub answered_once: usize,
    /// Messages with more than one outcome (must be 0).
    pub duplicated: usize,
    /// Messages without an outcome after the drain wait.
    pub missing: usize,
    /// Outcomes whose id matches no published message (must be 0).
    pub unmatched: usize,
    /// Messages the daemon refused at the door, from its status (sampled before each reload and every minute).
    pub refused: u64,
    /// Reloads sent, and how many the daemon reports as failed.
    pub reloads: usize,
    /// See `reloads`.
    pub reloads_failed: u64,
}

#[derive(Default)]
struct Book {
    sent: HashMap<String, Instant>,
    outcomes: HashMap<String, usize>,
    unmatched: usize,
    minute_outcomes: BTreeMap<String, usize>,
    minute_ok_latency: Vec<Duration>,
}

/// Runs the soak.
pub async fn run(options: &SoakOptions) -> anyhow::Result<SoakReport> {
    let config = crate::config::load(&options.config)?;
    let scratch = tempfile::tempdir().context("temp dir")?;
    let daemon = spawn_daemon(scratch.path(), &config, Some(&options.config), "soak", Placement::Own).await?;
    daemon.settled_rss().await?;
    let client = Client::connect(&daemon.endpoint).await?;
    let book = Arc::new(Mutex::new(Book::default()));
    let mut subscribers = Vec::new();
    let mut prefixes: Vec<&str> = config.pipelines.iter().map(|pipeline| pipeline.output_prefix.as_str()).collect();
    prefixes.dedup();
    for prefix in prefixes {
        let sink = Arc::clone(&book);
        let subscriber = client
            .session()
            .declare_subscriber(format!("{prefix}/**"))
            .callback(move |sample| {
                let received = Instant::now();
                let Ok(result) = decode_result(&sample) else { return };
                let kind = format!("{}/{}", result.outcome, result.reason);
                let mut book = sink.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                let Some(&sent) = book.sent.get(&result.id) else {
                    book.unmatched += 1;
                    return;
                };
                if result.outcome == outcome::OK {
                    book.minute_ok_latency.push(received.saturating_duration_since(sent));
                }
                *book.outcomes.entry(result.id).or_default() += 1;
                *book.minute_outcomes.entry(kind).or_default() += 1;
            })
            .await
            .map_err(|error| anyhow::anyhow!("subscribing to results: {error}"))?;
        subscribers.push(subscriber);
    }
    let mut traffic = Traffic::new(&config);
    for key in traffic.keys() {
        client.wait_for_subscriber(&key, Duration::from_secs(10)).await?;
    }

    // Capacity of the text pipelines: `ok` results per second while 3,000/s are offered for two seconds (more than
    // it can do, yet fewer in all than max_in_flight by default, so that nothing is refused at the door).
    let probe = Duration::from_secs(2);
    let mut ticker = tokio::time::interval(Duration::from_millis(50));
    let probe_started = Instant::now();
    while probe_started.elapsed() < probe {
        ticker.tick().await;
        traffic.publish_text(&client, &book, 150).await?;
    }
    let ok_in_probe = book.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).minute_ok_latency.len();
    let capacity = ok_in_probe as f64 / probe.as_secs_f64();
    // Let the probe's backlog drain before the clock starts.
    tokio::time::sleep(Duration::from_secs(5)).await;
    reset_minute(&book);
    let mut refusals = Refusals::default();
    let rss_start = daemon.rss()?.0;

    let total = Duration::from_secs_f64(options.minutes * 60.0);
    let reload_every = Duration::from_secs_f64(options.reload_every_s.max(1.0));
    let started = Instant::now();
    let (mut minutes, mut minute_sent, mut minute_reloads, mut reloads) = (Vec::new(), 0, 0, 0);
    let mut next_reload = started + reload_every;
    // No reload in the run's last period: its models would still be loading (both generations held) when the end
    // RSS is read, and the stop would abandon it (seen: 100.5 MiB "at the end" against 79.2 in the last minute).
    let last_reload = started + total.saturating_sub(reload_every);
    let mut next_minute = started + Duration::from_secs(60);
    let tick = Duration::from_millis(50);
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while started.elapsed() < total {
        ticker.tick().await;
        let in_burst = started.elapsed().as_secs() % 10 == 5;
        let rate = if in_burst { capacity * options.burst_multiple } else { options.rate };
        minute_sent += traffic.publish_text(&client, &book, (rate * tick.as_secs_f64()).round() as usize).await?;
        minute_sent += traffic.publish_sensor(&client, &book, started.elapsed()).await?;
        if Instant::now() >= next_reload && next_reload <= last_reload {
            refusals.sample(&client, &daemon).await?;
            let _ = Command::new("kill").arg("-HUP").arg(daemon.pid().to_string()).status();
            next_reload += reload_every;
            (minute_reloads, reloads) = (minute_reloads + 1, reloads + 1);
        }
        if Instant::now() >= next_minute {
            refusals.sample(&client, &daemon).await?;
            minutes.push(close_minute(&book, minutes.len() + 1, minute_sent, minute_reloads, daemon.rss()?.0));
            next_minute += Duration::from_secs(60);
            (minute_sent, minute_reloads) = (0, 0);
        }
    }
    // Every message gets its outcome: give the daemon time to answer what it holds.
    let drain_until = Instant::now() + Duration::from_secs(30);
    let everything_answered = || {
        let book = book.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        book.outcomes.len() >= book.sent.len()
    };
    while !everything_answered() && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if minute_sent > 0 {
        minutes.push(close_minute(&book, minutes.len() + 1, minute_sent, minute_reloads, daemon.rss()?.0));
    }
    let rss_end = daemon.rss()?.0;
    let status = refusals.sample(&client, &daemon).await?;
    let refused = refusals.total();
    let reloads_failed = status.service.map_or(0, |service| service.reloads_failed);
    drop(subscribers);
    client.close().await;
    daemon.stop();

    let book = book.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let answered_once = book.outcomes.values().filter(|&&count| count == 1).count();
    let duplicated = book.outcomes.values().filter(|&&count| count > 1).count();
    Ok(SoakReport {
        text_capacity_per_s: capacity,
        rss_slope_mib_per_hour: slope(&minutes),
        minutes,
        rss_start_bytes: rss_start,
        rss_end_bytes: rss_end,
        sent: book.sent.len(),
        answered_once,
        duplicated,
        missing: book.sent.len().saturating_sub(book.outcomes.len()),
        unmatched: book.unmatched,
        refused,
        reloads,
        reloads_failed,
    })
}

/// Messages refused at the door, per pipeline and generation: telemetry shows only the current generation's
/// counters, so the soak samples them before every reload (refusals between that sample and the swap are missed).
#[derive(Default)]
struct Refusals(BTreeMap<(String, u64), u64>);

impl Refusals {
    async fn sample(
        &mut self,
        client: &Client,
        daemon: &super::ChildDaemon,
    ) -> anyhow::Result<zinfer_proto::Telemetry> {
        let status = super::status_of(client, daemon).await?;
        for pipeline in &status.pipelines {
            let seen = self.0.entry((pipeline.name.clone(), pipeline.generation)).or_default();
            *seen = (*seen).max(pipeline.refused);
        }
        Ok(status)
    }

    fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

fn reset_minute(book: &Mutex<Book>) {
    let mut book = book.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    book.minute_outcomes.clear();
    book.minute_ok_latency.clear();
}

fn close_minute(book: &Mutex<Book>, minute: usize, sent: usize, reloads: usize, rss_bytes: u64) -> Minute {
    let mut book = book.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let latency = super::Summary::of(std::mem::take(&mut book.minute_ok_latency));
    let outcomes = std::mem::take(&mut book.minute_outcomes);
    Minute { minute, sent, outcomes, p99_ms: latency.p99_us / 1000.0, rss_bytes, reloads }
}

/// Least-squares slope of RSS over minutes 2.., in MiB per hour.
fn slope(minutes: &[Minute]) -> f64 {
    let points: Vec<(f64, f64)> = minutes
        .iter()
        .skip(1)
        .map(|minute| (minute.minute as f64, minute.rss_bytes as f64 / (1024.0 * 1024.0)))
        .collect();
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (mean_x, mean_y) = (points.iter().map(|p| p.0).sum::<f64>() / n, points.iter().map(|p| p.1).sum::<f64>() / n);
    let covariance: f64 = points.iter().map(|(x, y)| (x - mean_x) * (y - mean_y)).sum();
    let variance: f64 = points.iter().map(|(x, _)| (x - mean_x).powi(2)).sum();
    if variance == 0.0 { 0.0 } else { covariance / variance * 60.0 }
}

/// The messages the soak publishes: keys, ids and payloads per pipeline.
struct Traffic {
    text_keys: Vec<String>,
    sensors: Vec<SensorStream>,
    next_id: usize,
}

struct SensorStream {
    key: String,
    channels: usize,
    hop: usize,
    rate_hz: f64,
    /// Samples sent so far, per source.
    sent_samples: [usize; 2],
}

impl Traffic {
    fn new(config: &crate::config::Config) -> Self {
        let mut text_keys = Vec::new();
        let mut sensors = Vec::new();
        for pipeline in &config.pipelines {
            let key = super::request_key(None, &pipeline.input, "soak");
            match &pipeline.manifest.sensor {
                Some(spec) => sensors.push(SensorStream {
                    key,
                    channels: spec.channels.len(),
                    hop: spec.hop.max(1),
                    rate_hz: spec.sample_rate_hz,
                    sent_samples: [0; 2],
                }),
                None => text_keys.push(key),
            }
        }
        Self { text_keys, sensors, next_id: 0 }
    }

    fn keys(&self) -> Vec<String> {
        self.text_keys.iter().chain(self.sensors.iter().map(|sensor| &sensor.key)).cloned().collect()
    }

    fn id(&mut self, book: &Mutex<Book>) -> String {
        self.next_id += 1;
        let id = format!("soak-{}", self.next_id);
        book.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).sent.insert(id.clone(), Instant::now());
        id
    }

    /// Publishes `count` requests to each text pipeline; one in ten is malformed after its id.
    async fn publish_text(&mut self, client: &Client, book: &Mutex<Book>, count: usize) -> anyhow::Result<usize> {
        let mut sent = 0;
        for key in self.text_keys.clone() {
            for _ in 0..count {
                let id = self.id(book);
                let text = TEXTS[self.next_id % TEXTS.len()];
                let body = if self.next_id.is_multiple_of(10) {
                    format!(r#"{{"id": "{id}", "text": "{text}"#)
                } else {
                    serde_json::json!({ "id": id, "text": text }).to_string()
                };
                put(client, &key, body.into_bytes()).await?;
                sent += 1;
            }
        }
        Ok(sent)
    }

    /// Publishes the frames each sensor source is due by `elapsed` (real time); one in ten has a wrong width.
    async fn publish_sensor(
        &mut self,
        client: &Client,
        book: &Mutex<Book>,
        elapsed: Duration,
    ) -> anyhow::Result<usize> {
        let mut sent = 0;
        for index in 0..self.sensors.len() {
            for source in 0..2 {
                let due = (elapsed.as_secs_f64() * self.sensors[index].rate_hz) as usize;
                while self.sensors[index].sent_samples[source] + self.sensors[index].hop <= due {
                    let id = self.id(book);
                    let stream = &mut self.sensors[index];
                    let first = stream.sent_samples[source];
                    let width = if self.next_id.is_multiple_of(10) { stream.channels + 1 } else { stream.channels };
                    let samples: Vec<_> = (first..first + stream.hop)
                        .map(|sample| {
                            let values: Vec<f32> = (0..width)
                                .map(|channel| ((channel + 1) as f64 * sample as f64 / stream.rate_hz).sin() as f32)
                                .collect();
                            serde_json::json!({
                                "t": sample as f64 / stream.rate_hz, "values": values,
                                "source": format!("soak-{source}"), "id": id,
                            })
                        })
                        .collect();
                    stream.sent_samples[source] += stream.hop;
                    let key = stream.key.clone();
                    put(client, &key, serde_json::to_vec(&samples)?).await?;
                    sent += 1;
                }
            }
        }
        Ok(sent)
    }
}

async fn put(client: &Client, key: &str, payload: Vec<u8>) -> anyhow::Result<()> {
    client
        .session()
        .put(key.to_owned(), payload)
        .encoding(Encoding::APPLICATION_JSON)
        .congestion_control(CongestionControl::Block)
        .await
        .map_err(|error| anyhow::anyhow!("publishing: {error}"))
}

const TEXTS: [&str; 4] = [
    "Brilliant!",
    "A dull, lifeless mess that wastes a talented cast.",
    "One of the best movies of the year: funny, warm and beautifully acted from start to finish.",
    "The plot is predictable and the jokes fall flat, but the score is lovely and the leads try hard.",
];

/// The report as markdown.
pub fn markdown(report: &SoakReport) -> String {
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let mut text = format!(
        "text capacity at the start: {:.0} ok/s\n\n| minute | sent | outcomes | p99 ms | RSS MiB | reloads |\n\
         |---|---|---|---|---|---|\n",
        report.text_capacity_per_s
    );
    for minute in &report.minutes {
        let outcomes: Vec<String> = minute.outcomes.iter().map(|(kind, count)| format!("{kind} {count}")).collect();
        text += &format!(
            "| {} | {} | {} | {:.1} | {:.1} | {} |\n",
            minute.minute,
            minute.sent,
            outcomes.join(", "),
            minute.p99_ms,
            mib(minute.rss_bytes),
            minute.reloads
        );
    }
    text += &format!(
        "\nRSS {:.1} MiB at the start, {:.1} MiB at the end, slope {:.2} MiB/hour (minutes 2..)\n\
         sent {}, answered exactly once {}, duplicated {}, missing {}, unmatched ids {}, refused at the door {}; \
         reloads {} ({} failed)\n",
        mib(report.rss_start_bytes),
        mib(report.rss_end_bytes),
        report.rss_slope_mib_per_hour,
        report.sent,
        report.answered_once,
        report.duplicated,
        report.missing,
        report.unmatched,
        report.refused,
        report.reloads,
        report.reloads_failed,
    );
    text
}
