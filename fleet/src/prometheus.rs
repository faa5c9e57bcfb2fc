//! A fleet's snapshots in the Prometheus text exposition format (version 0.0.4).
//!
//! Names follow Prometheus's conventions: a `zinfer_` namespace, base units in the name (`_bytes`, `_seconds`,
//! `_celsius`, `_ratio`), `_total` on counters, and what varies in labels: `daemon` (zenoh id) on every series,
//! `pipeline` and `generation` on a pipeline's (its counters restart with a reload's generation, so each generation
//! is its own series), `reason` and `stage` where the snapshot breaks a count down. Host and board are labels of
//! `zinfer_daemon_info` only, to be joined on `daemon`, as Prometheus advises for such metadata.
//!
//! Latency percentiles are gauges with a `quantile` label: the daemons compute them since start-up, and a
//! snapshot carries no sum to make a proper summary of.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use zinfer_proto as proto;

/// The kind of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

/// One metric family: its kind, help text and samples.
struct Family {
    kind: Kind,
    help: &'static str,
    samples: Vec<(Labels, f64)>,
}

/// Samples grouped by family, each family written once with its HELP and TYPE.
#[derive(Default)]
struct Exposition {
    families: BTreeMap<&'static str, Family>,
}

impl Exposition {
    fn add(&mut self, name: &'static str, kind: Kind, help: &'static str, labels: Labels, value: f64) {
        let family = self.families.entry(name).or_insert_with(|| Family { kind, help, samples: Vec::new() });
        family.samples.push((labels, value));
    }

    fn render(&self) -> String {
        let mut text = String::new();
        for (name, Family { kind, help, samples }) in &self.families {
            let kind = match kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
            };
            let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let labels: Vec<String> =
                    labels.0.iter().map(|(label, value)| format!("{label}=\"{}\"", escape(value))).collect();
                let _ = writeln!(text, "{name}{{{}}} {value}", labels.join(","));
            }
        }
        text
    }
}

