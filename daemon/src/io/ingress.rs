//! Ingress: a zenoh subscriber per pipeline that admits samples into the pipeline's bounded queue.
//!
//! Admission is where a message becomes the daemon's responsibility: from the moment it is counted as received it
//! gets exactly one outcome, carrying the sender's id (the payload's, found by the decoder's bounded peek, else the
//! attachment's) even when it is shed undecoded. A message arriving while the pipeline already owes
//! `max_in_flight` outcomes is refused instead (counted, no outcome): answering it would need memory that grows
//! with the input rate, because its outcome could not leave any faster than the others. The zenoh callback never blocks (it runs on zenoh's own threads): when the queue is
//! full the message is answered at once with `dropped: queue_full` (or, under `overload = "latest"`, the oldest
//! waiting message of its key makes room and is answered `dropped: superseded`) instead of stalling every subscriber.

use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Instant, SystemTime};

use tokio::sync::mpsc::UnboundedSender;
use zenoh::bytes::ZBytes;
use zenoh::key_expr::{KeyExpr, OwnedKeyExpr};
use zenoh::query::Query;
use zenoh::sample::Sample;
use zenoh::time::Timestamp;
use zinfer_proto::keys::{self, DEADLINE_PARAMETER};
use zinfer_stage_api::{Decoder, PEEK_BYTES, RawMessage, Reason, StageError};

use crate::config::{ShareMode, WireEncoding};
use crate::io::egress::{Reply, encode};
use crate::io::share::watch::Record;
use crate::io::share::{AnswerLost, Decision, Share, Sharing};
use crate::pipeline::Envelope;
use crate::pipeline::outcome::{DropReason, Outcome, Verdict};
use crate::pipeline::queue::{Refused, Sender, Waiter};
use crate::telemetry::metrics::PipelineMetrics;

/// Generates request ids for messages that carry none: `<zenoh id>-<sequence>`, unique per daemon run.
#[derive(Debug)]
pub struct IdGenerator {
    prefix: String,
    next: AtomicU64,
}

impl IdGenerator {
    /// Ids prefixed with `prefix` (the session's zenoh id).
    pub fn new(prefix: String) -> Self {
        Self { prefix, next: AtomicU64::new(1) }
    }

    /// The daemon's zenoh id.
    fn zid(&self) -> &str {
        &self.prefix
    }

    fn next(&self) -> String {
        format!("{}-{}", self.prefix, self.next.fetch_add(1, Ordering::Relaxed))
    }
}

/// Where admitted messages go: the pipeline's queue, or straight to the egress when they cannot be queued.
pub struct Admission {
    /// The pipeline's bounded queue.
    pub queue: Sender,
    /// The egress, for messages answered without processing.
    pub outcomes: UnboundedSender<Outcome>,
    /// Index of the pipeline in its generation (outcomes name it).
    pub pipeline: usize,
    /// Its counters.
    pub metrics: Arc<PipelineMetrics>,
    /// The pipeline's decoder, to find the sender's id in a message that is answered without being decoded.
    pub decoder: Arc<dyn Decoder>,
    /// Larger payloads are answered `payload_too_large` without being copied (the pipeline's `queue_bytes`).
    pub max_payload: usize,
    /// The pipeline's result encoding, for the queries refused at the door.
    pub encoding: WireEncoding,
}

/// A pipeline's subscription. While it is open, every sample on the input key is admitted to exactly one
/// [`Admission`]: the current one. A reload swaps the admission under the same subscriber ([`Ingress::retarget`]),
/// so a message published during a reload reaches either the old pipeline or the new one, never both or neither.
/// A reload that changes the input needs a new subscriber, opened before the old one closes; while both exist they
/// share an [`Overlap`], so that a message both receive is admitted by one of them only.
pub struct Ingress {
    gate: Arc<Mutex<Gate>>,
    subscriber: zenoh::pubsub::Subscriber<()>,
    /// Queries reach the same admission as samples.
    queryable: zenoh::query::Queryable<()>,
    ids: Arc<IdGenerator>,
    share: ShareMode,
    /// The key expression of the pipeline's results, where a sharing daemon follows the other members' outcomes.
    results: String,
}

