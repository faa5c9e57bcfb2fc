//! What a sharing daemon keeps of the messages it leaves to another member, until that member answers them.
//!
//! Every member receives every message of a shared input anyway (see the parent module), so each can follow what
//! the others owe: for a message another member takes, it keeps the id that member's outcome will carry (the
//! sender's, found as the owner finds it) and strikes it when it sees that outcome among the pipeline's results
//! (their attachment carries the id, so nothing is decoded). A member whose session ends answers nothing more.
//! Its session ends at once when its process dies (its connections close), one zenoh lease later when its board
//! hangs or drops off the network, and only after its drain when it stops cleanly (the member's token,
//! [`zinfer_proto::keys::member`], is held until then). After a short grace for its last results still on their
//! way, what it still owes is answered `dropped` (`member_lost`) by the survivor that owns each message now (the
//! same rendezvous hashing), so the sender gets an outcome with its id and telemetry counts it.
//!
//! What is kept is bounded: at most `max_in_flight` per other member (a member never owes more), each for at most
//! [`HORIZON`]; what is let go (and messages with no id to follow) is counted as `share_unwatched`: such a
//! message, if its member dies, is lost without a notice.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a message another member took is followed: one it has not answered by then (it refused it at the door,
/// or its result was lost on the way) is let go.
pub const HORIZON: Duration = Duration::from_secs(60);

/// A message another member took and has not answered yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The id its outcome will carry.
    pub id: String,
    /// The key it arrived on.
    pub key: String,
    /// The member that took it (its seed).
    pub owner: u64,
    /// What the assignment hashed for it (see [`super::Share::decide`]).
    pub item: u64,
    /// When it arrived here.
    pub since: Instant,
}

/// The messages other members owe, in arrival order.
#[derive(Debug, Default)]
pub struct Watch {
    records: Mutex<Records>,
}

#[derive(Debug, Default)]
struct Records {
    /// Arrival number of each followed id.
    by_id: HashMap<String, u64>,
    in_order: BTreeMap<u64, Record>,
    next: u64,
}

impl Watch {
    /// Follows `record` until its owner answers it. Lets go of the oldest beyond `capacity` and of those older than
    /// [`HORIZON`], and of an earlier record with the same id (the two outcomes could not be told apart); returns
    /// how many it let go.
    pub fn follow(&self, record: Record, capacity: usize) -> u64 {
        let mut records = lock(&self.records);
        let records = &mut *records;
        let mut let_go = 0;
        let number = records.next;
        records.next += 1;
        let since = record.since;
        if let Some(earlier) = records.by_id.insert(record.id.clone(), number) {
            records.in_order.remove(&earlier);
            let_go += 1;
        }
        records.in_order.insert(number, record);
        loop {
            let full = records.in_order.len() > capacity;
            let Some(oldest) = records.in_order.first_entry() else { break };
            if !full && since.saturating_duration_since(oldest.get().since) <= HORIZON {
                break;
            }
            let oldest = oldest.remove();
            records.by_id.remove(&oldest.id);
            let_go += 1;
        }
        let_go
    }

    /// The outcome for `id` was seen: it is no longer owed.
    pub fn answered(&self, id: &str) {
        let mut records = lock(&self.records);
        if let Some(number) = records.by_id.remove(id) {
            records.in_order.remove(&number);
        }
    }

    /// Takes every record that `owner` owes, in arrival order.
    pub fn owed_by(&self, owner: u64) -> Vec<Record> {
        let mut records = lock(&self.records);
        let records = &mut *records;
        let owed: Vec<Record> =
            records.in_order.extract_if(.., |_, record| record.owner == owner).map(|(_, record)| record).collect();
        for record in &owed {
            records.by_id.remove(&record.id);
        }
        owed
    }

    /// How many messages are followed.
    pub fn followed(&self) -> usize {
        lock(&self.records).in_order.len()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, owner: u64, since: Instant) -> Record {
        Record { id: id.to_owned(), key: format!("in/{id}"), owner, item: 0, since }
    }

    #[test]
    fn an_answered_message_is_no_longer_owed_and_the_rest_go_to_their_owner_in_order() {
        let watch = Watch::default();
        let now = Instant::now();
        for (index, owner) in [1, 2, 1, 1].into_iter().enumerate() {
            assert_eq!(watch.follow(record(&format!("m{index}"), owner, now), 10), 0);
        }
        watch.answered("m2");
        watch.answered("unknown");
        let owed: Vec<String> = watch.owed_by(1).into_iter().map(|record| record.id).collect();
        assert_eq!(owed, ["m0", "m3"]);
        assert!(watch.owed_by(1).is_empty(), "taken once");
        assert_eq!(watch.followed(), 1, "member 2's message stays");
    }

    #[test]
    fn what_is_followed_stays_within_capacity_and_horizon_and_a_reused_id_replaces_the_earlier() {
        let watch = Watch::default();
        let start = Instant::now();
        let let_go: u64 = (0..5).map(|index| watch.follow(record(&format!("m{index}"), 1, start), 3)).sum();
        assert_eq!((let_go, watch.followed()), (2, 3));
        assert_eq!(watch.follow(record("m4", 2, start), 3), 1, "the same id again: the earlier is let go");
        assert_eq!(watch.followed(), 3);
        let later = start + HORIZON + Duration::from_secs(1);
        assert_eq!(watch.follow(record("late", 1, later), 3), 3, "all the others are past the horizon");
        let owed: Vec<String> = watch.owed_by(1).into_iter().map(|record| record.id).collect();
        assert_eq!(owed, ["late"]);
        assert!(watch.owed_by(2).is_empty());
    }
}
