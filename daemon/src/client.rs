//! A tiny zenoh client for `zinferd send` and the benchmarks: publish one request, wait for its result.
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
}

/// A connected client.
pub struct Client {
    session: zenoh::Session,
}

/// A request on its way.
pub struct Pending {
    id: String,
    results: zenoh::pubsub::Subscriber<FifoChannelHandler<Sample>>,
}

impl Client {
    /// Connects to `endpoint` (e.g. `tcp/127.0.0.1:7447`).
    pub async fn connect(endpoint: &str) -> Result<Self, ClientError> {
        let mut config = zenoh::Config::default();
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
        let (payload, encoding) = match format {
            RequestFormat::Text => (text.as_bytes().to_vec(), Encoding::TEXT_PLAIN),
            RequestFormat::Json => {
                let body = serde_json::json!({ "id": id, "text": text });
                (body.to_string().into_bytes(), Encoding::APPLICATION_JSON)
            }
            RequestFormat::Protobuf => {
                let body = proto::TextRequest { id: id.to_owned(), text: text.to_owned(), ..Default::default() };
                (body.encode_to_vec(), Encoding::APPLICATION_PROTOBUF)
            }
        };
        self.request_raw(key, output_prefix, id, payload, encoding).await
    }

    /// Publishes arbitrary bytes on `key` with `encoding`, `id` as the attachment.
    pub async fn request_raw(
        &self,
        key: &str,
        output_prefix: &str,
        id: &str,
        payload: Vec<u8>,
        encoding: Encoding,
    ) -> Result<Pending, ClientError> {
        let results = self
            .session
            .declare_subscriber(keys::result(output_prefix, key))
            .await
            .map_err(|error| ClientError::Zenoh(error.to_string()))?;
        self.session
            .put(key.to_owned(), payload)
            .encoding(encoding)
            .attachment(id.as_bytes().to_vec())
            .congestion_control(CongestionControl::Block)
            .await
            .map_err(|error| ClientError::Zenoh(error.to_string()))?;
        Ok(Pending { id: id.to_owned(), results })
    }

    /// Closes the session.
    pub async fn close(self) {
        let _ = self.session.close().await;
    }
}

impl Pending {
    /// Waits for the result with this request's id, up to `timeout`.
    pub async fn result(self, timeout: Duration) -> Result<proto::Result, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let sample = tokio::time::timeout_at(deadline, self.results.recv_async())
                .await
                .map_err(|_| ClientError::Timeout(self.id.clone()))?
                .map_err(|error| ClientError::Zenoh(error.to_string()))?;
            let result = decode_result(&sample)?;
            if result.id == self.id {
                return Ok(result);
            }
        }
    }
}

/// Decodes a result sample by its encoding (JSON or protobuf).
pub fn decode_result(sample: &Sample) -> Result<proto::Result, ClientError> {
    let bytes = sample.payload().to_bytes();
    if *sample.encoding() == Encoding::APPLICATION_PROTOBUF {
        proto::Result::decode(bytes.as_ref()).map_err(|error| ClientError::Decode(error.to_string()))
    } else {
        serde_json::from_slice(&bytes).map_err(|error| ClientError::Decode(error.to_string()))
    }
}