/// How a pipeline is named on the network, for its subscription.
#[derive(Debug, Clone, Copy)]
pub struct Names<'a> {
    /// The telemetry prefix: queries reach the pipeline under it, and sharing members announce themselves there.
    pub prefix: &'a str,
    /// The pipeline's name.
    pub name: &'a str,
    /// Whether daemons split its input.
    pub share: ShareMode,
    /// Where its results go: `<output_prefix>/<input key>`.
    pub output_prefix: &'a str,
}

/// The wire declarations of the non-wild prefixes of every input this process has subscribed to, kept until the
/// session closes.
///
/// zenoh declares a subscriber's non-wild key prefix as a numeric wire id, which its routing then uses to hand the
/// session the samples under it, and it forgets that id when the subscriber is undeclared. A sample routed with the
/// id just before, still on its way through zenoh's threads, then arrives with an id the session no longer knows and
/// is dropped ("Received Data for unknown expr_id"), even though a reload's new subscription matches it: one message
/// in ~1,500 was lost across six input changes under a dense stream (found by
/// `input_changes_back_and_forth_under_a_dense_stream_answer_each_message_once`). Declaring each prefix here first
/// makes every subscriber on it share this declaration (zenoh counts them by name), so no id a sample may be routed
/// with is ever undeclared while the daemon runs. Holding them longer would only move the race to when they go; they
/// cost one small entry per distinct input the configuration ever named.
#[derive(Default)]
pub struct Prefixes(HashMap<String, KeyExpr<'static>>);

impl Prefixes {
    /// Declares the non-wild prefix of `input` unless it is already declared.
    async fn pin(&mut self, session: &zenoh::Session, input: &str) -> Result<(), crate::Error> {
        let Some(prefix) = key_expr(input).and_then(|input| non_wild_prefix(input.as_str()).map(str::to_owned)) else {
            return Ok(());
        };
        if let std::collections::hash_map::Entry::Vacant(entry) = self.0.entry(prefix) {
            let declared = session
                .declare_keyexpr(entry.key().clone())
                .await
                .map_err(|error| crate::Error::Zenoh(format!("cannot declare `{}`: {error}", entry.key())))?;
            entry.insert(declared);
        }
        Ok(())
    }
}

/// What the subscriber's callback admits into.
struct Gate {
    /// `None` once closed.
    admission: Option<Admission>,
    /// With `share`, the daemons that split the input; a sample another one owns is left to it.
    share: Option<Share>,
    /// Set while a reload replaces this subscription by one with an overlapping input, or the other way round.
    overlap: Option<Arc<Overlap>>,
}

/// The subscriptions of one pipeline while a reload replaces its input: the old one still open, the new one already
/// declared. A sample on a key that several of them match reaches each of their callbacks; the first admits it,
/// the others recognise it by its timestamp and let it be.
///
/// The timestamp is the sample's identity: zenoh gives each sample one timestamp (the publisher's, or the one its
/// first timestamping hop adds; zinferd turns timestamping on for its session, so what arrives without one gets
/// one), so the deliveries of one sample carry the same one, and two samples never do. A sample that still has
/// none is admitted by every subscription it reaches. The record holds only samples still awaiting another
/// delivery and is dropped with the overlap, within the reload.
#[derive(Debug)]
pub struct Overlap {
    inputs: Vec<OwnedKeyExpr>,
    awaited: Mutex<HashMap<Timestamp, usize>>,
}

impl Overlap {
    /// The overlap of subscriptions on `inputs`; `None` if the inputs are not valid key expressions (they were
    /// checked when the configuration loaded) or fewer than two.
    pub fn new(inputs: &[&str]) -> Option<Arc<Self>> {
        let inputs: Vec<OwnedKeyExpr> = inputs.iter().filter_map(|input| key_expr(input)).collect();
        (inputs.len() >= 2).then(|| Arc::new(Self { inputs, awaited: Mutex::new(HashMap::new()) }))
    }

    /// Whether another subscription of the overlap already admitted `sample`; if not, this one takes it.
    fn taken_elsewhere(&self, sample: &Sample) -> bool {
        let key = sample.key_expr();
        let deliveries = self.inputs.iter().filter(|input| input.includes(key)).count();
        let Some(timestamp) = sample.timestamp().filter(|_| deliveries >= 2) else { return false };
        let mut awaited = lock(&self.awaited);
        match awaited.get_mut(timestamp) {
            Some(left) => {
                *left -= 1;
                if *left == 0 {
                    awaited.remove(timestamp);
                }
                true
            }
            None => {
                awaited.insert(*timestamp, deliveries - 1);
                false
            }
        }
    }
}

/// Whether some key matches both inputs.
pub fn inputs_intersect(first: &str, second: &str) -> bool {
    key_expr(first).zip(key_expr(second)).is_some_and(|(first, second)| first.intersects(&second))
}

/// The part of `input` before its first chunk with a wildcard (all of it if it has none); `None` if that part is
/// empty. The same rule zenoh's subscriber uses to choose what it declares (`keyexpr::get_nonwild_prefix`, which
/// zenoh does not make public).
fn non_wild_prefix(input: &str) -> Option<&str> {
    let prefix = match input.find('*') {
        Some(star) => &input[..input[..star].rfind('/')?],
        None => input,
    };
    (!prefix.is_empty()).then_some(prefix)
}

fn key_expr(input: &str) -> Option<OwnedKeyExpr> {
    OwnedKeyExpr::autocanonize::<String, zenoh::Error>(input.to_owned()).ok()
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Ingress {
    /// Declares the subscriber on `input` and the queryable of the pipeline (see [`keys::infer`]), and with `share`
    /// joins the daemons that split the input; messages without an id get one from `ids`.
    pub async fn open(
        session: &zenoh::Session,
        input: &str,
        names: Names<'_>,
        admission: Admission,
        overlap: Option<Arc<Overlap>>,
        ids: Arc<IdGenerator>,
        prefixes: &mut Prefixes,
    ) -> Result<Self, crate::Error> {
        let Names { prefix, name, share, output_prefix } = names;
        prefixes.pin(session, input).await?;
        let results = keys::result(output_prefix, input);
        let gate = Arc::new(Mutex::new(Gate { admission: Some(admission), share: None, overlap }));
        if share != ShareMode::None {
            let sharing = Sharing { prefix, pipeline: name, mode: share, results: results.clone() };
            let joined = Share::join(session, &sharing, answer_lost(Arc::downgrade(&gate))).await?;
            lock(&gate).share = Some(joined);
        }
        let queryable = declare_queryable(session, &gate, &ids, prefix, name).await?;
        let (callback_gate, callback_ids) = (Arc::clone(&gate), Arc::clone(&ids));
        let subscriber = session
            .declare_subscriber(input.to_owned())
            .callback(move |sample| admit_sample(&callback_gate, &callback_ids, sample))
            .await
            .map_err(|error| crate::Error::Zenoh(format!("cannot subscribe to `{input}`: {error}")))?;
        Ok(Self { gate, subscriber, queryable, ids, share, results })
    }

    /// Answers queries for the pipeline under its new name `name` (a reload renamed it): the new queryable is
    /// declared before the old one goes, so a query under either name is answered meanwhile.
    pub async fn rename(&mut self, session: &zenoh::Session, prefix: &str, name: &str) -> Result<(), crate::Error> {
        let queryable = declare_queryable(session, &self.gate, &self.ids, prefix, name).await?;
        if self.share != ShareMode::None {
            let sharing = Sharing { prefix, pipeline: name, mode: self.share, results: self.results.clone() };
            let joined = Share::join(session, &sharing, answer_lost(Arc::downgrade(&self.gate))).await?;
            lock(&self.gate).share = Some(joined);
        }
        let old = std::mem::replace(&mut self.queryable, queryable);
        if let Err(error) = old.undeclare().await {
            tracing::warn!(%error, "undeclaring a queryable failed");
        }
        Ok(())
    }

    /// From the next message on, admits into `admission`. Dropping the previous admission (returned) releases the
    /// previous pipeline's queue, so its worker drains what it holds and finishes.
    pub fn retarget(&self, admission: Admission) -> Option<Admission> {
        lock(&self.gate).admission.replace(admission)
    }

    /// How the input is shared ([`ShareMode::None`]: not at all).
    pub fn share(&self) -> ShareMode {
        self.share
    }

    /// Where a sharing daemon follows the other members' outcomes: the results of the pipeline as it was opened.
    pub fn results(&self) -> &str {
        &self.results
    }

    /// Joins (`Some`) or leaves (`None`) the overlap of a reload that replaces a subscription.
    pub fn set_overlap(&self, overlap: Option<Arc<Overlap>>) {
        lock(&self.gate).overlap = overlap;
    }

    /// Stops admitting: releases the queue (so the worker can drain and finish) and undeclares the subscriber (its
    /// key prefix stays declared: see [`Prefixes`]).
    pub async fn close(self) {
        // A sharing daemon first leaves the members and goes on admitting its share until the others have seen it
        // leave: a message in between is then taken twice rather than by no one.
        let token = lock(&self.gate).share.as_mut().and_then(Share::leave);
        if let Some(token) = token {
            if let Err(error) = token.undeclare().await {
                tracing::warn!(%error, "withdrawing a share membership token failed");
            }
            tokio::time::sleep(SHARE_HANDOVER).await;
        }
        drop(lock(&self.gate).admission.take());
        if let Err(error) = self.subscriber.undeclare().await {
            tracing::warn!(%error, "undeclaring a subscriber failed");
        }
        if let Err(error) = self.queryable.undeclare().await {
            tracing::warn!(%error, "undeclaring a queryable failed");
        }
    }
}

/// Declares pipeline `name`'s queryable, `<prefix>/infer/<name>` and every key below it, admitting into `gate`.
async fn declare_queryable(
    session: &zenoh::Session,
    gate: &Arc<Mutex<Gate>>,
    ids: &Arc<IdGenerator>,
    prefix: &str,
    name: &str,
) -> Result<zenoh::query::Queryable<()>, crate::Error> {
    let base = keys::infer(prefix, name);
    let declare_error = |error: String| crate::Error::Zenoh(format!("cannot declare the queryable `{base}`: {error}"));
    let key = OwnedKeyExpr::autocanonize(base.clone()).map_err(|error| declare_error(error.to_string()))?;
    let (gate, ids, pipeline) = (Arc::clone(gate), Arc::clone(ids), name.to_owned());
    let callback_key = key.clone();
    session
        .declare_queryable(format!("{key}/**"))
        // It answers for every key under it: zenoh's default query target then asks the nearest daemon serving
        // the pipeline, not all of them (measured: two daemons on one prefix each ran every query otherwise).
        .complete(true)
        .callback(move |query| admit_query(&gate, &ids, &callback_key, &pipeline, query))
        .await
        .map_err(|error| declare_error(error.to_string()))
}

/// A message at the door: a published sample, or a query whose outcome is its reply.
struct Arrival<'a> {
    key: &'a str,
    payload: Option<&'a ZBytes>,
    encoding: String,
    attachment: Option<&'a ZBytes>,
    /// For a query: the reply its outcome owes, and the deadline its selector states.
    reply: Option<Reply>,
    deadline_ms: Option<u64>,
    arrived: Instant,
    arrived_wall: SystemTime,
}

fn admit_sample(gate: &Mutex<Gate>, ids: &IdGenerator, sample: Sample) {
    let (arrived, arrived_wall) = (Instant::now(), SystemTime::now());
    let gate = lock(gate);
    // Closed: the daemon is shutting down, or a reload replaced this subscription, and it no longer accepts messages.
    let Some(admission) = gate.admission.as_ref() else {
        return;
    };
    // The other subscription of a reload's overlap admitted this very sample already.
    if gate.overlap.as_ref().is_some_and(|overlap| overlap.taken_elsewhere(&sample)) {
        return;
    }
    // Another daemon sharing the pipeline takes it; this one follows it until that one answers.
    if let Some(share) = &gate.share {
        admission.metrics.set_share_members(share.members());
        if let Decision::Elsewhere { owner, item } =
            share.decide(sample.key_expr().as_str(), sample.payload(), sample.attachment())
        {
            admission.metrics.record_shared_elsewhere();
            follow(admission, share, &sample, (owner, item), arrived);
            return;
        }
    }
    let arrival = Arrival {
        key: sample.key_expr().as_str(),
        payload: Some(sample.payload()),
        encoding: sample.encoding().to_string(),
        attachment: sample.attachment(),
        reply: None,
        deadline_ms: None,
        arrived,
        arrived_wall,
    };
    admit(admission, ids, arrival);
}

/// Follows a message that member `owner` took (`item`: its hash), by the id the owner's outcome will carry, found
/// as the owner finds it: the payload's (the decoder's bounded peek), else the attachment's. A message with neither
/// gets an id of the owner's making, which no other member can know: it is not followed.
fn follow(admission: &Admission, share: &Share, sample: &Sample, (owner, item): (u64, u64), arrived: Instant) {
    let message = RawMessage {
        key: sample.key_expr().as_str().to_owned(),
        payload: head(sample.payload()),
        encoding: sample.encoding().to_string(),
        attachment_id: attachment_id(sample.attachment()),
    };
    let Some(id) = admission.decoder.peek_id(&message).or(message.attachment_id) else {
        admission.metrics.record_unwatched(1);
        return;
    };
    let record = Record { id, key: message.key, owner, item, since: arrived };
    admission.metrics.record_unwatched(share.follow(record, admission.metrics.max_in_flight()));
}

/// Answers, through the current admission of `gate`, the messages a member that died owed and this daemon owns now:
/// `dropped` (`member_lost`), with their senders' ids. Each is counted received here, as taken over.
fn answer_lost(gate: Weak<Mutex<Gate>>) -> AnswerLost {
    Arc::new(move |lost: Vec<Record>| {
        let Some(gate) = gate.upgrade() else { return };
        let gate = lock(&gate);
        let Some(admission) = gate.admission.as_ref() else {
            tracing::warn!(messages = lost.len(), "a sharing member died owing outcomes while this daemon stops");
            return;
        };
        for Record { id, key, since, .. } in lost {
            admission.metrics.record_taken_over();
            send(admission, Outcome::member_lost(admission.pipeline, id, key, since));
        }
    })
}

/// A query on `<prefix>/infer/<pipeline>[/…]` (`base`: the pipeline's query key, named `pipeline`).
fn admit_query(gate: &Mutex<Gate>, ids: &IdGenerator, base: &OwnedKeyExpr, pipeline: &str, query: Query) {
    let (arrived, arrived_wall) = (Instant::now(), SystemTime::now());
    // The reply goes on the query's own key when that is one key; a query with wildcards gets it on the pipeline's.
    let reply_key =
        if query.key_expr().is_wild() { base.clone() } else { query.key_expr().clone().into_owned().into() };
    let deadline_ms = query.parameters().get(DEADLINE_PARAMETER).and_then(|value| value.trim().parse().ok());
    let key = reply_key.as_str().to_owned();
    let (payload, encoding, attachment) =
        (query.payload().cloned(), query.encoding().map(ToString::to_string), query.attachment().cloned());
    let reply = Reply::new(query, reply_key);
    let gate = lock(gate);
    let Some(admission) = gate.admission.as_ref() else {
        // Between a shutdown's close of the pipeline and the queryable's undeclaration: still owed an answer.
        let id = attachment_id(attachment.as_ref()).unwrap_or_else(|| ids.next());
        let refusal = Refusal { id: &id, key: &key, pipeline, daemon: ids.zid() };
        return refuse_query(reply, refusal, DropReason::Shutdown, WireEncoding::Json);
    };
    let arrival = Arrival {
        key: &key,
        payload: payload.as_ref(),
        encoding: encoding.unwrap_or_default(),
        attachment: attachment.as_ref(),
        reply: Some(reply),
        // Without one stated, zenoh's default query timeout: a reply later than the querier waits is lost anyway.
        deadline_ms: Some(deadline_ms.unwrap_or(DEFAULT_QUERY_TIMEOUT_MS)),
        arrived,
        arrived_wall,
    };
    admit(admission, ids, arrival);
}

/// How long a sharing daemon that stops keeps admitting its share after withdrawing its membership token: the time
/// the others need to see it leave (a liveliness change crosses a LAN or a router in milliseconds), plus what its
/// own reception may lag behind the stream (a message it receives later is lost: the others left it to it). On a
/// loaded 2-core machine, 200 ms was not enough once in a full test run.
const SHARE_HANDOVER: std::time::Duration = std::time::Duration::from_millis(500);

/// zenoh's default query timeout (`queries_default_timeout`), the deadline of a query that states none.
pub const DEFAULT_QUERY_TIMEOUT_MS: u64 = 10_000;

/// The first [`PEEK_BYTES`] of `payload`, where a decoder looks for the sender's id, copied out of zenoh's buffers.
fn head(payload: &ZBytes) -> Vec<u8> {
    let mut head = Vec::with_capacity(payload.len().min(PEEK_BYTES));
    // Reading from zenoh's own buffers cannot fail; a short read only shortens the id peek.
    let _ = payload.reader().take(PEEK_BYTES as u64).read_to_end(&mut head);
    head
}

fn attachment_id(attachment: Option<&ZBytes>) -> Option<String> {
    attachment
        .and_then(|attachment| String::from_utf8(attachment.to_bytes().into_owned()).ok())
        .filter(|id| !id.is_empty())
}

fn admit(admission: &Admission, ids: &IdGenerator, arrival: Arrival<'_>) {
    let size = arrival.payload.map_or(0, ZBytes::len);
    // A payload that could never be queued is not copied out of zenoh: only its head, where its id is.
    let too_large = size > admission.max_payload;
    // Refused (counted, no outcome) when the pipeline owes too many outcomes already; see `try_receive`. A querier
    // waits for its reply, so a refused query is still read (its head only, for the id) and told at once.
    let accepted = admission.metrics.try_receive();
    if !accepted && arrival.reply.is_none() {
        return;
    }
    let payload = match arrival.payload {
        Some(payload) if too_large || !accepted => head(payload),
        Some(payload) => payload.to_bytes().into_owned(),
        None => Vec::new(),
    };
    let attachment_id = attachment_id(arrival.attachment);
    let fallback_id = attachment_id.clone().unwrap_or_else(|| ids.next());
    let message = RawMessage { key: arrival.key.to_owned(), payload, encoding: arrival.encoding, attachment_id };
    let envelope = Envelope {
        message,
        arrived: arrival.arrived,
        arrived_wall: arrival.arrived_wall,
        fallback_id,
        reply: arrival.reply,
        deadline_ms: arrival.deadline_ms,
    };
    if !accepted {
        admission.metrics.record_query_refused();
        let id = envelope.sender_id(admission.decoder.as_ref());
        let refusal = Refusal { id: &id, key: arrival.key, pipeline: admission.metrics.name(), daemon: ids.zid() };
        if let Some(reply) = envelope.reply {
            refuse_query(reply, refusal, DropReason::InFlightLimit, admission.encoding);
        }
        return;
    }
    if envelope.reply.is_some() {
        admission.metrics.record_query();
    }
    if too_large {
        let detail = format!(
            "payload of {size} bytes exceeds the pipeline's queue_bytes ({} bytes); it was not read",
            admission.max_payload
        );
        answer(admission, envelope, Verdict::Failed(StageError::new(Reason::PayloadTooLarge, detail)));
        return;
    }
    // Count before queueing: the worker may dequeue before push returns.
    admission.metrics.record_enqueued();
    let (envelope, reason) = match admission.queue.push(envelope) {
        // `latest`: the newest got in, the oldest made room.
        Ok(evicted) => {
            for waiter in evicted {
                admission.metrics.record_dequeued();
                let superseded = Verdict::Dropped(DropReason::Superseded);
                match waiter {
                    Waiter::Arrived(envelope) => answer(admission, *envelope, superseded),
                    Waiter::Ready(prepared) => {
                        send(admission, Outcome::prepared(admission.pipeline, *prepared, superseded));
                    }
                }
            }
            return;
        }
        Err(Refused::Full(envelope)) => (*envelope, DropReason::QueueFull),
        Err(Refused::Closed(envelope)) => (*envelope, DropReason::Shutdown),
        Err(Refused::Failed(envelope)) => {
            admission.metrics.record_dequeued();
            return answer(admission, *envelope, crate::pipeline::worker::failed_verdict());
        }
    };
    admission.metrics.record_dequeued();
    tracing::debug!(pipeline = admission.pipeline, reason = reason.as_str(), "message dropped at admission");
    answer(admission, envelope, Verdict::Dropped(reason));
}

/// Who a refused query's answer is about.
struct Refusal<'a> {
    id: &'a str,
    key: &'a str,
    pipeline: &'a str,
    daemon: &'a str,
}

