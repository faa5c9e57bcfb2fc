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
//! admitted by two daemons or by none; `docs/fleet.md` measures these windows. The messages a daemon took and
//! still owed when it died are answered by a survivor (`dropped`, `member_lost`): see [`watch`].

pub mod watch;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};
use zenoh::bytes::ZBytes;
use zenoh::sample::{Locality, SampleKind};
use zinfer_proto::keys;

use crate::config::ShareMode;
use watch::{Record, Watch};

/// How long after a member's session ended its last results may still be on their way (they travel through the
/// router beside the end of its session, not necessarily in the same queue); what it owes after that is lost.
const DEPARTURE_GRACE: Duration = Duration::from_millis(250);

/// A shared pipeline, as its members name it on the network.
pub struct Sharing<'a> {
    /// The telemetry prefix, under which the members announce themselves.
    pub prefix: &'a str,
    /// The pipeline's name.
    pub pipeline: &'a str,
    /// What is hashed to assign a message.
    pub mode: ShareMode,
    /// The key expression of the pipeline's results (`<output_prefix>/<input>`), where the members' outcomes are
    /// followed.
    pub results: String,
}

/// Answers the messages a member that died still owed and that this daemon owns now.
pub type AnswerLost = Arc<dyn Fn(Vec<Record>) + Send + Sync>;

/// Which member takes a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// This daemon.
    Own,
    /// Another member.
    Elsewhere {
        /// Its seed.
        owner: u64,
        /// What was hashed for the message, to find its next owner should this one end.
        item: u64,
    },
}

/// One daemon's view of who shares a pipeline, and the decision it takes per message.
pub struct Share {
    mode: ShareMode,
    own: u64,
    members: Arc<RwLock<Vec<u64>>>,
    /// `None` once this daemon has left (it then still decides by the members it saw, itself included).
    token: Option<zenoh::liveliness::LivelinessToken>,
    _members: zenoh::pubsub::Subscriber<()>,
    /// What the other members owe, struck as their results arrive, answered by a survivor if they die first.
    watch: Arc<Watch>,
    _results: zenoh::pubsub::Subscriber<()>,
    _departures: zenoh::pubsub::Subscriber<()>,
}

/// The membership key of pipeline `pipeline` under `prefix`, for the member `zid` (or `*` for all).
pub fn member_key(prefix: &str, pipeline: &str, zid: &str) -> String {
    format!("{}/share/{pipeline}/{zid}", prefix.trim_end_matches('/'))
}

impl Share {
    /// Joins the members sharing a pipeline (declares this daemon's token and follows the others'), follows what
    /// they owe, and hands what a member that dies still owed this daemon to `answer_lost`. Call it from within
    /// the tokio runtime.
    pub async fn join(
        session: &zenoh::Session,
        sharing: &Sharing<'_>,
        answer_lost: AnswerLost,
    ) -> Result<Self, crate::Error> {
        let Sharing { prefix, pipeline, mode, .. } = *sharing;
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
        let watch = Arc::new(Watch::default());
        let results = follow_results(session, sharing, Arc::clone(&watch)).await?;
        let departures =
            follow_departures(session, sharing, own, (Arc::clone(&watch), Arc::clone(&members)), answer_lost).await?;
        let token =
            session.liveliness().declare_token(member_key(prefix, pipeline, &zid)).await.map_err(|error| {
                crate::Error::Zenoh(format!("cannot join the members sharing `{pipeline}`: {error}"))
            })?;
        Ok(Self {
            mode,
            own,
            members,
            token: Some(token),
            _members: subscriber,
            watch,
            _results: results,
            _departures: departures,
        })
    }

    /// Hands over this daemon's membership token, for the caller to withdraw, so that the others take its share;
    /// until it stops admitting, it goes on taking its own share as before (a message in between is taken twice
    /// rather than by no one). `None` if it left already.
    pub fn leave(&mut self) -> Option<zenoh::liveliness::LivelinessToken> {
        self.token.take()
    }

