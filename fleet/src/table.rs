//! One row per daemon, for people (`zinferd fleet`) and scripts (`zinferd fleet --json`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;
use zinfer_proto as proto;

/// What an operator looks at first about one daemon.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// The daemon's zenoh id.
    pub daemon: String,
    /// Its host name.
    pub host: String,
    /// Its board model; empty where the board does not say.
    pub board: String,
    /// Its configuration generation (1, plus one per successful reload).
    pub generation: u64,
    /// The pipelines of that generation.
    pub pipelines: Vec<String>,
    /// Messages answered per second between the two gatherings (all outcomes); `None` when the daemon was not in
    /// the first one.
    pub messages_per_second: Option<f64>,
    /// The worst p99 of the total latency among its pipelines, since their start, in milliseconds.
    pub p99_ms: f64,
    /// The process's RSS.
    pub rss_bytes: u64,
    /// Its memory budget; 0 without one.
    pub budget_bytes: u64,
    /// "normal", "soft" or "hard".
    pub pressure: String,
    /// The hottest of the board's temperature sensors; `None` without any.
    pub temperature_celsius: Option<f32>,
    /// "ok" or "failed" for its latest reload; empty before the first.
    pub last_reload: String,
    /// When that reload finished, in milliseconds since the Unix epoch; 0 before the first.
    pub last_reload_ms: u64,
    /// How long the daemon has run.
    pub uptime_ms: u64,
    /// The drift guard: the pipelines whose last run of their model's golden inputs failed (empty: all passed);
    /// `None` when no pipeline's model has golden inputs.
    pub drift_failing: Option<Vec<String>>,
}

/// The rows of the daemons in `after`, with rates from `before`, gathered `interval` earlier.
pub fn rows(before: &[proto::Telemetry], after: &[proto::Telemetry], interval: Duration) -> Vec<Row> {
    after
        .iter()
        .map(|snapshot| {
            let earlier = before.iter().find(|earlier| earlier.zid == snapshot.zid);
            let service = snapshot.service.clone().unwrap_or_default();
            let memory = snapshot.memory.clone().unwrap_or_default();
            let current = snapshot.pipelines.iter().filter(|pipeline| pipeline.generation == service.generation);
            let guarded: Vec<_> =
                current.clone().filter_map(|pipeline| Some((&pipeline.name, pipeline.drift.as_ref()?))).collect();
            let drift_failing = (!guarded.is_empty())
                .then(|| guarded.iter().filter(|(_, drift)| !drift.passed).map(|(name, _)| (*name).clone()).collect());
            let p99_us = current
                .clone()
                .flat_map(|pipeline| &pipeline.latency)
                .filter(|latency| latency.stage == "total")
                .map(|latency| latency.p99_us)
                .max()
                .unwrap_or(0);
            let temperature = snapshot
                .system
                .as_ref()
                .into_iter()
                .flat_map(|system| &system.temperatures)
                .map(|temperature| temperature.celsius)
                .reduce(f32::max);
            Row {
                daemon: snapshot.zid.clone(),
                host: snapshot.hostname.clone(),
                board: snapshot.board.clone(),
                generation: service.generation,
                pipelines: current.map(|pipeline| pipeline.name.clone()).collect(),
                messages_per_second: earlier.map(|earlier| rate(earlier, snapshot, interval)),
                p99_ms: p99_us as f64 / 1000.0,
                rss_bytes: snapshot.process.as_ref().map_or(memory.rss_bytes, |process| process.rss_bytes),
                budget_bytes: memory.budget_bytes,
                pressure: memory.pressure,
                temperature_celsius: temperature,
                last_reload: service.last_reload,
                last_reload_ms: service.last_reload_ms,
                uptime_ms: snapshot.uptime_ms,
                drift_failing,
            }
        })
        .collect()
}

/// Outcomes per second between two snapshots of one daemon. Counters are per pipeline and generation; a pipeline
/// that appeared in between (a reload) counts from zero.
fn rate(before: &proto::Telemetry, after: &proto::Telemetry, interval: Duration) -> f64 {
    let answered = |snapshot: &proto::Telemetry| -> BTreeMap<(String, u64), u64> {
        snapshot
            .pipelines
            .iter()
            .map(|p| ((p.name.clone(), p.generation), p.completed + p.failed + p.dropped + p.expired))
            .collect()
    };
    let earlier = answered(before);
    let grown: u64 = answered(after)
        .into_iter()
        .map(|(pipeline, now)| now.saturating_sub(earlier.get(&pipeline).copied().unwrap_or(0)))
        .sum();
    grown as f64 / interval.as_secs_f64().max(1e-3)
}

