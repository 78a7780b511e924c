//! Names of the edge's Prometheus metrics, in one place so dashboards and code agree.

pub const CONNECTIONS: &str = "hermes_edge_connections";
pub const CONNECTS: &str = "hermes_edge_connects_total";
pub const CONNECT_REFUSED: &str = "hermes_edge_connect_refused_total";
pub const CONNECT_DELAYED: &str = "hermes_edge_connect_delayed_total";
pub const TAKEOVERS: &str = "hermes_edge_session_takeovers_total";
pub const WILLS_REFUSED: &str = "hermes_edge_wills_refused_total";
pub const SESSIONS_EXPIRED: &str = "hermes_edge_sessions_expired_total";
pub const PACKETS_IN: &str = "hermes_edge_packets_received_total";
pub const PUBLISH_BYTES_IN: &str = "hermes_edge_publish_bytes_received_total";
pub const DELIVERIES: &str = "hermes_edge_deliveries_total";
pub const DELIVERY_FAILURES: &str = "hermes_edge_delivery_failures_total";
pub const QUEUE_DROPS: &str = "hermes_edge_queue_drops_total";
pub const QOS0_DROPS: &str = "hermes_edge_qos0_drops_total";
pub const PUBLISHERS_WAITED: &str = "hermes_edge_publishers_waited_total";
pub const SLOW_CONSUMER_DISCONNECTS: &str = "hermes_edge_slow_consumer_disconnects_total";
pub const SUBSCRIPTIONS_REVOKED: &str = "hermes_edge_subscriptions_revoked_total";
pub const PUBLISH_REFUSED: &str = "hermes_edge_publish_refused_total";
pub const CONNECTION_STOPS: &str = "hermes_edge_connection_stops_total";
pub const ACCOUNT_EVENTS: &str = "hermes_edge_account_events_total";
pub const RELATION_LOAD_FAILURES: &str = "hermes_edge_relation_load_failures_total";
pub const TOPIC_ALIAS_BYTES_SAVED: &str = "hermes_edge_topic_alias_bytes_saved_total";
pub const CLUSTER_OUT: &str = "hermes_edge_cluster_routed_out_total";
pub const CLUSTER_IN: &str = "hermes_edge_cluster_routed_in_total";
pub const CLUSTER_DUPLICATES: &str = "hermes_edge_cluster_duplicates_total";
pub const CLUSTER_DROPPED: &str = "hermes_edge_cluster_dropped_total";
pub const CLUSTER_ERRORS: &str = "hermes_edge_cluster_errors_total";
pub const CLUSTER_REPLAYED: &str = "hermes_edge_cluster_replayed_total";
pub const SESSIONS_BEHIND: &str = "hermes_edge_sessions_behind_total";
pub const BEHIND_GIVEN_UP: &str = "hermes_edge_behind_given_up_total";
pub const BEHIND_LOST: &str = "hermes_edge_behind_lost_total";
pub const ARRIVALS_UNHELD: &str = "hermes_edge_cluster_arrivals_unheld_total";
pub const ARRIVAL_PASSES: &str = "hermes_edge_cluster_arrival_passes_total";
pub const CLUSTER_GROUP_REDELIVERED: &str = "hermes_edge_cluster_group_redelivered_total";
pub const CLUSTER_GROUP_GIVEN_BACK: &str = "hermes_edge_cluster_group_given_back_total";
pub const SESSIONS_MOVED: &str = "hermes_edge_sessions_moved_total";
pub const CLUSTER_SUBJECTS: &str = "hermes_edge_cluster_subjects";
pub const JOURNAL_WRITES: &str = "hermes_edge_journal_writes_total";
pub const JOURNAL_SPARED: &str = "hermes_edge_journal_spared_total";
pub const JOURNAL_ERRORS: &str = "hermes_edge_journal_errors_total";
pub const JOURNAL_WRITE_SECONDS: &str = "hermes_edge_journal_write_seconds";
pub const STREAM_APPENDS: &str = "hermes_edge_stream_appends_total";
pub const STREAM_APPEND_FAILURES: &str = "hermes_edge_stream_append_failures_total";
pub const STREAM_APPEND_SECONDS: &str = "hermes_edge_stream_append_seconds";
pub const STREAM_REPLAYED: &str = "hermes_edge_stream_replayed_total";
pub const DEAD_LETTERS: &str = "hermes_edge_dead_letters_total";
pub const DEAD_LETTER_FAILURES: &str = "hermes_edge_dead_letter_failures_total";
pub const PRESENCE_ERRORS: &str = "hermes_edge_presence_errors_total";
pub const ROUTE_SECONDS: &str = "hermes_edge_route_seconds";
pub const ACK_SECONDS: &str = "hermes_edge_delivery_ack_seconds";

