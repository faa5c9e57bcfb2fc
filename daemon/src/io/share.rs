//! Work shared across daemons: several zinferd serving the same pipeline split its input, each message to one.
//!
//! Built on zenoh's own means, with no coordinator and no message between daemons:
//!
//! - **Membership** is liveliness. Each daemon that shares pipeline `P` holds the token
//!   `<telemetry prefix>/share/P/<zenoh id>` and follows the others' with a liveliness subscriber (with history, so
//!   a daemon that joins sees the members already there). A daemon that stops withdraws its token; one that dies
//!   loses it when zenoh notices its session is gone (at once when its TCP connections close, as on SIGKILL; within
//!   the zenoh lease, 10 s by default, when a board loses power or network).
//! - **Assignment** is rendezvous hashing: every daemon still receives every message on the input, weighs each
//!   member by a hash of (member, message), and admits the message only if it weighs the most itself. Daemons that
//!   see the same members agree, so each message is admitted by exactly one. A member that leaves moves only its own
//!   share to the others, and one that joins takes a share from each, without any restart.
//! - **What is hashed** is the pipeline's `share` mode: `key` hashes the sample's key, so every frame of a sensor
//!   stream goes to one daemon, where its window state lives (publish each stream on its own key); `message` hashes
//!   the key, payload and attachment, which spreads even a single key's stateless messages (texts) over all
//!   members. Neither depends on anything one daemon sees differently from another (a timestamp could: a sample
//!   published without one is stamped by each receiving session on its own).
//!
//! While members disagree (a join or leave still propagating, typically milliseconds on a LAN), a message can be
//! admitted by two daemons or by none; messages a daemon holds when it dies get no outcome. The counters say how
//! many: see `docs/fleet.md`, which also measures these windows.

use std::sync::{Arc, RwLock};

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};
use zenoh::bytes::ZBytes;
use zenoh::sample::SampleKind;

use crate::config::ShareMode;

/// One daemon's view of who shares a pipeline, and the decision it takes per message.
pub struct Share {
    mode: ShareMode,
    own: u64,
    members: Arc<RwLock<Vec<u64>>>,
    /// `None` once this daemon has left (it then still decides by the members it saw, itself included).
    token: Option<zenoh::liveliness::LivelinessToken>,
    _subscriber: zenoh::pubsub::Subscriber<()>,
}

/// The membership key of pipeline `pipeline` under `prefix`, for the member `zid` (or `*` for all).
pub fn member_key(prefix: &str, pipeline: &str, zid: &str) -> String {
    format!("{}/share/{pipeline}/{zid}", prefix.trim_end_matches('/'))
}

impl Share {
    /// Joins the members sharing `pipeline` under `prefix` (declares this daemon's token and follows the others').
    pub async fn join(
        session: &zenoh::Session,
        prefix: &str,
        pipeline: &str,
        mode: ShareMode,
    ) -> Result<Self, crate::Error> {
        let zid = session.zid().to_string();
        let own = seed(&zid);
        let members = Arc::new(RwLock::new(vec![own]));
        let followed = Arc::clone(&members);
        let subscriber = session
            .liveliness()
            .declare_subscriber(member_key(prefix, pipeline, "*"))
            .history(true)
            .callback(move |sample| {
                let Some(member) = sample.key_expr().as_str().rsplit('/').next().map(seed) else { return };
                let mut members = followed.write().unwrap_or_else(|poisoned| poisoned.into_inner());
                match sample.kind() {
                    SampleKind::Put if !members.contains(&member) => members.push(member),
                    SampleKind::Delete if member != own => members.retain(|known| *known != member),
                    _ => {}
                }
                tracing::info!(
                    members = members.len(),
                    joined = sample.kind() == SampleKind::Put,
                    "share membership changed"
                );
            })
            .await
            .map_err(|error| crate::Error::Zenoh(format!("cannot follow the members sharing `{pipeline}`: {error}")))?;
        let token =
            session.liveliness().declare_token(member_key(prefix, pipeline, &zid)).await.map_err(|error| {
                crate::Error::Zenoh(format!("cannot join the members sharing `{pipeline}`: {error}"))
            })?;
        Ok(Self { mode, own, members, token: Some(token), _subscriber: subscriber })
    }

    /// Hands over this daemon's membership token, for the caller to withdraw, so that the others take its share;
    /// until it stops admitting, it goes on taking its own share as before (a message in between is taken twice
    /// rather than by no one). `None` if it left already.
    pub fn leave(&mut self) -> Option<zenoh::liveliness::LivelinessToken> {
        self.token.take()
    }

    /// Whether this daemon takes the message on `key` with `payload` and `attachment`.
    pub fn owns(&self, key: &str, payload: &ZBytes, attachment: Option<&ZBytes>) -> bool {
        let item = match self.mode {
            // `join` is not called without sharing; hashing by key is the safe reading of it.
            ShareMode::Key | ShareMode::None => xxh3_64(key.as_bytes()),
            ShareMode::Message => {
                let mut hasher = xxhash_rust::xxh3::Xxh3::new();
                hasher.update(key.as_bytes());
                for slice in payload.slices() {
                    hasher.update(slice);
                }
                if let Some(attachment) = attachment {
                    for slice in attachment.slices() {
                        hasher.update(slice);
                    }
                }
                hasher.digest()
            }
        };
        let members = self.members.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        owner(&members, item).is_none_or(|owner| owner == self.own)
    }

    /// How many members this daemon sees, itself included.
    pub fn members(&self) -> usize {
        self.members.read().unwrap_or_else(|poisoned| poisoned.into_inner()).len()
    }
}

/// A member's seed: the hash of its zenoh id.
fn seed(zid: &str) -> u64 {
    xxh3_64(zid.as_bytes())
}

/// The member that weighs the most for `item` (ties, which need a 64-bit collision, go to the larger seed).
fn owner(members: &[u64], item: u64) -> Option<u64> {
    members.iter().copied().max_by_key(|member| (xxh3_64_with_seed(&item.to_le_bytes(), *member), *member))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_has_one_owner_and_a_leaving_member_moves_only_its_own_share() {
        let members: Vec<u64> = ["a", "b", "c"].into_iter().map(seed).collect();
        let items: Vec<u64> = (0..3000u64).map(|index| xxh3_64(&index.to_le_bytes())).collect();
        let before: Vec<u64> = items.iter().map(|item| owner(&members, *item).expect("an owner")).collect();
        for member in &members {
            let share = before.iter().filter(|owner| *owner == member).count();
            assert!((800..1200).contains(&share), "about a third each: {share}");
        }
        let left = &members[..2];
        for (item, previous) in items.iter().zip(&before) {
            let now = owner(left, *item).expect("an owner");
            if *previous != members[2] {
                assert_eq!(now, *previous, "an item of a member that stays does not move");
            }
        }
    }
}
