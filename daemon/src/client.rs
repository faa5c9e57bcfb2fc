//! A tiny zenoh client for `zinferd send` and the benchmarks: publish one request and wait for its result, or ask
//! a pipeline's queryable and take its reply.
//!
//! It joins as a peer that connects to the daemon's endpoint and listens nowhere, with multicast scouting off, so
//! it talks to exactly the daemon it is pointed at.

use std::time::Duration;

use zenoh::bytes::Encoding;
use zenoh::handlers::FifoChannelHandler;
use zenoh::qos::CongestionControl;
use zenoh::sample::Sample;
use zinfer_proto::{self as proto, Message, keys};

/// How to encode the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RequestFormat {
    /// The text as the payload, `text/plain`.
    Text,
    /// `{"id": ..., "text": ...}`, `application/json`.
    Json,
    /// `zinfer.v1.TextRequest`, `application/protobuf`.
    Protobuf,
}

impl RequestFormat {
    /// The payload and encoding of a text request.
    pub fn encode(self, id: &str, text: &str) -> (Vec<u8>, Encoding) {
        match self {
            Self::Text => (text.as_bytes().to_vec(), Encoding::TEXT_PLAIN),
            Self::Json => {
                let body = serde_json::json!({ "id": id, "text": text });
                (body.to_string().into_bytes(), Encoding::APPLICATION_JSON)
            }
            Self::Protobuf => {
                let body = proto::TextRequest { id: id.to_owned(), text: text.to_owned(), ..Default::default() };
                (body.encode_to_vec(), Encoding::APPLICATION_PROTOBUF)
            }
        }
    }
}

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// zenoh failed.
    #[error("zenoh: {0}")]
    Zenoh(String),
    /// Nothing subscribed to the request key in time.
    #[error("no zinferd subscribes to `{0}` (is it running, and is --connect its endpoint?)")]
    NoSubscriber(String),
    /// No result arrived in time.
    #[error("no result for request `{0}` within the timeout")]
    Timeout(String),
    /// The result could not be decoded.
    #[error("cannot decode the result: {0}")]
    Decode(String),
    /// Nothing answers queries on the key.
    #[error(
        "no zinferd answers queries on `{0}` (is it running, is --connect its endpoint, and is the key \
             <telemetry prefix>/infer/<pipeline>?)"
    )]
    NoQueryable(String),
    /// A queryable was there, but no reply came.
    #[error("no reply to request `{0}` within the timeout")]
    NoReply(String),
}

/// A connected client.
pub struct Client {
    session: zenoh::Session,
}

/// A request on its way.
pub struct Pending {
    id: String,
    results: Results,
}

/// A subscription to results, kept across requests.
pub struct Results {
    subscriber: zenoh::pubsub::Subscriber<FifoChannelHandler<Sample>>,
}

impl Client {
    /// Connects to `endpoint` (e.g. `tcp/127.0.0.1:7447`).
    pub async fn connect(endpoint: &str) -> Result<Self, ClientError> {
        Self::connect_with(endpoint, None).await
    }

    /// Connects to `endpoint` with the settings of a native zenoh config file (`zenoh_config`: TLS certificates,
    /// user and password, as a secured fabric needs); endpoint, mode and scouting are this client's own.
    pub async fn connect_with(endpoint: &str, zenoh_config: Option<&std::path::Path>) -> Result<Self, ClientError> {
        let mut config = match zenoh_config {
            Some(file) => zenoh::Config::from_file(file)
                .map_err(|error| ClientError::Zenoh(format!("{}: {error}", file.display())))?,
            None => zenoh::Config::default(),
        };
        let set = |config: &mut zenoh::Config, key: &str, value: String| {
            config.insert_json5(key, &value).map_err(|error| ClientError::Zenoh(format!("{key}: {error}")))
        };
        set(&mut config, "mode", "\"peer\"".into())?;
        set(&mut config, "connect/endpoints", format!("[\"{endpoint}\"]"))?;
        set(&mut config, "listen/endpoints", "[]".into())?;
        set(&mut config, "scouting/multicast/enabled", "false".into())?;
        let session = zenoh::open(config).await.map_err(|error| ClientError::Zenoh(error.to_string()))?;
        Ok(Self { session })
    }

    /// The underlying session.
    pub fn session(&self) -> &zenoh::Session {
        &self.session
    }