/// Registers help texts (Prometheus tooling flags metrics without them).
/// The handles of what is counted for every message, registered once: a `counter!` looks its
/// handle up in the recorder's registry each time (4 % of a persistent message's CPU,
/// BENCHMARKS.md). Taken when the hub is made, after the process installed its recorder.
#[derive(Clone)]
pub struct Hot {
    pub publishes_in: metrics::Counter,
    pub publish_bytes_in: metrics::Counter,
    pub route_seconds: metrics::Histogram,
    /// Deliveries at QoS 0, 1 and 2.
    pub deliveries: [metrics::Counter; 3],
    pub ack_seconds: metrics::Histogram,
}

impl Hot {
    pub fn register() -> Hot {
        Hot {
            publishes_in: metrics::counter!(PACKETS_IN, "type" => "publish"),
            publish_bytes_in: metrics::counter!(PUBLISH_BYTES_IN),
            route_seconds: metrics::histogram!(ROUTE_SECONDS),
            deliveries: [
                metrics::counter!(DELIVERIES, "qos" => "0"),
                metrics::counter!(DELIVERIES, "qos" => "1"),
                metrics::counter!(DELIVERIES, "qos" => "2"),
            ],
            ack_seconds: metrics::histogram!(ACK_SECONDS),
        }
    }
}

impl std::fmt::Debug for Hot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hot").finish_non_exhaustive()
    }
}

pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(CONNECTIONS, "Open MQTT connections");
    describe_counter!(CONNECTS, "Accepted CONNECT packets, by protocol version");
    describe_counter!(CONNECT_REFUSED, "Refused CONNECT packets, by reason");
    describe_counter!(CONNECT_DELAYED, "CONNECTs made to wait for failed authentication from their address");
    describe_counter!(TAKEOVERS, "Connections closed because their session's owner connected again with its client id");
    describe_counter!(WILLS_REFUSED, "Wills not sent because the ACL no longer allowed their topic when due");
    describe_counter!(SESSIONS_EXPIRED, "Persistent sessions removed after their expiry");
    describe_counter!(PACKETS_IN, "Control packets received, by type");
    describe_counter!(PUBLISH_BYTES_IN, "Payload bytes received in PUBLISH packets");
    describe_counter!(DELIVERIES, "PUBLISH packets written to subscribers, by QoS");
    describe_counter!(DELIVERY_FAILURES, "Deliveries that failed (connection gone, packet too large)");
    describe_counter!(QUEUE_DROPS, "Messages dropped from the queue of a session whose client is away, past its bound");
    describe_counter!(QOS0_DROPS, "QoS 0 deliveries dropped because the connection had too much waiting");
    describe_counter!(PUBLISHERS_WAITED, "Publishes held (no PUBACK, socket not read) until a subscriber caught up");
    describe_counter!(
        SLOW_CONSUMER_DISCONNECTS,
        "Connections closed for reading nothing while publishers waited for them"
    );
    describe_counter!(SUBSCRIPTIONS_REVOKED, "Subscriptions dropped because a relation change took the right away");
    describe_counter!(PUBLISH_REFUSED, "Inbound PUBLISH refused, by reason");
    describe_counter!(CONNECTION_STOPS, "Connections ended, by reason (peer gone, protocol error, handler error)");
    describe_counter!(ACCOUNT_EVENTS, "Account events from the bus applied, by kind (`invalid` for undecodable ones)");
    describe_counter!(RELATION_LOAD_FAILURES, "CONNECTs that could not load the user's relations from the directory");
    describe_counter!(TOPIC_ALIAS_BYTES_SAVED, "Topic bytes not sent to v5 clients thanks to outbound topic aliases");
    describe_counter!(CLUSTER_OUT, "Messages this edge routed to the other edges over the bus");
    describe_counter!(CLUSTER_IN, "Messages from other edges routed here");
    describe_counter!(
        CLUSTER_GROUP_REDELIVERED,
        "Shared subscriptions' messages the bus's group gave here again: an edge (maybe this one) did not acknowledge them in time, or gave them back"
    );
    describe_counter!(
        CLUSTER_GROUP_GIVEN_BACK,
        "Shared subscriptions' messages given back to their group on the bus: every member here had too much waiting for its connection"
    );
    describe_counter!(
        CLUSTER_DUPLICATES,
        "Copies of messages from other edges dropped (one per extra matching subject)"
    );
    describe_counter!(
        CLUSTER_DROPPED,
        "Wills, presence changes and QoS 0 messages not passed to other edges: the bus was too far behind or away"
    );
    describe_counter!(CLUSTER_ERRORS, "Bus operations of the cluster routing that failed, by operation");
    describe_counter!(
        CLUSTER_REPLAYED,
        "Messages the bus kept that sessions resumed from a dead edge's journal had missed, replayed to them"
    );
    describe_counter!(
        SESSIONS_BEHIND,
        "Times a session with too much waiting for its connection fell behind on what other edges route (replayed to it from the bus instead of holding up the others)"
    );
    describe_counter!(
        BEHIND_GIVEN_UP,
        "Sessions behind whose replay from the bus gave up (what it had not replayed by then is lost to them)"
    );
    describe_counter!(
        BEHIND_LOST,
        "Messages sessions behind skipped that their replay from the bus never found before it gave up"
    );
    describe_counter!(
        ARRIVALS_UNHELD,
        "Sessions arriving with a catch-up whose queue went out before the first pass of their replay was done, by reason (`slow`: 5 s passed; `failed`): what they missed comes after what reached them meanwhile"
    );
    describe_counter!(
        ARRIVAL_PASSES,
        "Reads of the bus for the first pass of the replays of sessions arriving together (one for several)"
    );
    describe_counter!(SESSIONS_MOVED, "Sessions handed to (`out`) or taken from (`in`) another edge with their client");
    describe_counter!(JOURNAL_WRITES, "Changes to persistent sessions written to the session journal");
    describe_counter!(
        JOURNAL_SPARED,
        "Changes to persistent sessions never written (a message's arrival and its end, when its subscriber acknowledged it first)"
    );
    describe_counter!(
        JOURNAL_ERRORS,
        "Session journal writes that failed after their retries (their PUBLISHes were not acknowledged)"
    );
    describe_histogram!(JOURNAL_WRITE_SECONDS, "Time to write one batch to the session journal");
    describe_gauge!(CLUSTER_SUBJECTS, "Bus subjects this edge subscribes to for its clients' interest");
    describe_counter!(STREAM_APPENDS, "Messages appended to durable streams");
    describe_counter!(
        STREAM_APPEND_FAILURES,
        "Messages that could not be appended to their durable stream (QoS 1/2 ones were not acknowledged)"
    );
    describe_histogram!(STREAM_APPEND_SECONDS, "Time to append one batch to the durable streams");
    describe_counter!(STREAM_REPLAYED, "Messages replayed from durable streams to clients that resumed");
    describe_counter!(DEAD_LETTERS, "Messages given up on and kept in the dead-letter stream, by reason");
    describe_counter!(DEAD_LETTER_FAILURES, "Dead letters that could not be written (lost)");
    describe_counter!(PRESENCE_ERRORS, "Presence directory calls that failed (counts or announcements may be late)");
    describe_histogram!(ROUTE_SECONDS, "Time to route one inbound PUBLISH to its sessions");
    describe_histogram!(ACK_SECONDS, "Time from writing a QoS 1/2 delivery to its final ack");
}
