//! The connection every Redis backend shares: one Redis ([`ConnectionManager`]) or a Redis
//! Cluster ([`ClusterConnection`]), told apart by `state.redis_url`
//! (`redis+cluster://host:port,host:port`, seed nodes).
//!
//! Every script and transaction of ours keeps to one hash slot (the key layout), but a pipeline
//! may span several: a batch of journal changes for many sessions, a follow that writes two
//! users' sets. On a cluster a pipeline goes as one pipeline per slot, each slot's commands in
//! their order, the slots at once ([`RedisConn`] as a `ConnectionLike`); [`InOrder`] sends runs
//! of one slot one after the other, in the pipeline's order, where an earlier command must be
//! done before a later one on another slot starts (a session listed under its node before it
//! is claimed).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::future::try_join_all;
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// How long a command may wait for its answer, and a connection for its setup.
const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The scheme of a Redis Cluster's seed nodes in `state.redis_url`.
const CLUSTER_SCHEME: &str = "redis+cluster://";

/// How many replicas of its primary a write must reach before it counts
/// (`state.redis_wait_replicas`, Redis `WAIT`): what a PUBLISH's acknowledgement waits for is
/// then still there after a failover. 0: the primary's answer is enough (replication is
/// asynchronous, and a failover can lose the last writes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Replicas(pub u32);

/// How long a write waits for its replicas before it counts as failed (and what it carried is
/// not acknowledged; it may still reach them).
pub const REPLICA_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

impl Replicas {
    /// Ends `pipe` with a `WAIT` for every write before it (on a cluster, one on each node
    /// written to, and the least answer counts); nothing for 0.
    pub(crate) fn wait_in(self, pipe: &mut Pipeline) {
        if self.0 > 0 {
            pipe.cmd("WAIT").arg(self.0).arg(REPLICA_WAIT.as_millis() as u64);
        }
    }

    /// How many replicas confirm within [`REPLICA_WAIT`], when fewer than asked for (on a
    /// cluster, of the primary with fewest): `WAIT` on a connection that wrote nothing yet counts
    /// the replicas connected and caught up. Every write would fail for want of them.
    pub async fn short_on(self, conn: &RedisConn) -> Result<Option<u32>, String> {
        if self.0 == 0 {
            return Ok(None);
        }
        let mut conn = conn.clone();
        let have: i64 = redis::cmd("WAIT")
            .arg(self.0)
            .arg(REPLICA_WAIT.as_millis() as u64)
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("counting Redis replicas: {e}"))?;
        Ok((have < i64::from(self.0)).then(|| u32::try_from(have).unwrap_or(0)))
    }

    /// Takes the `WAIT`'s answer off the end of `answers` (those of a pipeline [`Replicas::wait_in`]
    /// ended) and says whether it is enough; there is none to take for 0.
    pub(crate) fn take_answer(self, answers: &mut Vec<Value>) -> Result<(), String> {
        if self.0 == 0 {
            return Ok(());
        }
        match answers.pop() {
            Some(Value::Int(n)) if n >= i64::from(self.0) => Ok(()),
            Some(Value::Int(n)) => Err(format!(
                "written, but {n} of the {} replica(s) asked for confirmed it within {REPLICA_WAIT:?}",
                self.0
            )),
            other => Err(format!("no count of replicas from WAIT: {other:?}")),
        }
    }
}

/// A connection to one Redis or to a Redis Cluster; clones share it.
#[derive(Clone)]
pub enum RedisConn {
    /// With the client it came from, for [`RedisConn::another`].
    Single(ConnectionManager, redis::Client),
    Cluster(Arc<Cluster>),
}

/// How soon after one rebuild of a cluster connection another may start.
const REBUILD_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// A connection to a Redis Cluster, made again from the seed nodes when requests fail short of
/// an answer. redis-rs's connection reconnects to the node a slot was on, and learns the new
/// slot map only from a redirection, which a dead primary never sends: after a failover it
/// could keep asking the dead node. A new connection reads the map from a node that answers.
pub struct Cluster {
    client: redis::cluster::ClusterClient,
    conn: Mutex<ClusterConnection>,
    /// A rebuild is under way or was done less than [`REBUILD_EVERY`] ago.
    rebuilding: AtomicBool,
}

