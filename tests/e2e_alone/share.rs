//! Work shared across daemons behind a real zenoh router (`share` in a pipeline): in steady state every message is
//! processed by exactly one daemon; a stream keeps to one daemon under `share = "key"`; a daemon that joins takes a
//! share without a restart; one that is SIGKILLed or frozen hands its share to the others within a bound measured
//! here, and the messages it took and never answered are answered `dropped/member_lost` by a survivor, with the
//! sender's id; one that stops cleanly answers everything it took itself.
//! They run here, one at a time, because membership changes are timing: beside the e2e suite, a daemon's reception
//! lagged its stream by more than the handover once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use zinfer_proto as proto;
use zinferd::client::decode_result;

use crate::support::{Daemon, WAIT, base_config_behind, free_port, open_client, open_router, text_pipeline};

/// A router, a publishing client behind it, and daemons sharing pipeline `shared` on `in/<tag>/**`.
struct Site {
    _router: zenoh::Session,
    endpoint: String,
    prefix: String,
    tag: String,
    share: &'static str,
    client: zenoh::Session,
    daemons: Vec<Daemon>,
    /// The daemons' zenoh lease (how long the router waits before it declares a silent daemon gone), if not zenoh's
    /// default, 10 s.
    lease_ms: Option<u64>,
    /// The pipeline's `max_in_flight`, if not the default.
    max_in_flight: Option<u64>,
    scratch: tempfile::TempDir,
}

impl Site {
    async fn open(tag: &str, share: &'static str) -> Self {
        let port = free_port();
        let endpoint = format!("tcp/127.0.0.1:{port}");
        let router = open_router(port).await;
        let client = open_client(&endpoint).await;
        let prefix = format!("zt/{tag}/{port}");
        let scratch = tempfile::tempdir().expect("temp dir");
        let (tag, daemons, lease_ms, max_in_flight) = (tag.to_owned(), Vec::new(), None, None);
        Self { _router: router, endpoint, prefix, tag, share, client, daemons, lease_ms, max_in_flight, scratch }
    }