    /// Which member takes the message on `key` with `payload` and `attachment`.
    pub fn decide(&self, key: &str, payload: &ZBytes, attachment: Option<&ZBytes>) -> Decision {
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
        match owner(&members, item) {
            Some(owner) if owner != self.own => Decision::Elsewhere { owner, item },
            _ => Decision::Own,
        }
    }

    /// Follows a message another member took until it answers it, keeping at most `per_member` for each other
    /// member; returns how many followed messages it let go (see [`Watch::follow`]).
    pub fn follow(&self, record: Record, per_member: usize) -> u64 {
        let others = self.members().saturating_sub(1).max(1);
        self.watch.follow(record, per_member.saturating_mul(others))
    }

    /// How many members this daemon sees, itself included.
    pub fn members(&self) -> usize {
        self.members.read().unwrap_or_else(|poisoned| poisoned.into_inner()).len()
    }
}

/// Strikes every outcome a member publishes on the pipeline's results (its id is the sample's attachment) from
/// `watch`; this daemon's own are not followed.
async fn follow_results(
    session: &zenoh::Session,
    sharing: &Sharing<'_>,
    watch: Arc<Watch>,
) -> Result<zenoh::pubsub::Subscriber<()>, crate::Error> {
    session
        .declare_subscriber(sharing.results.clone())
        .allowed_origin(Locality::Remote)
        .callback(move |sample| {
            let Some(attachment) = sample.attachment().filter(|_| sample.kind() == SampleKind::Put) else { return };
            // One slice in practice: borrowed, not copied.
            let id = attachment.to_bytes();
            if let Ok(id) = std::str::from_utf8(&id) {
                watch.answered(id);
            }
        })
        .await
        .map_err(|error| {
            crate::Error::Zenoh(format!(
                "cannot follow the results of `{}` on `{}`: {error}",
                sharing.pipeline, sharing.results
            ))
        })
}

/// Follows the end of every daemon's session under the prefix ([`keys::session`]); when one ends, after
/// [`DEPARTURE_GRACE`], hands what it still owed and this daemon now owns to `answer_lost`, and forgets the rest
/// (the survivor that owns it answers it).
async fn follow_departures(
    session: &zenoh::Session,
    sharing: &Sharing<'_>,
    own: u64,
    (watch, members): (Arc<Watch>, Arc<RwLock<Vec<u64>>>),
    answer_lost: AnswerLost,
) -> Result<zenoh::pubsub::Subscriber<()>, crate::Error> {
    let runtime = tokio::runtime::Handle::current();
    let pipeline = sharing.pipeline.to_owned();
    session
        .liveliness()
        .declare_subscriber(keys::session(sharing.prefix, "*"))
        .callback(move |sample| {
            let gone = sample.key_expr().as_str().rsplit('/').next().map(seed);
            let Some(gone) = gone.filter(|gone| sample.kind() == SampleKind::Delete && *gone != own) else { return };
            let (watch, members, answer_lost, pipeline) =
                (Arc::clone(&watch), Arc::clone(&members), Arc::clone(&answer_lost), pipeline.clone());
            runtime.spawn(async move {
                tokio::time::sleep(DEPARTURE_GRACE).await;
                let owed = watch.owed_by(gone);
                if owed.is_empty() {
                    return;
                }
                // Its share token went with its session; should that news still be on its way, it is no owner now.
                let members = {
                    let mut members = members.write().unwrap_or_else(|poisoned| poisoned.into_inner());
                    members.retain(|member| *member != gone);
                    members.clone()
                };
                let owed_total = owed.len();
                let mine: Vec<Record> =
                    owed.into_iter().filter(|record| owner(&members, record.item) == Some(own)).collect();
                tracing::warn!(
                    %pipeline,
                    owed = owed_total,
                    answered_here = mine.len(),
                    "a member sharing the pipeline ended without answering messages it took; they are answered \
                     dropped (member_lost)"
                );
                if !mine.is_empty() {
                    answer_lost(mine);
                }
            });
        })
        .await
        .map_err(|error| {
            crate::Error::Zenoh(format!("cannot follow the daemons sharing `{}`: {error}", sharing.pipeline))
        })
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
