//! A secured fabric, configured the zenoh way: a router with TLS, mutual TLS, or user/password authentication and
//! an access-control list, a daemon behind it configured through a native zenoh config file (`[zenoh] config_file`),
//! and clients with and without the credentials. An authorised client publishes, queries and reads results and
//! status; one without credentials, or outside the ACL, gets nothing through. The certificates are made here, by
//! rcgen, for each run.

use std::path::{Path, PathBuf};
use std::time::Duration;

use zinfer_proto::{self as proto, keys};
use zinferd::client::{RequestFormat, decode_result};

use crate::support::{Daemon, WAIT, base_config_behind, free_port, text_pipeline, try_open_session, try_status};

/// A CA and the certificates it signed, as PEM files in a folder.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// A CA, a server certificate for 127.0.0.1 (`router`) and client certificates (`daemon`, `client`).
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name.push(rcgen::DnType::CommonName, "zinfer test CA");
        let ca = ca.self_signed(&ca_key).expect("CA certificate");
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).expect("write CA");
        for name in ["router", "daemon", "client"] {
            let key = rcgen::KeyPair::generate().expect("key");
            let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("params");
            params.distinguished_name.push(rcgen::DnType::CommonName, name);
            let cert = params.signed_by(&key, &ca, &ca_key).expect("certificate");
            std::fs::write(dir.path().join(format!("{name}.pem")), cert.pem()).expect("write certificate");
            std::fs::write(dir.path().join(format!("{name}.key")), key.serialize_pem()).expect("write key");
        }
        Self { dir }
    }

    fn path(&self, file: &str) -> String {
        self.dir.path().join(file).display().to_string()
    }
}

/// A session of `mode` with `keys`, or `None` if zenoh refuses to open it (a client that cannot connect to its
/// router).
async fn open(mode: &str, keys: &[(&str, String)]) -> Option<zenoh::Session> {
    try_open_session(mode, keys).await.ok()
}

/// A router listening on `endpoint` over TLS with the PKI's router certificate; with `mtls`, it also demands a
/// client certificate signed by the PKI's CA.
async fn tls_router(pki: &Pki, endpoint: &str, mtls: bool) -> zenoh::Session {
    let mut keys = vec![
        ("listen/endpoints", format!("[{}]", json(endpoint))),
        ("transport/link/tls/listen_certificate", json(&pki.path("router.pem"))),
        ("transport/link/tls/listen_private_key", json(&pki.path("router.key"))),
    ];
    if mtls {
        keys.push(("transport/link/tls/root_ca_certificate", json(&pki.path("ca.pem"))));
        keys.push(("transport/link/tls/enable_mtls", "true".to_owned()));
    }
    open("router", &keys).await.expect("the router opens")
}

fn json(value: &str) -> String {
    serde_json::to_string(value).expect("a JSON string")
}

/// A daemon in client mode behind `router`, its zenoh settings beyond the TOML ones in a native zenoh config file.
fn daemon_behind(router: &str, prefix: &str, native: &str, dir: &Path) -> Daemon {
    let file: PathBuf = dir.join("daemon-zenoh.json5");
    std::fs::write(&file, native).expect("write the daemon's zenoh config");
    let config = base_config_behind(router, prefix).replacen(
        "[zenoh]\n",
        &format!("[zenoh]\nconfig_file = \"{}\"\n", file.display()),
        1,
    ) + &text_pipeline("secure", "in/secure/**", "", "", "");
    Daemon::start_behind(&config, router)
}