impl Cluster {
    /// `pipeline` on the cluster: a transaction whole (it keeps to one slot), else per slot
    /// ([`split`]); the connection is made again if it failed short of an answer.
    fn pipeline<'a>(
        self: &Arc<Self>,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
        in_order: bool,
    ) -> RedisFuture<'a, Vec<Value>> {
        let cluster = self.clone();
        Box::pin(async move {
            let result = match offset {
                0 => split(&cluster, pipeline, in_order).await,
                _ => cluster.current().req_packed_commands(pipeline, offset, count).await,
            };
            cluster.after(&result);
            result
        })
    }

    /// `cmd` on the cluster; the connection is made again if it failed short of an answer.
    fn command<'a>(self: &Arc<Self>, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let cluster = self.clone();
        Box::pin(async move {
            let result = cluster.current().req_packed_command(cmd).await;
            cluster.after(&result);
            result
        })
    }

    fn current(&self) -> ClusterConnection {
        self.conn.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// After `result`: a new connection, in the background, if it failed short of an answer
    /// from Redis (unreachable, timed out, dropped), at most once per [`REBUILD_EVERY`].
    fn after<T>(self: &Arc<Self>, result: &redis::RedisResult<T>) {
        let Err(e) = result else { return };
        if matches!(e.kind(), redis::ErrorKind::Server(_)) || self.rebuilding.swap(true, Ordering::AcqRel) {
            return;
        }
        let cluster = self.clone();
        tokio::spawn(async move {
            match cluster.client.get_async_connection().await {
                Ok(conn) => *cluster.conn.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = conn,
                Err(e) => tracing::debug!(error = %e, "cannot reconnect to the Redis Cluster yet"),
            }
            tokio::time::sleep(REBUILD_EVERY).await;
            cluster.rebuilding.store(false, Ordering::Release);
        });
    }
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RedisConn::Single(..) => "RedisConn::Single",
            RedisConn::Cluster(_) => "RedisConn::Cluster",
        })
    }
}

/// A connection to `url` that reconnects by itself: `redis://host:6379/0` for one Redis,
/// `redis+cluster://[user:password@]host:port,host:port` for a Redis Cluster (any of its nodes;
/// the others are found from them).
pub async fn connect(url: &str) -> Result<RedisConn, String> {
    match cluster_seeds(url) {
        Some(seeds) => {
            let client = redis::cluster::ClusterClient::builder(seeds)
                .connection_timeout(TIMEOUT)
                .response_timeout(TIMEOUT)
                .build()
                .map_err(|e| format!("{url}: {e}"))?;
            cluster(client).await.map_err(|e| format!("{url}: {e}"))
        }
        None => {
            let info = redis::IntoConnectionInfo::into_connection_info(url).map_err(|e| format!("{url}: {e}"))?;
            // RESP3: the connection hears when Redis closes it, and makes a new one at once; on
            // RESP2 an idle connection learns it only when a command fails on it (a restarted
            // Redis would fail the first write of every connection that was idle meanwhile).
            let resp3 = info.redis_settings().clone().set_protocol(redis::ProtocolVersion::RESP3);
            let client = redis::Client::open(info.set_redis_settings(resp3)).map_err(|e| format!("{url}: {e}"))?;
            single(client).await.map_err(|e| format!("{url}: {e}"))
        }
    }
}

impl RedisConn {
    /// Another connection to the same Redis or cluster, whose tasks run on the calling
    /// thread's runtime (a clone shares this one's, wherever they run).
    pub async fn another(&self) -> Result<RedisConn, String> {
        match self {
            RedisConn::Single(_, client) => single(client.clone()).await,
            RedisConn::Cluster(c) => cluster(c.client.clone()).await,
        }
        .map_err(|e| format!("another connection to Redis: {e}"))
    }
}

async fn single(client: redis::Client) -> redis::RedisResult<RedisConn> {
    // A Redis that stops answering (a partition, not a closed socket) fails commands in two
    // seconds instead of holding them forever; reconnects back off up to a second apart.
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_response_timeout(Some(TIMEOUT))
        .set_connection_timeout(Some(TIMEOUT))
        .set_max_delay(std::time::Duration::from_secs(1));
    let conn = client.get_connection_manager_with_config(config).await?;
    Ok(RedisConn::Single(conn, client))
}

async fn cluster(client: redis::cluster::ClusterClient) -> redis::RedisResult<RedisConn> {
    let conn = client.get_async_connection().await?;
    Ok(RedisConn::Cluster(Arc::new(Cluster { client, conn: Mutex::new(conn), rebuilding: AtomicBool::new(false) })))
}

/// The seed nodes' URLs of a `redis+cluster://` URL (the first node's credentials go to every
/// node); `None` for any other URL.
fn cluster_seeds(url: &str) -> Option<Vec<String>> {
    let rest = url.strip_prefix(CLUSTER_SCHEME)?;
    let mut nodes = rest.split(',').map(str::trim).filter(|n| !n.is_empty());
    let first = nodes.next().unwrap_or_default();
    let credentials = first.rsplit_once('@').map(|(c, _)| c);
    let seed = |node: &str| match (credentials, node.contains('@')) {
        (Some(c), false) => format!("redis://{c}@{node}"),
        _ => format!("redis://{node}"),
    };
    Some(std::iter::once(first).chain(nodes).map(seed).collect())
}