    /// Starts one more daemon and waits until every daemon's membership token is known to the router.
    async fn add_daemon(&mut self) {
        let input = format!("in/{}/**", self.tag);
        let mut keys = format!("share = \"{}\"\nqueue_capacity = 2000", self.share);
        if let Some(max_in_flight) = self.max_in_flight {
            keys += &format!("\nmax_in_flight = {max_in_flight}");
        }
        let mut config =
            base_config_behind(&self.endpoint, &self.prefix) + &text_pipeline("shared", &input, &keys, "", "");
        if let Some(lease) = self.lease_ms {
            let file = self.scratch.path().join("zenoh.json5");
            std::fs::write(&file, format!("{{ transport: {{ link: {{ tx: {{ lease: {lease} }} }} }} }}"))
                .expect("write");
            config = config.replacen("[zenoh]\n", &format!("[zenoh]\nconfig_file = \"{}\"\n", file.display()), 1);
        }
        let mut daemon = Daemon::start_behind(&config, &self.endpoint);
        daemon.wait_subscribed(&self.client, &format!("in/{}/x", self.tag)).await;
        self.daemons.push(daemon);
        let members = format!("{}/share/shared/*", self.prefix);
        let deadline = Instant::now() + WAIT;
        loop {
            let tokens = self.client.liveliness().get(&members).timeout(WAIT).await.expect("liveliness get");
            let mut count = 0;
            while tokens.recv_async().await.is_ok() {
                count += 1;
            }
            if count == self.daemons.len() {
                break;
            }
            assert!(Instant::now() < deadline, "{count} membership tokens, {} daemons", self.daemons.len());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The router knows every token; probe until each daemon says it sees them all (it counts at each sample).
        let key = format!("in/{}/x", self.tag);
        for probe in 0.. {
            self.publish(&[format!("probe-{probe}")], Some(&key), Duration::ZERO, |_| {}).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            let seen: Vec<u64> =
                self.snapshots().await.iter().map(|snapshot| snapshot.pipelines[0].share_members).collect();
            if seen.len() == self.daemons.len() && seen.iter().all(|members| *members as usize == self.daemons.len()) {
                break;
            }
            assert!(Instant::now() < deadline, "members seen by each daemon: {seen:?}");
        }
    }

    /// Publishes `ids` on `key`, `spacing` apart (each on a key of its own when `key` is `None`: `in/<tag>/<id>`),
    /// calling `between(index)` before each.
    async fn publish(&self, ids: &[String], key: Option<&str>, spacing: Duration, mut between: impl FnMut(usize)) {
        for (index, id) in ids.iter().enumerate() {
            between(index);
            let key = key.map_or_else(|| format!("in/{}/{id}", self.tag), str::to_owned);
            let body = serde_json::json!({"id": id, "text": "a fine and moving film"}).to_string();
            self.client
                .put(key, body)
                .encoding(zenoh::bytes::Encoding::APPLICATION_JSON)
                .congestion_control(zenoh::qos::CongestionControl::Block)
                .await
                .expect("put");
            if !spacing.is_zero() {
                tokio::time::sleep(spacing).await;
            }
        }
    }

    /// The fleet's messages received, left to another member, and left without being followed, summed over the
    /// daemons.
    async fn books(&self) -> (u64, u64, u64) {
        let snapshots = self.snapshots().await;
        assert_eq!(snapshots.len(), self.daemons.len());
        let sum = |field: fn(&proto::PipelineStats) -> u64| -> u64 {
            snapshots.iter().map(|snapshot| field(&snapshot.pipelines[0])).sum()
        };
        (sum(|stats| stats.received), sum(|stats| stats.shared_elsewhere), sum(|stats| stats.share_unwatched))
    }

    /// Every daemon's telemetry, by zenoh id.
    async fn snapshots(&self) -> Vec<proto::Telemetry> {
        zinfer_fleet::gather(&self.client, &self.prefix, Duration::from_secs(2)).await.expect("gather")
    }
}

/// What one outcome said: the daemon that published it, its reason (empty for `ok`) and when it arrived.
#[derive(Debug, Clone)]
struct Answer {
    daemon: String,
    reason: String,
    at: Instant,
}

/// The reason a survivor gives, with the sender's id, for a message that a member which died took and never
/// answered.
const MEMBER_LOST: &str = proto::drop_reason::MEMBER_LOST;

/// A subscription to the daemons' results that notes when each arrived (a test reads them only after it has
/// published).
struct Results {
    _subscriber: zenoh::pubsub::Subscriber<()>,
    arrived: tokio::sync::mpsc::UnboundedReceiver<(Instant, zenoh::sample::Sample)>,
}

impl Results {
    async fn subscribe(client: &zenoh::Session, key: &str) -> Self {
        let (sender, arrived) = tokio::sync::mpsc::unbounded_channel();
        let subscriber = client
            .declare_subscriber(key.to_owned())
            .callback(move |sample| {
                let _ = sender.send((Instant::now(), sample));
            })
            .await
            .expect("subscribe");
        Self { _subscriber: subscriber, arrived }
    }
}

/// Outcomes seen on `out/in/<tag>/**`: per id, what answered it (once each, if all is well). Each is `ok`, or
/// `dropped/member_lost` from a survivor; anything else fails the test.
async fn collect(results: &mut Results, expected: usize) -> BTreeMap<String, Vec<Answer>> {
    let mut answered: BTreeMap<String, Vec<Answer>> = BTreeMap::new();
    let mut total = 0;
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut record = |(at, sample): (Instant, zenoh::sample::Sample)| -> bool {
        let result = decode_result(&sample).expect("a result");
        if result.id.starts_with("probe-") {
            return false;
        }
        let lost = result.outcome == proto::outcome::DROPPED && result.reason == MEMBER_LOST;
        assert!(result.outcome == proto::outcome::OK || lost, "{result:?}");
        let answer = Answer { daemon: result.daemon, reason: result.reason, at };
        answered.entry(result.id).or_default().push(answer);
        true
    };
    // Until all came, or none for 3 s (lost ones never come), within WAIT.
    while total < expected {
        let idle = (tokio::time::Instant::now() + Duration::from_secs(3)).min(deadline);
        let Ok(Some(arrived)) = tokio::time::timeout_at(idle, results.arrived.recv()).await else { break };
        total += usize::from(record(arrived));
    }
    // Anything further would be a duplicate.
    while let Ok(Some(arrived)) = tokio::time::timeout(Duration::from_millis(500), results.arrived.recv()).await {
        record(arrived);
    }
    answered
}

fn ids(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|index| format!("{prefix}-{index}")).collect()
}