/// `session` publishes a request and gets its result, asks the pipeline's queryable and gets its reply, and reads
/// the daemon's status.
async fn assert_served(session: &zenoh::Session, prefix: &str, daemon: &Daemon) {
    let results = session.declare_subscriber("out/in/secure/**").await.expect("subscribe");
    let publisher = session.declare_publisher("in/secure/x").await.expect("publisher");
    let deadline = std::time::Instant::now() + WAIT;
    while !publisher.matching_status().await.is_ok_and(|status| status.matching()) {
        assert!(std::time::Instant::now() < deadline, "the daemon never subscribed:\n{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (payload, encoding) = RequestFormat::Json.encode("pub-1", "a fine film");
    publisher.put(payload).encoding(encoding).await.expect("put");
    let sample = tokio::time::timeout(WAIT, results.recv_async()).await.expect("a result in time").expect("sample");
    let result = decode_result(&sample).expect("a result");
    assert_eq!((result.id.as_str(), result.outcome.as_str()), ("pub-1", proto::outcome::OK));

    let (payload, encoding) = RequestFormat::Json.encode("query-1", "a dull film");
    let replies = session
        .get(keys::infer(prefix, "secure"))
        .payload(payload)
        .encoding(encoding)
        .timeout(WAIT)
        .await
        .expect("get");
    let reply = replies.recv_async().await.expect("a reply");
    let result = decode_result(reply.result().expect("an ok reply")).expect("a result");
    assert_eq!(result.id, "query-1");

    let replies = session.get(keys::status(prefix)).timeout(WAIT).await.expect("status get");
    assert!(replies.recv_async().await.is_ok_and(|reply| reply.result().is_ok()), "a status reply");
}

/// `session` (if zenoh let it open at all) gets nothing through: its request reaches no daemon, it reads no
/// result, its query and its status query get no reply.
async fn assert_shut_out(session: Option<zenoh::Session>, prefix: &str) {
    let Some(session) = session else { return };
    let results = session.declare_subscriber("out/in/secure/**").await.expect("subscribe");
    let telemetry = session.declare_subscriber(keys::telemetry(prefix)).await.expect("subscribe");
    let (payload, encoding) = RequestFormat::Json.encode("intruder-1", "let me in");
    let _ = session.put("in/secure/x", payload.clone()).encoding(encoding.clone()).await;
    let timeout = Duration::from_secs(2);
    let replies = session.get(keys::infer(prefix, "secure")).payload(payload).encoding(encoding).timeout(timeout).await;
    if let Ok(replies) = replies {
        assert!(replies.recv_async().await.is_err(), "a query from outside got a reply");
    }
    let replies = session.get(keys::status(prefix)).timeout(timeout).await;
    if let Ok(replies) = replies {
        assert!(replies.recv_async().await.is_err(), "a status query from outside got a reply");
    }
    // Telemetry goes out every 100 ms in these tests: two seconds of silence is nothing getting through.
    assert!(tokio::time::timeout(timeout, telemetry.recv_async()).await.is_err(), "telemetry reached an outsider");
    assert!(results.try_recv().expect("subscriber open").is_none(), "a result reached an outsider");
}

/// The daemon's count of accepted messages, read by an authorised session.
async fn received(session: &zenoh::Session, prefix: &str) -> u64 {
    try_status(session, prefix).await.expect("a status reply").pipelines[0].received
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_only_clients_that_trust_the_ca_get_through() {
    let pki = Pki::new();
    let port = free_port();
    let router_endpoint = format!("tls/127.0.0.1:{port}");
    let prefix = format!("zt/tls/{port}");
    let _router = tls_router(&pki, &router_endpoint, false).await;
    let native =
        format!(r#"{{ transport: {{ link: {{ tls: {{ root_ca_certificate: {} }} }} }} }}"#, json(&pki.path("ca.pem")));
    let daemon = daemon_behind(&router_endpoint, &prefix, &native, pki.dir.path());

    let trusted = [
        ("connect/endpoints", format!("[{}]", json(&router_endpoint))),
        ("transport/link/tls/root_ca_certificate", json(&pki.path("ca.pem"))),
    ];
    let client = open("client", &trusted).await.expect("a client that trusts the CA connects");
    assert_served(&client, &prefix, &daemon).await;

    // Without the CA, the router's certificate is not trusted; plain TCP to a TLS port is no better.
    let untrusting = open("client", &[("connect/endpoints", format!("[{}]", json(&router_endpoint)))]).await;
    assert_shut_out(untrusting, &prefix).await;
    let plain = open("client", &[("connect/endpoints", format!("[\"tcp/127.0.0.1:{port}\"]"))]).await;
    assert_shut_out(plain, &prefix).await;
    assert_eq!(received(&client, &prefix).await, 2, "only the authorised put and query reached the daemon");

    // zinferd's own client joins with a zenoh config file of its own, and cannot without it.
    let client_config = pki.dir.path().join("client-zenoh.json5");
    std::fs::write(
        &client_config,
        format!("{{ transport: {{ link: {{ tls: {{ root_ca_certificate: {} }} }} }} }}", json(&pki.path("ca.pem"))),
    )
    .expect("write the client's zenoh config");
    let send = |with_config: bool| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_zinferd"));
        command.args(["send", "--query", "--key", &keys::infer(&prefix, "secure"), "--connect", &router_endpoint]);
        command.args(["--timeout-ms", "3000"]);
        if with_config {
            command.arg("--zenoh-config").arg(&client_config);
        }
        command.arg("a fine film").output().expect("run zinferd send")
    };
    let with = send(true);
    assert!(with.status.success(), "{}", String::from_utf8_lossy(&with.stderr));
    let printed: proto::Result = serde_json::from_slice(&with.stdout).expect("send prints the result");
    assert_eq!(printed.outcome, proto::outcome::OK);
    assert!(!send(false).status.success(), "without the CA, zinferd send cannot reach the pipeline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_mutual_tls_a_client_without_a_certificate_gets_nothing_through() {
    let pki = Pki::new();
    let port = free_port();
    let router_endpoint = format!("tls/127.0.0.1:{port}");
    let prefix = format!("zt/mtls/{port}");
    let _router = tls_router(&pki, &router_endpoint, true).await;
    let native = format!(
        r#"{{ transport: {{ link: {{ tls: {{ root_ca_certificate: {}, enable_mtls: true,
            connect_certificate: {}, connect_private_key: {} }} }} }} }}"#,
        json(&pki.path("ca.pem")),
        json(&pki.path("daemon.pem")),
        json(&pki.path("daemon.key"))
    );
    let daemon = daemon_behind(&router_endpoint, &prefix, &native, pki.dir.path());

    let with_certificate = [
        ("connect/endpoints", format!("[{}]", json(&router_endpoint))),
        ("transport/link/tls/root_ca_certificate", json(&pki.path("ca.pem"))),
        ("transport/link/tls/enable_mtls", "true".to_owned()),
        ("transport/link/tls/connect_certificate", json(&pki.path("client.pem"))),
        ("transport/link/tls/connect_private_key", json(&pki.path("client.key"))),
    ];
    let client = open("client", &with_certificate).await.expect("a client with a certificate connects");
    assert_served(&client, &prefix, &daemon).await;

    let without_certificate = [
        ("connect/endpoints", format!("[{}]", json(&router_endpoint))),
        ("transport/link/tls/root_ca_certificate", json(&pki.path("ca.pem"))),
    ];
    assert_shut_out(open("client", &without_certificate).await, &prefix).await;
    assert_eq!(received(&client, &prefix).await, 2, "only the authorised put and query reached the daemon");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_user_password_and_an_acl_only_listed_users_get_through() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dictionary = dir.path().join("users.txt");
    std::fs::write(&dictionary, "zinferd:daemon-secret\noperator:operator-secret\noutsider:outsider-secret\n")
        .expect("write the dictionary");
    let port = free_port();
    let router_endpoint = format!("tcp/127.0.0.1:{port}");
    let prefix = format!("zt/acl/{port}");
    // Everything allowed for the daemon and the operator, by user name; the outsider authenticates but is in no
    // policy, so the default (deny) applies to it.
    let acl = r#"{
        enabled: true,
        default_permission: "deny",
        rules: [{ id: "all", permission: "allow", flows: ["ingress", "egress"], key_exprs: ["**"],
                  messages: ["put", "delete", "declare_subscriber", "query", "declare_queryable", "reply",
                             "liveliness_token", "declare_liveliness_subscriber", "liveliness_query"] }],
        subjects: [{ id: "fleet", usernames: ["zinferd", "operator"] }],
        policies: [{ rules: ["all"], subjects: ["fleet"] }],
    }"#;
    let _router = open(
        "router",
        &[
            ("listen/endpoints", format!("[{}]", json(&router_endpoint))),
            ("transport/auth/usrpwd/dictionary_file", json(&dictionary.display().to_string())),
            ("access_control", acl.to_owned()),
        ],
    )
    .await
    .expect("the router opens");
    let native = r#"{ transport: { auth: { usrpwd: { user: "zinferd", password: "daemon-secret" } } } }"#;
    let daemon = daemon_behind(&router_endpoint, &prefix, native, dir.path());

    let as_user = |user: &str, password: &str| {
        vec![
            ("connect/endpoints", format!("[{}]", json(&router_endpoint))),
            ("transport/auth/usrpwd/user", json(user)),
            ("transport/auth/usrpwd/password", json(password)),
        ]
    };
    let operator = open("client", &as_user("operator", "operator-secret")).await.expect("the operator connects");
    assert_served(&operator, &prefix, &daemon).await;

    assert_shut_out(open("client", &as_user("operator", "wrong")).await, &prefix).await;
    assert_shut_out(open("client", &as_user("outsider", "outsider-secret")).await, &prefix).await;
    assert_shut_out(open("client", &[("connect/endpoints", format!("[{}]", json(&router_endpoint)))]).await, &prefix)
        .await;
    assert_eq!(received(&operator, &prefix).await, 2, "only the operator's put and query reached the daemon");
}

#[test]
fn the_readme_example_zenoh_configs_are_accepted_by_zenoh() {
    for file in ["configs/secure/router.json5", "configs/secure/daemon-zenoh.json5"] {
        let path = crate::support::repo_root().join(file);
        if let Err(error) = zenoh::Config::from_file(&path) {
            panic!("{file}: {error}");
        }
    }
}
