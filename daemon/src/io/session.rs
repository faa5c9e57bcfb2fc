//! Opening the zenoh session from `[zenoh]`.

use crate::config::{ZenohConfig, ZenohMode};

/// zinferd's default listen endpoint: loopback only, so a fresh install exposes nothing to the network.
pub const DEFAULT_LISTEN: &str = "tcp/127.0.0.1:7447";

/// Builds the native zenoh config; on error returns the `[zenoh]` key at fault and the reason.
pub fn zenoh_config(config: &ZenohConfig) -> Result<zenoh::Config, (String, String)> {
    let (mut native, defaults) = match &config.config_file {
        Some(file) => (zenoh::Config::from_file(file).map_err(fail("config_file"))?, false),
        None => (zenoh::Config::default(), true),
    };
    let mode = config.mode.or(defaults.then_some(ZenohMode::Peer));
    if let Some(mode) = mode {
        native.insert_json5("mode", &json(&mode.as_str())).map_err(fail("mode"))?;
    }
    // The default listen endpoint is a peer's: a client reaches its router and listens on nothing unless told to, so
    // that it can run beside a local zenohd that holds the default port.
    let peer = mode != Some(ZenohMode::Client);
    let listen = config.listen.clone().or((defaults && peer).then(|| vec![DEFAULT_LISTEN.to_owned()]));
    if let Some(listen) = listen {
        native.insert_json5("listen/endpoints", &json(&listen)).map_err(fail("listen"))?;
    }
    if let Some(connect) = &config.connect {
        native.insert_json5("connect/endpoints", &json(connect)).map_err(fail("connect"))?;
    }
    if let Some(enabled) = config.multicast_scouting.or(defaults.then_some(false)) {
        native.insert_json5("scouting/multicast/enabled", &json(&enabled)).map_err(fail("multicast_scouting"))?;
    }
    // Every sample then carries a timestamp (its publisher's, else one added on arrival): a reload that replaces a
    // subscription tells two deliveries of one sample apart from two samples by it (see `ingress::Overlap`).
    native.insert_json5("timestamping/enabled", "true").map_err(fail("config_file"))?;
    Ok(native)
}

fn fail(key: &'static str) -> impl Fn(zenoh::Error) -> (String, String) {
    move |error| (key.to_owned(), error.to_string())
}

fn json<T: serde::Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// Opens the session.
pub async fn open(config: &ZenohConfig) -> Result<zenoh::Session, crate::Error> {
    let native = zenoh_config(config)
        .map_err(|(key, reason)| crate::Error::Zenoh(format!("invalid [zenoh] key `{key}`: {reason}")))?;
    zenoh::open(native).await.map_err(|error| crate::Error::Zenoh(format!("cannot open the zenoh session: {error}")))
}
