//! Seeing the fleet: `zinferd fleet` finds every daemon under a prefix through zenoh and shows one row each, and
//! `zinferd fleet --prometheus` serves their metrics to a Prometheus scrape.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use zinferd::client::RequestFormat;

use crate::support::{Daemon, WAIT, base_config, base_config_connected, free_port, text_pipeline};

/// Two daemons under one prefix, each serving its own input, the second connected to the first.
struct Fleet {
    first: Daemon,
    second: Daemon,
    prefix: String,
}

async fn two_daemons(tag: &str) -> Fleet {
    let (first_port, second_port) = (free_port(), free_port());
    let prefix = format!("zt/{tag}/{first_port}");
    let first = Daemon::start(
        &(base_config(first_port, &prefix) + &text_pipeline("alpha", &format!("in/{tag}/a/**"), "", "", "")),
        first_port,
    );
    let second_config = base_config_connected(second_port, first_port, &prefix);
    let second =
        Daemon::start(&(second_config + &text_pipeline("beta", &format!("in/{tag}/b/**"), "", "", "")), second_port);
    Fleet { first, second, prefix }
}

/// Publishes `count` requests through `daemon`'s endpoint on `key` and waits for their results.
async fn serve(daemon: &Daemon, key: &str, count: usize) {
    let client = daemon.client().await;
    client.wait_for_subscriber(key, WAIT).await.expect("subscribed");
    for index in 0..count {
        let id = format!("{key}-{index}");
        let pending = client.request(key, "out", &id, "a fine film", RequestFormat::Json).await.expect("publish");
        pending.result(WAIT).await.expect("a result");
    }
    client.close().await;
}

/// The zenoh id a daemon logged when it became ready (a status query would reach either daemon: they share the
/// prefix).
fn zid_of(daemon: &Daemon) -> String {
    let log = daemon.log();
    let ready = log.lines().find(|line| line.contains("zinferd ready")).expect("the daemon logged ready");
    let zid = ready.split("zid=").nth(1).and_then(|rest| rest.split_whitespace().next()).expect("a zid");
    zid.to_owned()
}

fn zinferd_fleet(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_zinferd"));
    command.arg("fleet").args(args);
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_table_has_one_row_per_daemon_with_its_rate() {
    let Fleet { first, second, prefix } = two_daemons("fleetrows").await;
    serve(&first, "in/fleetrows/a/x", 3).await;
    serve(&second, "in/fleetrows/b/x", 2).await;
    let (first_zid, second_zid) = (zid_of(&first), zid_of(&second));

    // Through the first daemon's endpoint: the second answers through it too.
    let output = zinferd_fleet(&["--connect", &first.endpoint, "--prefix", &prefix, "--json", "--interval-ms", "300"])
        .output()
        .expect("run zinferd fleet");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).expect("JSON rows");
    assert_eq!(rows.len(), 2, "{rows:#?}");
    let mut expected = [(first_zid, "alpha"), (second_zid, "beta")];
    expected.sort();
    for (row, (zid, pipeline)) in rows.iter().zip(&expected) {
        assert_eq!(row["daemon"], zid.as_str(), "{row:#}");
        assert_eq!(row["pipelines"], serde_json::json!([pipeline]), "{row:#}");
        assert_eq!(row["generation"], 1);
        assert!(row["host"].as_str().is_some_and(|host| !host.is_empty()), "telemetry names the host: {row:#}");
        assert!(row["messages_per_second"].is_number(), "a rate from two rounds: {row:#}");
        assert!(row["rss_bytes"].as_u64().is_some_and(|rss| rss > 0), "{row:#}");
    }

    let table = zinferd_fleet(&["--connect", &first.endpoint, "--prefix", &prefix, "--interval-ms", "0"])
        .output()
        .expect("run zinferd fleet");
    let text = String::from_utf8_lossy(&table.stdout);
    assert_eq!(text.lines().count(), 3, "a header and two rows:\n{text}");
    assert!(text.contains("alpha") && text.contains("beta"), "{text}");

    let none = zinferd_fleet(&["--connect", &first.endpoint, "--prefix", "zt/nobody", "--interval-ms", "0"])
        .output()
        .expect("run zinferd fleet");
    assert!(!none.status.success(), "no daemon under the prefix is an error");
    assert!(String::from_utf8_lossy(&none.stderr).contains("no zinferd answered"), "{none:?}");
}

/// Kills the exporter when the test ends, however it ends.
struct Exporter(Child);

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn scrape(address: &str) -> Option<(String, String)> {
    let mut stream = TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(WAIT)).ok()?;
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {address}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    Some((head.to_owned(), body.to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prometheus_exporter_serves_every_daemons_counters() {
    let Fleet { first, second, prefix } = two_daemons("fleetprom").await;
    serve(&first, "in/fleetprom/a/x", 4).await;
    serve(&second, "in/fleetprom/b/x", 1).await;
    let (first_zid, second_zid) = (zid_of(&first), zid_of(&second));

    let address = format!("127.0.0.1:{}", free_port());
    let _exporter = Exporter(
        zinferd_fleet(&["--connect", &second.endpoint, "--prefix", &prefix, "--prometheus", &address])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the exporter"),
    );
    // Until it listens and both daemons are in the scrape.
    let deadline = Instant::now() + WAIT;
    let (head, body) = loop {
        if let Some((head, body)) = scrape(&address)
            && body.matches("zinfer_daemon_info{").count() == 2
        {
            break (head, body);
        }
        assert!(Instant::now() < deadline, "the exporter did not serve both daemons");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(head.starts_with("HTTP/1.") && head.contains(" 200"), "{head}");
    assert!(head.to_lowercase().contains("content-type: text/plain; version=0.0.4"), "{head}");

    let exposition = openmetrics_parser::prometheus::parse_prometheus(&body).expect("a valid Prometheus exposition");
    let completed = &exposition.families["zinfer_pipeline_messages_completed_total"];
    assert_eq!(completed.family_type, openmetrics_parser::PrometheusType::Counter);
    let count_of = |zid: &str| {
        completed
            .iter_samples()
            .find(|sample| sample.get_labelset().is_ok_and(|labels| labels.get_label_value("daemon") == Some(zid)))
            .map(|sample| match &sample.value {
                openmetrics_parser::PrometheusValue::Counter(counter) => counter.value.as_f64(),
                other => panic!("not a counter: {other:?}"),
            })
            .unwrap_or_else(|| panic!("daemon {zid} in\n{body}"))
    };
    assert_eq!((count_of(&first_zid), count_of(&second_zid)), (4.0, 1.0), "{body}");
    for family in ["zinfer_process_resident_memory_bytes", "zinfer_pipeline_latency_seconds", "zinfer_generation"] {
        assert!(exposition.families.contains_key(family), "{family} in\n{body}");
    }
}