/// A series' labels.
#[derive(Clone)]
struct Labels(Vec<(&'static str, String)>);

impl Labels {
    fn with(&self, label: &'static str, value: impl ToString) -> Self {
        let mut labels = self.clone();
        labels.0.push((label, value.to_string()));
        labels
    }
}

/// Label values escape backslash, double quote and line feed.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Every daemon's snapshot as one exposition.
pub fn render(snapshots: &[proto::Telemetry]) -> String {
    use Kind::{Counter, Gauge};
    let mut out = Exposition::default();
    for snapshot in snapshots {
        let daemon = Labels(vec![("daemon", snapshot.zid.clone())]);
        let info =
            daemon.with("host", &snapshot.hostname).with("board", &snapshot.board).with("version", &snapshot.version);
        out.add(
            "zinfer_daemon_info",
            Gauge,
            "A zinferd daemon (always 1); join on `daemon` for host and board.",
            info,
            1.0,
        );
        let uptime = snapshot.uptime_ms as f64 / 1000.0;
        out.add("zinfer_daemon_uptime_seconds", Gauge, "Time since the daemon started.", daemon.clone(), uptime);
        if let Some(process) = &snapshot.process {
            let help = "Resident memory of the zinferd process.";
            out.add("zinfer_process_resident_memory_bytes", Gauge, help, daemon.clone(), process.rss_bytes as f64);
            let cpu = f64::from(process.cpu_percent) / 100.0;
            out.add(
                "zinfer_process_cpu_ratio",
                Gauge,
                "CPU used by the process, in cores (2 = two cores busy).",
                daemon.clone(),
                cpu,
            );
        }
        if let Some(memory) = &snapshot.memory {
            let help = "The process's memory budget (0: none).";
            out.add("zinfer_memory_budget_bytes", Gauge, help, daemon.clone(), memory.budget_bytes as f64);
            let level = match memory.pressure.as_str() {
                "soft" => 1.0,
                "hard" => 2.0,
                _ => 0.0,
            };
            let help = "Memory pressure: 0 normal, 1 soft (batches and queues shrunk), 2 hard (new messages shed).";
            out.add("zinfer_memory_pressure_level", Gauge, help, daemon.clone(), level);
        }
        if let Some(system) = &snapshot.system {
            let help = "Memory the machine has available.";
            let available = system.available_memory_bytes as f64;
            out.add("zinfer_system_available_memory_bytes", Gauge, help, daemon.clone(), available);
            for temperature in &system.temperatures {
                let labels = daemon.with("sensor", &temperature.label);
                let help = "A temperature sensor of the board.";
                out.add("zinfer_temperature_celsius", Gauge, help, labels, f64::from(temperature.celsius));
            }
        }
        if let Some(service) = &snapshot.service {
            let help = "The configuration generation in force (1, plus one per successful reload).";
            out.add("zinfer_generation", Gauge, help, daemon.clone(), service.generation as f64);
            let help = "Configuration reloads, by result.";
            out.add("zinfer_reloads_total", Counter, help, daemon.with("result", "ok"), service.reloads_ok as f64);
            let failed = service.reloads_failed as f64;
            out.add("zinfer_reloads_total", Counter, help, daemon.with("result", "failed"), failed);
        }
        for pipeline in &snapshot.pipelines {
            add_pipeline(&mut out, &daemon, pipeline);
        }
    }
    out.render()
}

fn add_pipeline(out: &mut Exposition, daemon: &Labels, pipeline: &proto::PipelineStats) {
    use Kind::{Counter, Gauge};
    let labels = daemon.with("pipeline", &pipeline.name).with("generation", pipeline.generation);
    let counters: [(&'static str, &'static str, u64); 9] = [
        ("zinfer_pipeline_messages_received_total", "Messages accepted (published or queried).", pipeline.received),
        ("zinfer_pipeline_messages_completed_total", "Messages answered ok.", pipeline.completed),
        ("zinfer_pipeline_queries_total", "Of the messages accepted, those that came as queries.", pipeline.queries),
        (
            "zinfer_pipeline_deadline_missed_total",
            "Messages answered ok after their deadline.",
            pipeline.deadline_missed,
        ),
        (
            "zinfer_pipeline_publish_failures_total",
            "Outcomes zenoh refused to publish or reply (lost results).",
            pipeline.publish_failures,
        ),
        (
            "zinfer_pipeline_queries_refused_total",
            "Queries refused at the door (answered with a reply error).",
            pipeline.queries_refused,
        ),
        ("zinfer_pipeline_messages_refused_total", "Messages refused at the door, with no outcome.", pipeline.refused),
        (
            "zinfer_pipeline_messages_shared_elsewhere_total",
            "With share: messages left to another daemon sharing the pipeline.",
            pipeline.shared_elsewhere,
        ),
        (
            "zinfer_pipeline_messages_unwatched_total",
            "With share: messages left to another daemon and not followed until it answers (lost silently if it dies).",
            pipeline.share_unwatched,
        ),
    ];
    for (name, help, value) in counters {
        out.add(name, Counter, help, labels.clone(), value as f64);
    }
    let by_reason: [(&'static str, &'static str, &BTreeMap<String, u64>); 3] = [
        ("zinfer_pipeline_messages_failed_total", "Messages answered error, by reason.", &pipeline.failed_by_reason),
        (
            "zinfer_pipeline_messages_dropped_total",
            "Messages answered dropped, by reason.",
            &pipeline.dropped_by_reason,
        ),
        (
            "zinfer_pipeline_messages_expired_total",
            "Messages answered expired, by reason.",
            &pipeline.expired_by_reason,
        ),
    ];
    for (name, help, reasons) in by_reason {
        for (reason, count) in reasons {
            out.add(name, Counter, help, labels.with("reason", reason), *count as f64);
        }
    }
    let gauges: [(&'static str, &'static str, u64); 3] = [
        ("zinfer_pipeline_queue_depth", "Messages waiting for the model.", pipeline.queue_depth),
        ("zinfer_pipeline_in_flight", "Outcomes owed: accepted messages not yet answered.", pipeline.in_flight),
        ("zinfer_pipeline_max_in_flight", "The most outcomes the pipeline may owe at once.", pipeline.max_in_flight),
    ];
    for (name, help, value) in gauges {
        out.add(name, Gauge, help, labels.clone(), value as f64);
    }
    // The drift guard (the model's golden inputs): what a fleet alerts on when a board's model changes its answers.
    if let Some(drift) = &pipeline.drift {
        let (runs, failed) = (
            "Runs of the model's golden inputs since start-up (the start-up run included).",
            "Runs of the golden inputs outside the manifest's tolerance, or that could not run.",
        );
        out.add("zinfer_pipeline_drift_checks_total", Counter, runs, labels.clone(), drift.checks as f64);
        out.add("zinfer_pipeline_drift_failures_total", Counter, failed, labels.clone(), drift.failures as f64);
        let gauges: [(&'static str, &'static str, f64); 4] = [
            ("zinfer_pipeline_drift_passed", "1 if the last run met the tolerance.", f64::from(u8::from(drift.passed))),
            (
                "zinfer_pipeline_drift_agreement",
                "Fraction of golden inputs whose top-1 class matched the reference at the last run.",
                if drift.cases == 0 { 0.0 } else { f64::from(drift.agreeing) / f64::from(drift.cases) },
            ),
            (
                "zinfer_pipeline_drift_max_deviation",
                "Largest score difference from the reference at the last run.",
                drift.max_deviation,
            ),
            (
                "zinfer_pipeline_drift_mean_deviation",
                "Mean over the golden inputs of each one's largest score difference, at the last run.",
                drift.mean_deviation,
            ),
        ];
        for (name, help, value) in gauges {
            out.add(name, Gauge, help, labels.clone(), value);
        }
    }
    // The model ladder: which rung serves, how often it stepped, and what each rung answered.
    if let Some(ladder) = &pipeline.ladder {
        let help = "Index of the ladder rung that serves new messages (0: the pipeline's largest model).";
        out.add("zinfer_pipeline_ladder_rung", Gauge, help, labels.clone(), f64::from(ladder.active));
        for (direction, steps) in [("down", ladder.steps_down), ("up", ladder.steps_up)] {
            let help = "Steps between the ladder's models: down under pressure, up once it is gone.";
            out.add(
                "zinfer_pipeline_ladder_steps_total",
                Counter,
                help,
                labels.with("direction", direction),
                steps as f64,
            );
        }
        for rung in &ladder.rungs {
            let model = rung.model.as_ref().map_or("", |model| model.name.as_str());
            let help = "Results (ok) each model of the ladder produced since the pipeline started.";
            out.add(
                "zinfer_pipeline_ladder_completed_total",
                Counter,
                help,
                labels.with("model", model),
                rung.completed as f64,
            );
        }
    }
    for latency in &pipeline.latency {
        let stage = labels.with("stage", &latency.stage);
        for (quantile, micros) in [("0.5", latency.p50_us), ("0.95", latency.p95_us), ("0.99", latency.p99_us)] {
            let help = "Latency of ok messages per stage since the pipeline started, by quantile.";
            let seconds = micros as f64 / 1e6;
            out.add("zinfer_pipeline_latency_seconds", Gauge, help, stage.with("quantile", quantile), seconds);
        }
    }
    // `position` tells apart two stages of one type.
    for (position, latency) in pipeline.stage_latency.iter().enumerate() {
        let stage = labels.with("stage", &latency.stage).with("position", position);
        for (quantile, micros) in [("0.5", latency.p50_us), ("0.95", latency.p95_us), ("0.99", latency.p99_us)] {
            let help =
                "Latency of ok messages in each of the pipeline's own stages (by type and position), by quantile.";
            let seconds = micros as f64 / 1e6;
            out.add("zinfer_pipeline_stage_latency_seconds", Gauge, help, stage.with("quantile", quantile), seconds);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    /// The value of the one sample of family `name` whose label `label` is `value`.
    pub(crate) fn value_of(text: &str, name: &str, label: &str, value: &str) -> f64 {
        let exposition = openmetrics_parser::prometheus::parse_prometheus(text).expect("a valid exposition");
        let family = exposition.families.get(name).unwrap_or_else(|| panic!("{name} in\n{text}"));
        let mut matching = family
            .iter_samples()
            .filter(|sample| sample.get_labelset().is_ok_and(|labels| labels.get_label_value(label) == Some(value)));
        let sample = matching.next().unwrap_or_else(|| panic!("{name}{{{label}=\"{value}\"}} in\n{text}"));
        assert!(matching.next().is_none(), "one {name}{{{label}=\"{value}\"}}");
        match &sample.value {
            openmetrics_parser::PrometheusValue::Counter(counter) => counter.value.as_f64(),
            openmetrics_parser::PrometheusValue::Gauge(gauge) => gauge.as_f64(),
            other => panic!("{name}: not a counter or gauge: {other:?}"),
        }
    }

    #[test]
    fn a_snapshot_reads_back_through_a_prometheus_parser() {
        let snapshot = proto::Telemetry {
            zid: "abc".into(),
            hostname: "host \"1\"".into(),
            pipelines: vec![proto::PipelineStats {
                name: "sentiment".into(),
                generation: 2,
                completed: 7,
                dropped_by_reason: [("queue_full".to_owned(), 3)].into(),
                latency: vec![proto::LatencyStats { stage: "total".into(), p99_us: 1500, ..Default::default() }],
                stage_latency: vec![proto::LatencyStats { stage: "tokenize".into(), p50_us: 70, ..Default::default() }],
                drift: Some(proto::DriftCheck {
                    checks: 3,
                    failures: 1,
                    cases: 32,
                    agreeing: 30,
                    max_deviation: 0.25,
                    ..Default::default()
                }),
                ladder: Some(proto::Ladder {
                    rungs: vec![
                        proto::Rung {
                            model: Some(proto::ModelRef { name: "big".into(), version: "1".into() }),
                            completed: 5,
                        },
                        proto::Rung {
                            model: Some(proto::ModelRef { name: "small".into(), version: "1".into() }),
                            completed: 2,
                        },
                    ],
                    active: 1,
                    steps_down: 1,
                    steps_up: 0,
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = render(&[snapshot]);
        assert_eq!(value_of(&text, "zinfer_pipeline_messages_completed_total", "generation", "2"), 7.0);
        assert_eq!(value_of(&text, "zinfer_pipeline_messages_dropped_total", "reason", "queue_full"), 3.0);
        // The parser hands label values back as written, escapes included.
        assert_eq!(value_of(&text, "zinfer_daemon_info", "host", r#"host \"1\""#), 1.0);
        assert!((value_of(&text, "zinfer_pipeline_latency_seconds", "quantile", "0.99") - 0.0015).abs() < 1e-12);
        assert!((value_of(&text, "zinfer_pipeline_stage_latency_seconds", "quantile", "0.5") - 0.00007).abs() < 1e-12);
        assert_eq!(value_of(&text, "zinfer_pipeline_drift_failures_total", "pipeline", "sentiment"), 1.0);
        assert_eq!(value_of(&text, "zinfer_pipeline_drift_passed", "pipeline", "sentiment"), 0.0);
        assert_eq!(value_of(&text, "zinfer_pipeline_drift_agreement", "pipeline", "sentiment"), 0.9375);
        assert_eq!(value_of(&text, "zinfer_pipeline_ladder_rung", "pipeline", "sentiment"), 1.0);
        assert_eq!(value_of(&text, "zinfer_pipeline_ladder_steps_total", "direction", "down"), 1.0);
        assert_eq!(value_of(&text, "zinfer_pipeline_ladder_completed_total", "model", "small"), 2.0);
    }
}