/// The hash slot of the key `cmd` works on, for the commands this crate sends; `None` for a
/// command without a key (`SCRIPT LOAD`).
fn slot_of(cmd: &Cmd) -> Option<Slot> {
    let mut args = cmd.args_iter().filter_map(|a| match a {
        redis::Arg::Simple(bytes) => Some(bytes),
        _ => None,
    });
    let name = args.next()?.to_ascii_uppercase();
    let key = match name.as_slice() {
        b"EVAL" | b"EVALSHA" | b"EVAL_RO" | b"EVALSHA_RO" | b"FCALL" => {
            let _script = args.next()?;
            let keys: usize = std::str::from_utf8(args.next()?).ok()?.parse().ok()?;
            if keys == 0 {
                return None;
            }
            args.next()?
        }
        b"SCRIPT" | b"PING" | b"INFO" | b"FLUSHALL" | b"FLUSHDB" => return None,
        _ => args.next()?,
    };
    Some(Slot::for_key(key))
}

/// `pipeline`'s commands grouped into pipelines of one slot each, with the commands' places in
/// `pipeline`: every command of a slot in one group (the groups in the order each slot first
/// comes), or, `in_order`, each run of consecutive commands of one slot (the groups in the
/// pipeline's order, so that sent one after the other every command is done before any later
/// one starts). A command without a key goes with every group after it and before it (a
/// `SCRIPT LOAD` must reach each node that runs the script); its answer is taken from the
/// first group.
fn by_slot(pipeline: &Pipeline, in_order: bool) -> Vec<(Pipeline, Vec<usize>)> {
    let mut groups: Vec<(Option<Slot>, Pipeline, Vec<usize>)> = Vec::new();
    let mut keyless: Vec<(usize, &Cmd)> = Vec::new();
    for (i, cmd) in pipeline.cmd_iter().enumerate() {
        match slot_of(cmd) {
            None => {
                for (_, group, places) in &mut groups {
                    group.add_command(cmd.clone());
                    places.push(i);
                }
                keyless.push((i, cmd));
            }
            Some(slot) => {
                let joins = match in_order {
                    true => groups.last().filter(|(s, ..)| *s == Some(slot)).map(|_| groups.len() - 1),
                    false => groups.iter().position(|(s, ..)| *s == Some(slot)),
                };
                let at = match joins {
                    Some(at) => at,
                    None => {
                        let mut group = redis::pipe();
                        let mut places = Vec::new();
                        for (j, k) in &keyless {
                            group.add_command((*k).clone());
                            places.push(*j);
                        }
                        groups.push((Some(slot), group, places));
                        groups.len() - 1
                    }
                };
                groups[at].1.add_command(cmd.clone());
                groups[at].2.push(i);
            }
        }
    }
    if groups.is_empty() && !keyless.is_empty() {
        let mut group = redis::pipe();
        keyless.iter().for_each(|(_, k)| {
            group.add_command((*k).clone());
        });
        groups.push((None, group, keyless.iter().map(|(j, _)| *j).collect()));
    }
    groups.into_iter().map(|(_, group, places)| (group, places)).collect()
}

/// The answers of `groups` (sent as [`by_slot`] made them) in `pipeline`'s order. A command
/// sent with several groups (one without a key) is answered by the first, or where they answer
/// numbers by the least (`WAIT`: every node written to has its writes on that many replicas).
fn reassemble(count: usize, groups: Vec<(Vec<usize>, Vec<Value>)>) -> Vec<Value> {
    let mut out: Vec<Option<Value>> = vec![None; count];
    for (places, answers) in groups {
        for (place, answer) in places.into_iter().zip(answers) {
            let slot = &mut out[place];
            match (&slot, &answer) {
                (None, _) => *slot = Some(answer),
                (Some(Value::Int(was)), Value::Int(n)) if n < was => *slot = Some(answer),
                _ => {}
            }
        }
    }
    out.into_iter().map(Option::unwrap_or_default).collect()
}

/// Sends one slot's pipeline on the cluster; its answers.
async fn send_group(
    mut conn: ClusterConnection,
    group: Pipeline,
    places: Vec<usize>,
) -> redis::RedisResult<(Vec<usize>, Vec<Value>)> {
    let count = places.len();
    let answers = conn.req_packed_commands(&group, 0, count).await?;
    Ok((places, answers))
}