/// Answers a query the pipeline did not accept with a reply error (`dropped`, `reason`), from zenoh's callback.
fn refuse_query(reply: Reply, refusal: Refusal<'_>, reason: DropReason, encoding: WireEncoding) {
    let Refusal { id, key, pipeline, daemon } = refusal;
    let result = zinfer_proto::Result {
        id: id.to_owned(),
        key: key.to_owned(),
        pipeline: pipeline.to_owned(),
        outcome: zinfer_proto::outcome::DROPPED.to_owned(),
        reason: reason.as_str().to_owned(),
        message: reason.message().to_owned(),
        daemon: daemon.to_owned(),
        ..Default::default()
    };
    let (bytes, encoding) = encode(&result, encoding);
    if let Err(error) = reply.send_now(false, bytes, encoding, id) {
        tracing::warn!(%pipeline, %id, %error, "answering a refused query failed");
    }
}

/// Answers an accepted message that will not be decoded, with the id its sender gave it wherever it can be found.
fn answer(admission: &Admission, envelope: Envelope, verdict: Verdict) {
    let id = envelope.sender_id(admission.decoder.as_ref());
    send(admission, Outcome::undecoded(admission.pipeline, envelope, id, verdict, 0));
}

/// Hands an accepted message's outcome to the egress.
fn send(admission: &Admission, outcome: Outcome) {
    if admission.outcomes.send(outcome).is_err() {
        tracing::error!(pipeline = admission.pipeline, "the publisher is gone; an accepted message gets no outcome");
    }
}

#[cfg(test)]
mod tests {
    use super::non_wild_prefix;

    #[test]
    fn the_non_wild_prefix_is_what_zenoh_declares_for_a_subscriber() {
        // zenoh's own examples for `keyexpr::get_nonwild_prefix`.
        let cases = [
            ("demo/example/**", Some("demo/example")),
            ("demo/**/test/**", Some("demo")),
            ("demo/example/test", Some("demo/example/test")),
            ("demo/ex$*/**", Some("demo")),
            ("**", None),
            ("dem$*", None),
        ];
        for (input, prefix) in cases {
            assert_eq!(non_wild_prefix(input), prefix, "{input}");
        }
    }
}