/// The ids of `sent` that got no outcome, and the ids answered more than once.
fn gaps<'a>(answered: &'a BTreeMap<String, Vec<Answer>>, sent: &'a [String]) -> (Vec<&'a String>, Vec<&'a String>) {
    let missing = sent.iter().filter(|id| !answered.contains_key(*id)).collect();
    let twice = answered.iter().filter(|(_, by)| by.len() > 1).map(|(id, _)| id).collect();
    (missing, twice)
}

/// Each id answered exactly once; returns how many each daemon answered.
fn exactly_once(answered: &BTreeMap<String, Vec<Answer>>, ids: &[String]) -> BTreeMap<String, usize> {
    let (missing, twice) = gaps(answered, ids);
    assert!(missing.is_empty() && twice.is_empty(), "lost: {missing:?}; answered more than once: {twice:?}");
    let mut per_daemon = BTreeMap::new();
    for by in answered.values() {
        assert_eq!(by[0].reason, "", "steady state: every message processed: {by:?}");
        *per_daemon.entry(by[0].daemon.clone()).or_default() += 1;
    }
    per_daemon
}

/// The ids answered `dropped/member_lost`, with what answered each.
fn lost_notices(answered: &BTreeMap<String, Vec<Answer>>) -> Vec<(&String, &Answer)> {
    answered
        .iter()
        .flat_map(|(id, by)| by.iter().map(move |answer| (id, answer)))
        .filter(|(_, answer)| answer.reason == MEMBER_LOST)
        .collect()
}

/// How many `dropped/member_lost` outcomes the daemon with telemetry `snapshot` published.
fn member_lost_counted(snapshot: &proto::Telemetry) -> u64 {
    member_lost_counted_in(&snapshot.pipelines[0])
}