/// A pipeline that is not a transaction, on a cluster: one pipeline per slot, all at once; or,
/// `in_order`, one per run of a slot, one after the other (see [`by_slot`]).
async fn split(cluster: &Arc<Cluster>, pipeline: &Pipeline, in_order: bool) -> redis::RedisResult<Vec<Value>> {
    let conn = cluster.current();
    let groups = by_slot(pipeline, in_order);
    let answers = if in_order {
        let mut answers = Vec::with_capacity(groups.len());
        for (group, places) in groups {
            answers.push(send_group(conn.clone(), group, places).await?);
        }
        answers
    } else {
        try_join_all(groups.into_iter().map(|(group, places)| send_group(conn.clone(), group, places))).await?
    };
    Ok(reassemble(pipeline.len(), answers))
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c, _) => c.req_packed_command(cmd),
            RedisConn::Cluster(cluster) => cluster.command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c, _) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(cluster) => cluster.pipeline(pipeline, offset, count, false),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c, _) => c.get_db(),
            RedisConn::Cluster(c) => c.current().get_db(),
        }
    }
}

/// A [`RedisConn`] whose pipelines, on a cluster, go run after run of consecutive commands of
/// one slot, in their order: what an earlier command did is done before a later one on another
/// slot starts. One round trip per run instead of one in all.
pub(crate) struct InOrder(pub(crate) RedisConn);

impl ConnectionLike for InOrder {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        self.0.req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &self.0 {
            RedisConn::Cluster(cluster) => cluster.pipeline(pipeline, offset, count, true),
            RedisConn::Single(..) => self.0.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        self.0.get_db()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_name_their_seed_nodes() {
        assert_eq!(cluster_seeds("redis://127.0.0.1:6379/0"), None);
        assert_eq!(
            cluster_seeds("redis+cluster://127.0.0.1:7000, 127.0.0.1:7001,"),
            Some(vec!["redis://127.0.0.1:7000".to_owned(), "redis://127.0.0.1:7001".to_owned()])
        );
        assert_eq!(
            cluster_seeds("redis+cluster://:secret@a:7000,b:7001,u:p@c:7002"),
            Some(vec!["redis://:secret@a:7000".into(), "redis://:secret@b:7001".into(), "redis://u:p@c:7002".into()])
        );
        assert_eq!(cluster_seeds("redis+cluster://"), Some(vec!["redis://".to_owned()]), "refused when connecting");
    }

    #[test]
    fn a_command_sent_with_every_group_answers_as_the_first_or_the_least_number() {
        // Places 0 and 2 are keyed; 1 (a SCRIPT LOAD) and 3 (a WAIT) went with both groups.
        let int = Value::Int;
        let sha = || Value::BulkString(b"sha".to_vec());
        let groups = vec![(vec![0, 1, 3], vec![int(10), sha(), int(1)]), (vec![2, 1, 3], vec![int(20), sha(), int(0)])];
        assert_eq!(reassemble(4, groups), [int(10), sha(), int(20), int(0)], "WAIT: the node with fewest replicas");
        let groups = vec![(vec![0, 1], vec![int(0), int(2)]), (vec![1], vec![int(3)])];
        assert_eq!(reassemble(2, groups), [int(0), int(2)]);
    }

    #[test]
    fn commands_are_grouped_by_the_slot_of_their_key_in_order() {
        let script = redis::Script::new("return 1");
        let mut pipe = redis::pipe();
        pipe.sadd("{a}:x", 1).ignore();
        pipe.load_script(&script).ignore();
        let mut call = script.prepare_invoke();
        call.key("{b}:y");
        pipe.invoke_script(&call);
        pipe.srem("{a}:z", 1);
        pipe.cmd("SCRIPT").arg("FLUSH");
        let places = |in_order| -> Vec<Vec<usize>> { by_slot(&pipe, in_order).into_iter().map(|(_, p)| p).collect() };
        // {a}: its two commands and both keyless ones; {b}: the load before its call and the
        // keyless one after.
        assert_eq!(places(false), vec![vec![0, 1, 3, 4], vec![1, 2, 4]]);
        // In order: {a}'s second command waits for {b}'s, a run of its own (with the keyless
        // commands before it, and the one after).
        assert_eq!(places(true), vec![vec![0, 1, 4], vec![1, 2, 4], vec![1, 3, 4]]);
        assert_eq!(slot_of(pipe.cmd_iter().nth(2).expect("the call")), Some(Slot::for_key("{b}:y")));
        assert_eq!(slot_of(pipe.cmd_iter().nth(1).expect("the load")), None);
        let answers = reassemble(
            5,
            vec![
                (vec![0, 1, 3, 4], (0..4).map(Value::Int).collect()),
                (vec![1, 2, 4], (10..13).map(Value::Int).collect()),
            ],
        );
        assert_eq!(answers, [0, 1, 11, 2, 3].map(Value::Int).to_vec(), "keyless answers from the first group");
    }
}
