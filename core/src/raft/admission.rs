//! Raft messages from peers that raft-rs must not see.
//!
//! raft-rs trusts its peers: a few messages that no correct peer sends stop
//! it with a panic (a proposal without entries, a heartbeat committing past
//! the end of the log, an append whose entries are not consecutive or that
//! builds on term 0 past the log, a read request without its context or
//! with a term, a snapshot of term 0 or whose configuration raft-rs cannot
//! restore as it is). A peer's bug, or a peer holding a cluster certificate it
//! should not, must not take a node down: such messages are dropped before
//! [`raft::RawNode::step`], and the drop is logged.

use std::collections::BTreeSet;

use raft::RawNode;
use raft::eraftpb::{ConfState, Message, MessageType};

use super::log_store::LogStore;

/// Why `message` must not reach raft-rs; `None` if it may.
pub(super) fn refusal(raw: &RawNode<LogStore>, message: &Message) -> Option<String> {
    let log = &raw.raft.raft_log;
    match message.get_msg_type() {
        // This replica answers proposals on a follower with `NotLeader`, so
        // raft-rs never forwards one: a proposal from a peer is not ours.
        MessageType::MsgPropose => Some("a proposal from a peer".into()),
        MessageType::MsgHeartbeat if message.commit > log.last_index() => Some(format!(
            "a heartbeat commits index {} past the last entry {}",
            message.commit,
            log.last_index()
        )),
        MessageType::MsgReadIndex if message.entries.len() != 1 => {
            Some(format!("a read request with {} context entries (not 1)", message.entries.len()))
        }
        // A follower passes these on to its leader, and raft-rs stops if
        // they carry a term; correct nodes send them without one.
        MessageType::MsgReadIndex | MessageType::MsgTransferLeader if message.term != 0 => {
            Some(format!("a {:?} carrying term {}", message.get_msg_type(), message.term))
        }
        MessageType::MsgAppend => append_refusal(raw, message),
        // raft-rs reads term 0 past the end of the log, and would commit up
        // to such a snapshot; every snapshot of a correct node has a term.
        MessageType::MsgSnapshot if message.get_snapshot().get_metadata().term == 0 => {
            Some("a snapshot of term 0".into())
        }
        MessageType::MsgSnapshot => {
            conf_state_refusal(message.get_snapshot().get_metadata().get_conf_state())
        }
        _ => None,
    }
}

/// An append's entries must follow its index one by one: raft-rs takes
/// an entry out of order for a conflict, and stops if that conflict lies
/// among committed entries. Nor may it build on term 0 past the end of the
/// log: raft-rs reads term 0 there, takes the append as matching, and stops
/// committing or slicing beyond the log.
fn append_refusal(raw: &RawNode<LogStore>, message: &Message) -> Option<String> {
    let last = raw.raft.raft_log.last_index();
    if message.index > last && message.log_term == 0 {
        return Some(format!(
            "an append builds on term 0 at index {}, past the last entry {last}",
            message.index
        ));
    }
    for (offset, entry) in (0u64..).zip(&message.entries) {
        if message.index.checked_add(offset + 1) != Some(entry.index) {
            return Some(format!(
                "an append after index {} carries entry {} at position {offset}",
                message.index, entry.index
            ));
        }
    }
    None
}

/// A snapshot's configuration must be one raft-rs can restore as it is
/// (it stops otherwise): at least one voter, learners apart from voters,
/// and the joint-state fields only in a joint state.
fn conf_state_refusal(conf: &ConfState) -> Option<String> {
    let set = |ids: &[u64]| ids.iter().copied().collect::<BTreeSet<u64>>();
    let (voters, learners) = (set(&conf.voters), set(&conf.learners));
    let (outgoing, learners_next) = (set(&conf.voters_outgoing), set(&conf.learners_next));
    let problem = if voters.is_empty() {
        "no voter"
    } else if !learners.is_disjoint(&voters) || !learners.is_disjoint(&outgoing) {
        "a learner that is also a voter"
    } else if !learners_next.is_subset(&outgoing)
        || !learners_next.is_disjoint(&voters)
        || !learners_next.is_disjoint(&learners)
    {
        "a next learner that is not only an outgoing voter"
    } else if conf.auto_leave && outgoing.is_empty() {
        "auto-leave outside a joint configuration"
    } else {
        return None;
    };
    Some(format!("a snapshot whose configuration has {problem}: {conf:?}"))
}