/// The same, from a pipeline's counters.
fn member_lost_counted_in(stats: &proto::PipelineStats) -> u64 {
    stats.dropped_by_reason.get(MEMBER_LOST).copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_then_three_daemons_share_a_stream_each_message_once_and_a_joiner_takes_a_share() {
    let _alone = crate::ALONE.lock().await;
    const ROUND: usize = 300;
    let mut site = Site::open("share", "message").await;
    site.add_daemon().await;
    site.add_daemon().await;
    let mut results = Results::subscribe(&site.client, "out/in/share/**").await;

    let first = ids("two", ROUND);
    site.publish(&first, Some("in/share/x"), Duration::ZERO, |_| {}).await;
    let per_daemon = exactly_once(&collect(&mut results, ROUND).await, &first);
    assert_eq!(per_daemon.len(), 2, "both daemons took a share of one key's messages: {per_daemon:?}");
    eprintln!("2 daemons, {ROUND} messages on one key: {per_daemon:?}");

    // A third joins; the two others go on without a restart.
    site.add_daemon().await;
    let before = site.books().await;
    let second = ids("three", ROUND);
    site.publish(&second, Some("in/share/x"), Duration::ZERO, |_| {}).await;
    let per_daemon = exactly_once(&collect(&mut results, ROUND).await, &second);
    assert_eq!(per_daemon.len(), 3, "the joiner took a share: {per_daemon:?}");
    eprintln!("3 daemons, {ROUND} messages on one key: {per_daemon:?}");

    // The books: each message of the round received by one daemon and left to the others by the two others, who
    // follow it (it has an id) until its result passes.
    let after = site.books().await;
    let snapshots = site.snapshots().await;
    assert!(snapshots.iter().all(|snapshot| snapshot.pipelines[0].share_members == 3), "{snapshots:?}");
    assert_eq!((after.0 - before.0, after.1 - before.1), (ROUND as u64, 2 * ROUND as u64));
    assert_eq!(after.2, 0, "every message had an id to follow");

    // A message without an id gets one of its daemon's making, which the others cannot follow: they say so.
    const ANONYMOUS: usize = 10;
    for _ in 0..ANONYMOUS {
        site.client.put("in/share/x", "a fine and moving film").await.expect("put");
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let books = site.books().await;
        if (books.0 - after.0, books.1 - after.1) == (ANONYMOUS as u64, 2 * ANONYMOUS as u64) {
            assert_eq!(books.2, 2 * ANONYMOUS as u64, "each left to another member is not followed: {books:?}");
            break;
        }
        assert!(Instant::now() < deadline, "{books:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_share_key_every_message_of_a_stream_goes_to_one_daemon() {
    let _alone = crate::ALONE.lock().await;
    const KEYS: usize = 12;
    const PER_KEY: usize = 8;
    let mut site = Site::open("affine", "key").await;
    for _ in 0..3 {
        site.add_daemon().await;
    }
    let mut results = Results::subscribe(&site.client, "out/in/affine/**").await;
    let mut sent = Vec::new();
    for round in 0..PER_KEY {
        for key in 0..KEYS {
            let id = format!("k{key}-{round}");
            site.publish(std::slice::from_ref(&id), Some(&format!("in/affine/source-{key}")), Duration::ZERO, |_| {})
                .await;
            sent.push(id);
        }
    }
    let answered = collect(&mut results, sent.len()).await;
    exactly_once(&answered, &sent);
    let mut daemons_of_key: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (id, by) in &answered {
        let key = id.split('-').next().expect("key part").to_owned();
        daemons_of_key.entry(key).or_default().extend(by.iter().map(|answer| answer.daemon.clone()));
    }
    assert!(daemons_of_key.values().all(|daemons| daemons.len() == 1), "one daemon per stream: {daemons_of_key:?}");
    let used: BTreeSet<&String> = daemons_of_key.values().flatten().collect();
    assert!(used.len() >= 2, "{KEYS} streams spread over the daemons: {daemons_of_key:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_daemons_share_moves_to_the_survivor_and_its_backlog_is_answered_member_lost() {
    let _alone = crate::ALONE.lock().await;
    const BURST: usize = 500;
    const AFTER: usize = 750;
    let spacing = Duration::from_millis(2);
    let mut site = Site::open("failover", "message").await;
    site.add_daemon().await;
    site.add_daemon().await;
    let mut results = Results::subscribe(&site.client, "out/in/failover/**").await;

    // A burst leaves the victim a backlog; it dies; a paced stream goes on.
    let sent = ids("f", BURST + AFTER);
    site.publish(&sent[..BURST], Some("in/failover/x"), Duration::ZERO, |_| {}).await;
    let mut victim = site.daemons.pop().expect("two daemons");
    victim.kill();
    let killed_at = Instant::now();
    let mut sent_at = Vec::with_capacity(AFTER);
    site.publish(&sent[BURST..], Some("in/failover/x"), spacing, |_| sent_at.push(Instant::now())).await;
    let answered = collect(&mut results, BURST + AFTER).await;

    let (missing, twice) = gaps(&answered, &sent);
    let notices = lost_notices(&answered);
    let lost_after = notices.iter().filter(|(id, _)| sent[BURST..].contains(*id)).count();
    let last_notice = notices.iter().map(|(_, answer)| answer.at.duration_since(killed_at)).max();
    eprintln!(
        "SIGKILL of one of two sharing daemons: {} of a {BURST}-message burst and {lost_after} of {AFTER} sent \
         {spacing:?} apart after the kill answered dropped/member_lost by the survivor, the last {last_notice:?} after \
         the kill; {} without any outcome, {} answered twice",
        notices.len() - lost_after,
        missing.len(),
        twice.len()
    );
    // Every message the victim took and never answered, its backlog and what reached it before the survivor saw it
    // go, is answered by the survivor with the sender's id: none is lost silently.
    assert!(missing.is_empty(), "no outcome for {missing:?}");
    assert!(twice.is_empty(), "answered more than once: {twice:?}");
    assert!(!notices.is_empty(), "the victim died with a backlog");
    let survivor = site.snapshots().await;
    assert_eq!(survivor.len(), 1);
    assert_eq!(survivor[0].pipelines[0].share_members, 1, "the survivor saw the victim leave");
    assert!(notices.iter().all(|(_, answer)| answer.daemon == survivor[0].zid), "{notices:?}");
    assert_eq!(member_lost_counted(&survivor[0]), notices.len() as u64, "the survivor counts what it answered");
    // The notices follow the victim's session closing (at once on SIGKILL, through the router) and a grace for its
    // results still on their way: well under a second after the kill.
    assert!(last_notice.is_some_and(|last| last < Duration::from_secs(2)), "{last_notice:?}");
    assert!(sent_at.last().is_some_and(|last| last.duration_since(killed_at) > Duration::from_secs(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_daemon_hands_its_share_over_without_losing_a_message() {
    let _alone = crate::ALONE.lock().await;
    const MESSAGES: usize = 1000;
    const STOP_AT: usize = 300;
    let spacing = Duration::from_millis(2);
    let mut site = Site::open("handover", "message").await;
    site.add_daemon().await;
    site.add_daemon().await;
    let mut results = Results::subscribe(&site.client, "out/in/handover/**").await;
    let sent = ids("h", MESSAGES);
    let leaving = site.daemons.pop().expect("two daemons");
    site.publish(&sent, Some("in/handover/x"), spacing, |index| {
        if index == STOP_AT {
            leaving.terminate();
        }
    })
    .await;
    let answered = collect(&mut results, MESSAGES).await;
    let (lost, twice) = gaps(&answered, &sent);
    let notices = lost_notices(&answered);
    eprintln!(
        "SIGTERM of one of two sharing daemons mid-stream: {} without an outcome, {} answered member_lost, {} \
         answered twice",
        lost.len(),
        notices.len(),
        twice.len()
    );
    // It leaves the members first and admits its share until the survivor has seen it go: a message in between
    // may be taken by both, none by neither. It drains what it took before its session closes, so the survivor
    // has nothing to answer for it.
    if !lost.is_empty() || !notices.is_empty() {
        let survivor = site.snapshots().await;
        panic!(
            "lost: {lost:?}\nmember_lost: {notices:?}\nsurvivor: {:?}\nleaving daemon:\n{}",
            survivor[0].pipelines[0],
            leaving.log()
        );
    }
    let mut leaving = leaving;
    assert!(leaving.wait_exit().success(), "a clean stop:\n{}", leaving.log());
}

/// A daemon that freezes (SIGSTOP: its connections stay open, it sends nothing, as a board that hangs or loses its
/// network without closing them) keeps its share until the router declares it gone, one zenoh lease later; then
/// the survivor answers every message of its share until then `dropped/member_lost`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_daemons_share_is_answered_member_lost_once_its_zenoh_lease_expires() {
    let _alone = crate::ALONE.lock().await;
    const LEASE_MS: u64 = 2000;
    const MESSAGES: usize = 1000;
    const FREEZE_AT: usize = 200;
    let spacing = Duration::from_millis(5);
    let mut site = Site::open("frozen", "message").await;
    site.lease_ms = Some(LEASE_MS);
    site.add_daemon().await;
    site.add_daemon().await;
    let mut results = Results::subscribe(&site.client, "out/in/frozen/**").await;
    let sent = ids("z", MESSAGES);
    let victim = site.daemons.pop().expect("two daemons");
    let mut sent_at = Vec::with_capacity(MESSAGES);
    let mut frozen_at = None;
    site.publish(&sent, Some("in/frozen/x"), spacing, |index| {
        if index == FREEZE_AT {
            victim.signal("STOP");
            frozen_at = Some(Instant::now());
        }
        sent_at.push(Instant::now());
    })
    .await;
    let frozen_at = frozen_at.expect("frozen mid-stream");
    let answered = collect(&mut results, MESSAGES).await;
    let mut victim = victim;
    victim.kill();

    let (missing, twice) = gaps(&answered, &sent);
    let notices = lost_notices(&answered);
    let index_of = |id: &str| sent.iter().position(|sent| sent == id).expect("a sent id");
    let last_sent = notices.iter().map(|(id, _)| sent_at[index_of(id)].saturating_duration_since(frozen_at)).max();
    let first_notice = notices.iter().map(|(_, answer)| answer.at.saturating_duration_since(frozen_at)).min();
    // Whether the frozen daemon held the publisher back (puts with congestion control block, through the router).
    let stall = sent_at.windows(2).map(|pair| pair[1] - pair[0]).max().unwrap_or_default();
    eprintln!(
        "SIGSTOP of one of two sharing daemons (lease {LEASE_MS} ms), {MESSAGES} messages {spacing:?} apart: {} \
         answered member_lost, the last of them sent {last_sent:?} after the freeze, the first notice {first_notice:?} \
         after it; {} without any outcome, {} answered twice; the publisher's longest pause {stall:?}",
        notices.len(),
        missing.len(),
        twice.len()
    );
    assert!(missing.is_empty(), "no outcome for {missing:?}");
    assert!(twice.is_empty(), "answered more than once: {twice:?}");
    assert!(!notices.is_empty(), "a frozen daemon's share is lost until the lease expires");
    // Nothing is declared lost before the router gives up on the frozen daemon, and its share moves within the lease
    // and a margin.
    assert!(first_notice.is_some_and(|first| first > Duration::from_millis(LEASE_MS / 2)), "{first_notice:?}");
    assert!(last_sent.is_some_and(|last| last < Duration::from_millis(LEASE_MS + 2000)), "{last_sent:?}");
}

/// What a member follows for another is bounded: at most `max_in_flight` per other member (a member never owes
/// more). A member frozen while over a hundred messages are left to it, then killed, is answered for the newest
/// `max_in_flight` of them only, and every one let go is counted in `share_unwatched`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_member_follows_for_another_is_bounded_by_max_in_flight_and_the_rest_is_counted() {
    let _alone = crate::ALONE.lock().await;
    const MAX_IN_FLIGHT: u64 = 40;
    const MESSAGES: usize = 300;
    let mut site = Site::open("bounded", "message").await;
    site.max_in_flight = Some(MAX_IN_FLIGHT);
    // The frozen member must not be declared gone before it is killed: each status round waits for its silence
    // (2 s), and with zenoh's default lease (10 s) the survivor once took over its share mid-test.
    site.lease_ms = Some(60_000);
    site.add_daemon().await;
    site.add_daemon().await;
    let mut results = Results::subscribe(&site.client, "out/in/bounded/**").await;
    let mut victim = site.daemons.pop().expect("two daemons");
    // Frozen (its session stays up, so the survivor keeps leaving it its share), then a burst. Only the survivor
    // answers status from here on, so each round's one snapshot is the survivor's.
    victim.signal("STOP");
    let stats = |snapshots: Vec<proto::Telemetry>| {
        assert_eq!(snapshots.len(), 1, "only the survivor answers status");
        snapshots[0].pipelines[0].clone()
    };
    let before = stats(site.snapshots().await);
    let sent = ids("b", MESSAGES);
    site.publish(&sent, Some("in/bounded/x"), Duration::ZERO, |_| {}).await;
    let deadline = Instant::now() + WAIT;
    let during = loop {
        let now = stats(site.snapshots().await);
        let seen = (now.received + now.refused + now.shared_elsewhere)
            - (before.received + before.refused + before.shared_elsewhere);
        // At least: a probe of `add_daemon` may still have been on its way when `before` was read. Whatever the
        // survivor counted, what it left to the frozen member and what it let go come from one snapshot.
        if seen >= MESSAGES as u64 {
            break now;
        }
        assert!(Instant::now() < deadline, "the survivor saw {seen} of {MESSAGES}: {now:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let left = during.shared_elsewhere - before.shared_elsewhere;
    let unwatched = during.share_unwatched - before.share_unwatched;
    assert!(left > MAX_IN_FLIGHT, "the burst left the frozen member more than the bound: {left}");
    assert_eq!(unwatched, left - MAX_IN_FLIGHT, "all but the newest {MAX_IN_FLIGHT} of {left} let go, and counted");

    victim.kill();
    let mut notices = 0;
    while let Ok(Some((_, sample))) = tokio::time::timeout(Duration::from_secs(3), results.arrived.recv()).await {
        let result = decode_result(&sample).expect("a result");
        notices += u64::from(result.reason == MEMBER_LOST);
    }
    let after = stats(site.snapshots().await);
    eprintln!(
        "a member frozen under a {MESSAGES}-message burst, then killed: {left} left to it, {unwatched} let go \
         (max_in_flight {MAX_IN_FLIGHT}), {notices} answered member_lost"
    );
    assert_eq!(notices, MAX_IN_FLIGHT, "the survivor answers what it still followed, no more");
    assert_eq!(member_lost_counted_in(&after), MAX_IN_FLIGHT);
}