/// The rows as an aligned text table with a header.
pub fn render(rows: &[Row]) -> String {
    let header = ["DAEMON", "HOST", "BOARD", "GEN", "PIPELINES", "MSG/S", "P99 MS", "RSS/BUDGET MIB", "PRESSURE"];
    let header = header.into_iter().chain(["TEMP C", "LAST RELOAD", "DRIFT"]).map(str::to_owned).collect::<Vec<_>>();
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let mut lines = vec![header];
    for row in rows {
        lines.push(vec![
            row.daemon.chars().take(16).collect(),
            or_dash(&row.host),
            or_dash(&row.board),
            row.generation.to_string(),
            or_dash(&row.pipelines.join(",")),
            row.messages_per_second.map_or_else(|| "-".to_owned(), |rate| format!("{rate:.1}")),
            format!("{:.2}", row.p99_ms),
            if row.budget_bytes == 0 {
                format!("{:.0}/-", mib(row.rss_bytes))
            } else {
                format!("{:.0}/{:.0}", mib(row.rss_bytes), mib(row.budget_bytes))
            },
            or_dash(&row.pressure),
            row.temperature_celsius.map_or_else(|| "-".to_owned(), |celsius| format!("{celsius:.0}")),
            or_dash(&row.last_reload),
            match &row.drift_failing {
                None => "-".to_owned(),
                Some(failing) if failing.is_empty() => "ok".to_owned(),
                Some(failing) => format!("FAIL:{}", failing.join(",")),
            },
        ]);
    }
    let widths: Vec<usize> = (0..lines[0].len())
        .map(|column| lines.iter().map(|line| line[column].chars().count()).max().unwrap_or(0))
        .collect();
    let mut text = String::new();
    for line in lines {
        let cells: Vec<String> = line.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        let _ = writeln!(text, "{}", cells.join("  ").trim_end());
    }
    text
}

fn or_dash(text: &str) -> String {
    if text.is_empty() { "-".to_owned() } else { text.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(zid: &str, completed: u64, dropped: u64, generation: u64) -> proto::Telemetry {
        proto::Telemetry {
            zid: zid.into(),
            hostname: "board-1".into(),
            service: Some(proto::ServiceState { generation, ..Default::default() }),
            pipelines: vec![proto::PipelineStats {
                name: "sentiment".into(),
                generation,
                completed,
                dropped,
                latency: vec![proto::LatencyStats { stage: "total".into(), p99_us: 2500, ..Default::default() }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn rates_count_every_outcome_and_restart_with_a_new_generation() {
        let before = [snapshot("a", 100, 10, 1), snapshot("b", 0, 0, 1)];
        let after = [snapshot("a", 150, 30, 1), snapshot("b", 20, 0, 2), snapshot("c", 5, 0, 1)];
        let rows = rows(&before, &after, Duration::from_secs(2));
        let rates: Vec<Option<f64>> = rows.iter().map(|row| row.messages_per_second).collect();
        // a: 70 more in 2 s; b: its generation 2 pipeline is new, so all 20 count; c: not seen before.
        assert_eq!(rates, [Some(35.0), Some(10.0), None]);
        assert_eq!(rows[1].pipelines, ["sentiment"]);
        assert!((rows[0].p99_ms - 2.5).abs() < 1e-9);
    }

    #[test]
    fn the_table_has_a_header_and_a_line_per_daemon() {
        let text = render(&rows(&[], &[snapshot("a", 1, 0, 1), snapshot("b", 1, 0, 1)], Duration::from_secs(1)));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("DAEMON") && lines[1].starts_with("a ") && lines[2].starts_with("b "), "{text}");
        assert!(lines[1].contains("board-1") && lines[1].contains("sentiment"), "{text}");
        assert!(lines[0].ends_with("DRIFT") && lines[1].ends_with(" -"), "no golden inputs: {text}");
    }

    #[test]
    fn the_drift_column_names_the_failing_pipelines() {
        let with_drift = |passed: bool| {
            let mut snapshot = snapshot("a", 1, 0, 1);
            snapshot.pipelines[0].drift = Some(proto::DriftCheck { passed, ..Default::default() });
            snapshot
        };
        let rows = rows(&[], &[with_drift(true), with_drift(false)], Duration::from_secs(1));
        assert_eq!(rows[0].drift_failing, Some(Vec::new()));
        assert_eq!(rows[1].drift_failing, Some(vec!["sentiment".to_owned()]));
        let text = render(&rows);
        assert!(text.lines().nth(1).is_some_and(|line| line.ends_with(" ok")), "{text}");
        assert!(text.lines().nth(2).is_some_and(|line| line.ends_with(" FAIL:sentiment")), "{text}");
    }
}
