//! Routing one PUBLISH: from the subscriptions that match to exactly one delivery per session.
//!
//! Overlapping subscriptions of one session collapse into one copy at the highest granted QoS
//! carrying every subscription identifier (allowed by v5 §3.3.4 and required by v3 §3.3.5).
//! Each shared-subscription group delivers to one member.

use std::collections::HashMap;
use std::hash::Hash;

use crate::{QoS, SubOptions};

/// One session's share of a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub qos: QoS,
    /// The retain flag as the subscriber sees it on a live (not at-subscribe) delivery.
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
}

/// Collects matches and decides who gets what.
#[derive(Debug)]
pub struct RoutePlan<S> {
    publisher: Option<S>,
    msg_qos: QoS,
    msg_retain: bool,
    deliveries: HashMap<S, Delivery>,
    groups: HashMap<String, Vec<(S, SubOptions)>>,
}

impl<S: Hash + Eq + Clone + Ord> RoutePlan<S> {
    /// `publisher` is the session that sent the message (for no-local), `None` for the system.
    pub fn new(publisher: Option<S>, msg_qos: QoS, msg_retain: bool) -> Self {
        RoutePlan { publisher, msg_qos, msg_retain, deliveries: HashMap::new(), groups: HashMap::new() }
    }

    /// A plain subscription of `session` matched.
    pub fn add(&mut self, session: &S, options: &SubOptions) {
        if options.no_local && self.publisher.as_ref() == Some(session) {
            return;
        }
        let qos = options.qos.min(self.msg_qos);
        let retain = self.msg_retain && options.retain_as_published;
        let d =
            self.deliveries.entry(session.clone()).or_insert(Delivery { qos, retain, subscription_ids: Vec::new() });
        d.qos = d.qos.max(qos);
        d.retain |= retain;
        if let Some(id) = options.subscription_id {
            d.subscription_ids.push(id);
        }
    }

    /// A shared subscription `$share/{group}/...` of `session` matched.
    pub fn add_shared(&mut self, group: &str, session: &S, options: &SubOptions) {
        self.groups.entry(group.to_owned()).or_default().push((session.clone(), options.clone()));
    }

    /// Finishes the plan. `pick(n)` chooses a member index below `n` for each shared group
    /// (round-robin or random: the caller's policy). Members are sorted first, so a given pick
    /// sequence is deterministic.
    pub fn finish(mut self, mut pick: impl FnMut(usize) -> usize) -> HashMap<S, Delivery> {
        let groups = std::mem::take(&mut self.groups);
        for (_, mut members) in groups {
            members.sort_by(|a, b| a.0.cmp(&b.0));
            let (session, options) = &members[pick(members.len()) % members.len()];
            self.add(session, options);
        }
        self.deliveries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(qos: QoS, id: Option<u32>) -> SubOptions {
        SubOptions { qos, subscription_id: id, ..SubOptions::default() }
    }

    #[test]
    fn overlapping_subscriptions_collapse_to_highest_qos() {
        let mut p = RoutePlan::new(None, QoS::ExactlyOnce, false);
        p.add(&1, &opts(QoS::AtMostOnce, Some(3)));
        p.add(&1, &opts(QoS::AtLeastOnce, Some(4)));
        p.add(&2, &opts(QoS::ExactlyOnce, None));
        let d = p.finish(|_| 0);
        assert_eq!(d[&1], Delivery { qos: QoS::AtLeastOnce, retain: false, subscription_ids: vec![3, 4] });
        assert_eq!(d[&2].qos, QoS::ExactlyOnce);
    }

    #[test]
    fn qos_is_capped_by_the_message() {
        let mut p = RoutePlan::new(None, QoS::AtMostOnce, false);
        p.add(&1, &opts(QoS::ExactlyOnce, None));
        assert_eq!(p.finish(|_| 0)[&1].qos, QoS::AtMostOnce);
    }

    #[test]
    fn no_local_and_retain_as_published() {
        let mut p = RoutePlan::new(Some(1), QoS::AtLeastOnce, true);
        p.add(&1, &SubOptions { no_local: true, ..opts(QoS::AtLeastOnce, None) });
        p.add(&2, &SubOptions { retain_as_published: true, ..opts(QoS::AtLeastOnce, None) });
        p.add(&3, &opts(QoS::AtLeastOnce, None));
        let d = p.finish(|_| 0);
        assert!(!d.contains_key(&1));
        assert!(d[&2].retain);
        assert!(!d[&3].retain);
    }

    #[test]
    fn a_shared_group_delivers_to_one_member() {
        let mut p = RoutePlan::new(None, QoS::AtLeastOnce, false);
        for s in [5, 6, 7] {
            p.add_shared("g", &s, &opts(QoS::AtLeastOnce, None));
        }
        p.add_shared("h", &5, &opts(QoS::AtMostOnce, None));
        let d = p.finish(|n| n - 1);
        let mut keys: Vec<_> = d.keys().copied().collect();
        keys.sort();
        assert_eq!(keys, vec![5, 7]);
    }
}