    /// Waits until something subscribes to `key`, up to `timeout`.
    pub async fn wait_for_subscriber(&self, key: &str, timeout: Duration) -> Result<(), ClientError> {
        let publisher = self
            .session
            .declare_publisher(key.to_owned())
            .await
            .map_err(|error| ClientError::Zenoh(error.to_string()))?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let matching = publisher.matching_status().await.map(|status| status.matching()).unwrap_or(false);
            if matching {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClientError::NoSubscriber(key.to_owned()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Publishes one request on `key` and returns a handle to await its result under `output_prefix`.
    pub async fn request(
        &self,
        key: &str,
        output_prefix: &str,
        id: &str,
        text: &str,
        format: RequestFormat,
    ) -> Result<Pending, ClientError> {
        let (payload, encoding) = format.encode(id, text);
        self.request_raw(key, output_prefix, id, payload, encoding).await
    }

    /// Publishes arbitrary bytes on `key` with `encoding`, `id` as the attachment, and subscribes to its result
    /// first: right for one request (`zinferd send`). A client that sends many keeps one [`Results`] instead, as a
    /// real client does: one subscriber declaration rather than one per request.
    pub async fn request_raw(
        &self,
        key: &str,
        output_prefix: &str,
        id: &str,
        payload: Vec<u8>,
        encoding: Encoding,
    ) -> Result<Pending, ClientError> {
        let results = self.results(output_prefix, key).await?;
        self.publish(key, id, payload, encoding).await?;
        Ok(Pending { id: id.to_owned(), results })
    }

    /// Subscribes to the results of the requests published on `key` (a key expression: `key/**` takes a whole
    /// stream's), for as long as the returned [`Results`] lives.
    pub async fn results(&self, output_prefix: &str, key: &str) -> Result<Results, ClientError> {
        let subscriber = self
            .session
            .declare_subscriber(keys::result(output_prefix, key))
            .await
            .map_err(|error| ClientError::Zenoh(error.to_string()))?;
        Ok(Results { subscriber })
    }

    /// Publishes one request on `key` and waits up to `timeout` for its result in `results` (a subscription to the
    /// results of `key`).
    pub async fn round_trip(
        &self,
        results: &Results,
        key: &str,
        id: &str,
        (payload, encoding): (Vec<u8>, Encoding),
        timeout: Duration,
    ) -> Result<proto::Result, ClientError> {
        self.publish(key, id, payload, encoding).await?;
        results.wait_for(id, timeout).await
    }

    /// Publishes one request: `payload` with `encoding` on `key`, `id` as the attachment.
    pub async fn publish(&self, key: &str, id: &str, payload: Vec<u8>, encoding: Encoding) -> Result<(), ClientError> {
        self.session
            .put(key.to_owned(), payload)
            .encoding(encoding)
            .attachment(id.as_bytes().to_vec())
            .congestion_control(CongestionControl::Block)
            .await
            .map_err(|error| ClientError::Zenoh(error.to_string()))
    }

    /// Asks the queryable on `key` (`<prefix>/infer/<pipeline>[/<source>]`) with one request, and returns its
    /// reply's result: the result itself when it succeeded, else the result that the reply error carries (outcome
    /// `dropped`, `expired` or `error`, with its reason). `timeout` is the query's timeout and, sent as the
    /// `deadline_ms` parameter, its deadline at the daemon. Waits up to `timeout` for a queryable to appear first.
    pub async fn query(
        &self,
        key: &str,
        id: &str,
        (payload, encoding): (Vec<u8>, Encoding),
        timeout: Duration,
    ) -> Result<proto::Result, ClientError> {
        let zenoh_error = |error: zenoh::Error| ClientError::Zenoh(error.to_string());
        let querier = self.session.declare_querier(key.to_owned()).timeout(timeout).await.map_err(zenoh_error)?;
        let deadline = tokio::time::Instant::now() + timeout;
        while !querier.matching_status().await.map(|status| status.matching()).unwrap_or(false) {
            if tokio::time::Instant::now() >= deadline {
                return Err(ClientError::NoQueryable(key.to_owned()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let replies = querier
            .get()
            .parameters(format!("{}={}", keys::DEADLINE_PARAMETER, timeout.as_millis()))
            .payload(payload)
            .encoding(encoding)
            .attachment(id.as_bytes().to_vec())
            .await
            .map_err(zenoh_error)?;
        let reply = replies.recv_async().await.map_err(|_| ClientError::NoReply(id.to_owned()))?;
        match reply.into_result() {
            Ok(sample) => decode_result(&sample),
            Err(error) => decode(error.payload().to_bytes().as_ref(), error.encoding()),
        }
    }

    /// Closes the session.
    pub async fn close(self) {
        let _ = self.session.close().await;
    }
}

impl Pending {
    /// Waits for the result with this request's id, up to `timeout`.
    pub async fn result(self, timeout: Duration) -> Result<proto::Result, ClientError> {
        self.results.wait_for(&self.id, timeout).await
    }
}

impl Results {
    /// Waits for the result with id `id`, up to `timeout`, and passes over any other.
    pub async fn wait_for(&self, id: &str, timeout: Duration) -> Result<proto::Result, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let result = self.next_until(deadline, id).await?;
            if result.id == id {
                return Ok(result);
            }
        }
    }

    /// Waits for the next result, whatever its id, up to `timeout`.
    pub async fn next(&self, timeout: Duration) -> Result<proto::Result, ClientError> {
        self.next_until(tokio::time::Instant::now() + timeout, "any result").await
    }

    /// The next result; a timeout names `awaited`.
    async fn next_until(&self, deadline: tokio::time::Instant, awaited: &str) -> Result<proto::Result, ClientError> {
        let sample = tokio::time::timeout_at(deadline, self.subscriber.recv_async())
            .await
            .map_err(|_| ClientError::Timeout(awaited.to_owned()))?
            .map_err(|error| ClientError::Zenoh(error.to_string()))?;
        decode_result(&sample)
    }
}

/// Decodes a result sample by its encoding (JSON or protobuf).
pub fn decode_result(sample: &Sample) -> Result<proto::Result, ClientError> {
    decode(sample.payload().to_bytes().as_ref(), sample.encoding())
}

fn decode(bytes: &[u8], encoding: &Encoding) -> Result<proto::Result, ClientError> {
    if *encoding == Encoding::APPLICATION_PROTOBUF {
        proto::Result::decode(bytes).map_err(|error| ClientError::Decode(error.to_string()))
    } else {
        serde_json::from_slice(bytes).map_err(|error| ClientError::Decode(error.to_string()))
    }
}
