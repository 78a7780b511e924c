//! `bench acl`: the edge's ACL decisions for a token user with many friends, in this process
//! (no broker involved): PUBLISH checks to a friend's inbox, SUBSCRIBE checks to a friend's
//! presence (a `%F` rule), the auto-subscriptions a CONNECT expands, and for comparison what
//! expanding the `%F` rule into one filter per friend costs (how every check worked before).

use std::sync::Arc;
use std::time::Instant;

use broker::acl::{self, Lists, Subject};
use broker::relations::{MemoryRelations, RelationStore};
use mqtt_edge::auth::Identity;
use mqtt_edge::authz::Authorizer;
use serde_json::{Value, json};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Mutual friends of the user.
    #[arg(long, default_value_t = 500)]
    friends: usize,
    /// Checks of each kind.
    #[arg(long, default_value_t = 100_000)]
    checks: usize,
}

pub fn run(args: Args) -> Result<Value, String> {
    let relations = Arc::new(MemoryRelations::default());
    let friends: Vec<String> = (0..args.friends).map(|i| format!("friend{i:05}")).collect();
    for f in &friends {
        relations.set_follow("acme", "alice", f, true);
        relations.set_follow("acme", f, "alice", true);
    }
    let authz = Authorizer::from_config(&mqtt_edge::config::AuthConfig::default(), relations.clone())?;
    let alice = Identity {
        username: "alice".into(),
        enterprise: "acme".into(),
        user_id: "u-alice".into(),
        via_token: true,
        ..Identity::default()
    };
    let n = args.checks.max(1);
    let nth = |i: usize| &friends[i % friends.len().max(1)];
    let rate = |started: Instant, allowed: usize| {
        let secs = started.elapsed().as_secs_f64();
        json!({"checks_per_sec": (n as f64 / secs).round(), "us_per_check": (secs * 1e6 / n as f64 * 100.0).round() / 100.0, "allowed": allowed})
    };
    let started = Instant::now();
    let allowed = (0..n).filter(|&i| authz.can_publish(&alice, "phone", &format!("acme/im/msg/{}", nth(i)))).count();
    let publish = rate(started, allowed);
    let started = Instant::now();
    let allowed = (0..n).filter(|&i| authz.can_subscribe(&alice, "phone", &format!("acme/im/pres/{}", nth(i)))).count();
    let subscribe = rate(started, allowed);
    let connects = (n / 100).max(1);
    let started = Instant::now();
    let mut subscriptions = 0;
    for _ in 0..connects {
        subscriptions = authz.auto_subscriptions(&alice, "phone").len();
    }
    let per_connect_us = started.elapsed().as_secs_f64() * 1e6 / connects as f64;
    // The old way: one filter per friend for the `%F` rule, at every check.
    let lists = Lists { friends: relations.friends("acme", "alice"), ..Lists::default() };
    let who = Subject { username: "alice", client_id: "phone", enterprise: "acme", sets: &lists };
    let expansions = (n / 10).max(1);
    let started = Instant::now();
    let mut filters = 0;
    for _ in 0..expansions {
        filters = acl::expand("%e/im/pres/%F", &who).len();
    }
    let expand_us = started.elapsed().as_secs_f64() * 1e6 / expansions as f64;
    Ok(json!({
        "scenario": "acl",
        "friends": args.friends,
        "publish_to_a_friends_inbox": publish,
        "subscribe_to_a_friends_presence": subscribe,
        "connect_auto_subscriptions": {"subscriptions": subscriptions, "us_per_connect": (per_connect_us * 100.0).round() / 100.0},
        "expanding_the_friends_rule_once": {"filters": filters, "us": (expand_us * 100.0).round() / 100.0},
    }))
}
