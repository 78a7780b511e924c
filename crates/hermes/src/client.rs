//! Client verbs, enough to use Hermes from two terminals: `login` (keeps a session file),
//! `contacts`, `follow`, `send` (a text envelope to a user's inbox), `listen` (prints what
//! arrives, decoding envelopes), `signature`, `presence` (watch friends come and go) and
//! `logout`. An expired access token is renewed with the session's refresh token.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

use sdk::mqtt::{Client, Connect, Packet, Version};
use wire::envelope;
use wire::pb::Direction;

const TIMEOUT: Duration = Duration::from_secs(10);

/// What `login` keeps for the other verbs.
#[derive(Debug, Serialize, Deserialize)]
struct Session {
    http: SocketAddr,
    /// The edges to connect to, in order of preference (one address in older files).
    #[serde(deserialize_with = "one_or_many")]
    mqtt: Vec<SocketAddr>,
    enterprise_id: String,
    username: String,
    access_token: String,
    #[serde(default)]
    refresh_token: String,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Addrs {
        One(SocketAddr),
        Many(Vec<SocketAddr>),
    }
    Ok(match Addrs::deserialize(d)? {
        Addrs::One(a) => vec![a],
        Addrs::Many(v) => v,
    })
}

#[derive(Debug, Clone, clap::Args)]
pub struct SessionArg {
    /// The session file `hermes login` wrote.
    #[arg(long, default_value = "hermes-session.json")]
    session: PathBuf,
}

impl SessionArg {
    fn load(&self) -> Result<Session, String> {
        let text = std::fs::read_to_string(&self.session)
            .map_err(|e| format!("{}: {e} (run `hermes login` first)", self.session.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", self.session.display()))
    }

    /// The session holds a refresh token good for weeks: the file is readable by its owner
    /// only, and replaced in one step, so a crash never leaves half a session behind.
    fn save(&self, s: &Session) -> Result<(), String> {
        let text = serde_json::to_string_pretty(s).map_err(|e| e.to_string())?;
        accounts::owner_only::replace(&self.session, text.as_bytes())
            .map_err(|e| format!("{}: {e}", self.session.display()))
    }
}

/// A loaded session that renews its access token when the server says it expired.
struct Live {
    s: Session,
    file: SessionArg,
    /// The edge the last one named as it stopped (its Server Reference, `host:port`): tried
    /// first next time.
    named: Option<String>,
}

impl Live {
    fn load(file: &SessionArg) -> Result<Live, String> {
        Ok(Live { s: file.load()?, file: file.clone(), named: None })
    }

    /// Trades the refresh token for new tokens and saves them.
    async fn renew(&mut self) -> Result<(), String> {
        if self.s.refresh_token.is_empty() {
            return Err("the access token expired: run `hermes login` again".into());
        }
        let body = json!({"refresh_token": self.s.refresh_token});
        let r = sdk::http::request(self.s.http, "POST", "/v1/token/refresh", &[], Some(&body), TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        if r.status != 200 {
            return Err(format!("{} (run `hermes login` again)", api_error(&r)));
        }
        self.s.access_token = r.body["access_token"].as_str().unwrap_or_default().to_owned();
        self.s.refresh_token = r.body["refresh_token"].as_str().unwrap_or_default().to_owned();
        self.file.save(&self.s)
    }

    /// An API call with the access token, renewed once if it was refused as expired.
    async fn call(
        &mut self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, String> {
        for attempt in 0..2 {
            let auth = format!("Bearer {}", self.s.access_token);
            let r = sdk::http::request(self.s.http, method, path, &[("Authorization", &auth)], body.as_ref(), TIMEOUT)
                .await
                .map_err(|e| e.to_string())?;
            match r.status {
                200 | 204 => return Ok(r.body),
                401 if attempt == 0 => self.renew().await?,
                _ => return Err(api_error(&r)),
            }
        }
        unreachable!("the loop returns")
    }

    /// A one-shot MQTT v5 connection with the access token, renewed once if the edge refused it.
    async fn connect(&mut self, suffix: &str) -> Result<Client, String> {
        self.connect_with(suffix, Lasting::OneShot).await.map(|(c, _)| c)
    }

    /// Like [`Live::connect`], for a connection that lasts; returns whether the edge still had
    /// the session (and so what arrived while away).
    async fn connect_with(&mut self, suffix: &str, lasting: Lasting) -> Result<(Client, bool), String> {
        let named = self.named.take();
        match connect_or_follow(&self.s, suffix, lasting, named.as_deref()).await {
            Err(Refused::Token(_)) => {
                self.renew().await?;
                connect_or_follow(&self.s, suffix, lasting, named.as_deref()).await.map_err(|e| e.to_string())
            }
            other => other.map_err(|e| e.to_string()),
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct LoginArgs {
    /// Accounts API address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// MQTT address the other verbs connect to; several, comma-separated, for the edges of a
    /// cluster: the next one is tried when one cannot be reached.
    #[arg(long, default_value = "127.0.0.1:1883", value_delimiter = ',', required = true)]
    mqtt: Vec<SocketAddr>,
    #[arg(long)]
    enterprise: String,
    #[arg(long)]
    username: String,
    /// Read from the first line of standard input when absent. May start with `-`.
    #[arg(long, allow_hyphen_values = true)]
    password: Option<String>,
    #[command(flatten)]
    session: SessionArg,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ContactsArgs {
    /// Only changes after this version (0 = the full list).
    #[arg(long, default_value_t = 0)]
    since: i64,
    #[command(flatten)]
    session: SessionArg,
}

#[derive(Debug, Clone, clap::Args)]
pub struct FollowArgs {
    username: String,
    /// Stop following instead.
    #[arg(long)]
    unfollow: bool,
    #[command(flatten)]
    session: SessionArg,
}

#[derive(Debug, Clone, clap::Args)]
pub struct SendArgs {
    /// The user whose inbox gets the message.
    #[arg(long)]
    to: String,
    text: String,
    #[command(flatten)]
    session: SessionArg,
}

#[derive(Debug, Clone, clap::Args)]
pub struct SignatureArgs {
    /// The new signature (empty clears it); friends see it at once.
    text: String,
    #[command(flatten)]
    session: SessionArg,
}

#[derive(Debug, Clone, clap::Args)]
pub struct LogoutArgs {
    /// End every session of this user, on every device, and close their connections.
    #[arg(long)]
    everywhere: bool,
    #[command(flatten)]
    session: SessionArg,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ListenArgs {
    /// Stop after this many messages (0 = until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    count: usize,
    /// Give up (exit with an error) after this many seconds without a message (0 = never).
    #[arg(long, default_value_t = 0)]
    idle_secs: u64,
    /// MQTT keep-alive: a PINGREQ goes out after half of it without traffic.
    #[arg(long, default_value_t = 60)]
    keep_alive_secs: u16,
    #[command(flatten)]
    session: SessionArg,
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())
}

fn read_password(given: Option<String>) -> Result<String, String> {
    match given {
        Some(p) => Ok(p),
        None => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).map_err(|e| format!("reading the password: {e}"))?;
            Ok(line.trim_end_matches(['\r', '\n']).to_owned())
        }
    }
}

/// An API error as one line: the server's message, or the status.
fn api_error(r: &sdk::http::Response) -> String {
    r.body["message"].as_str().map_or_else(|| format!("HTTP {}", r.status), |m| format!("HTTP {}: {m}", r.status))
}

pub fn login(args: LoginArgs) -> Result<(), String> {
    let password = read_password(args.password)?;
    runtime()?.block_on(async {
        let body = json!({"enterprise": args.enterprise, "username": args.username, "password": password});
        let r = sdk::http::request(args.http, "POST", "/v1/login", &[], Some(&body), TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        if r.status != 200 {
            return Err(api_error(&r));
        }
        let session = Session {
            http: args.http,
            mqtt: args.mqtt.clone(),
            enterprise_id: r.body["enterprise_id"].as_str().unwrap_or_default().to_owned(),
            username: r.body["username"].as_str().unwrap_or_default().to_owned(),
            access_token: r.body["access_token"].as_str().unwrap_or_default().to_owned(),
            refresh_token: r.body["refresh_token"].as_str().unwrap_or_default().to_owned(),
        };
        args.session.save(&session)?;
        println!(
            "logged in as {}@{}; session in {}",
            session.username,
            session.enterprise_id,
            args.session.session.display()
        );
        print_contacts(&r.body["contacts"]);
        Ok(())
    })
}

fn print_contacts(c: &serde_json::Value) {
    for contact in c["contacts"].as_array().into_iter().flatten() {
        let mark = if contact["following"] != true {
            "removed"
        } else if contact["friend"] == true {
            "friend"
        } else {
            "following"
        };
        println!(
            "  {:<16} {:<10} {}",
            contact["username"].as_str().unwrap_or("?"),
            mark,
            contact["display_name"].as_str().unwrap_or("")
        );
    }
    println!("contacts version {}", c["version"]);
}

pub fn contacts(args: ContactsArgs) -> Result<(), String> {
    let mut live = Live::load(&args.session)?;
    runtime()?.block_on(async {
        print_contacts(&live.call("GET", &format!("/v1/contacts?since={}", args.since), None).await?);
        Ok(())
    })
}

pub fn follow(args: FollowArgs) -> Result<(), String> {
    let mut live = Live::load(&args.session)?;
    let method = if args.unfollow { "DELETE" } else { "PUT" };
    runtime()?.block_on(async {
        let r = live.call(method, &format!("/v1/follows/{}", args.username), None).await?;
        println!(
            "{} {} (version {})",
            if args.unfollow { "unfollowed" } else { "following" },
            args.username,
            r["version"]
        );
        Ok(())
    })
}

pub fn signature(args: SignatureArgs) -> Result<(), String> {
    let mut live = Live::load(&args.session)?;
    runtime()?.block_on(async {
        let me = live.call("PATCH", "/v1/me", Some(json!({"signature": args.text}))).await?;
        println!("signature of {}: {}", live.s.username, me["signature"].as_str().unwrap_or(""));
        Ok(())
    })
}

pub fn logout(args: LogoutArgs) -> Result<(), String> {
    let mut live = Live::load(&args.session)?;
    runtime()?.block_on(async {
        let body =
            if args.everywhere { json!({"everywhere": true}) } else { json!({"refresh_token": live.s.refresh_token}) };
        live.call("POST", "/v1/logout", Some(body)).await?;
        let _ = std::fs::remove_file(&args.session.session);
        println!("logged out{}", if args.everywhere { " everywhere" } else { "" });
        Ok(())
    })
}

/// Why a CONNECT failed: the token (renewable) or anything else.
#[derive(Debug)]
enum Refused {
    Token(String),
    /// Told to use another edge (0x9C, 0x9D), named by its Server Reference (`host:port`).
    Elsewhere(String, String),
    Other(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Token(m) | Refused::Elsewhere(_, m) | Refused::Other(m) => f.write_str(m),
        }
    }
}

/// How long a connection is meant to last.
#[derive(Debug, Clone, Copy)]
enum Lasting {
    /// Connect, do one thing, leave (`send`).
    OneShot,
    /// Stay connected with this keep-alive, in a session that outlives the connection by a day,
    /// so what arrives during a reconnect is delivered afterwards (`listen`, `presence`).
    Watching { keep_alive: u16 },
}

/// How long a watching client's session waits for it to come back.
const WATCH_SESSION_SECS: u32 = 24 * 3600;

/// A TCP connection to the first of `addrs` that answers, starting with the one that answered
/// last (so a client whose edge went away moves to another and stays there); to `named` first,
/// if given (`host:port`: the edge a stopping one named, which need not be in `addrs`), for at
/// most [`NAMED_DIAL`].
async fn dial(addrs: &[SocketAddr], named: Option<&str>) -> Result<Client, String> {
    static LAST_GOOD: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let start = LAST_GOOD.load(std::sync::atomic::Ordering::Relaxed);
    let mut failures = Vec::new();
    if let Some(name) = named {
        match tokio::time::timeout(NAMED_DIAL, dial_named(name)).await {
            Ok(Ok((c, a))) => {
                if let Some(k) = addrs.iter().position(|x| *x == a) {
                    LAST_GOOD.store(k, std::sync::atomic::Ordering::Relaxed);
                }
                return Ok(c);
            }
            Ok(Err(e)) => failures.push(format!("{name}: {e}")),
            Err(_) => failures.push(format!("{name}: no answer within {NAMED_DIAL:?}")),
        }
    }
    for i in 0..addrs.len() {
        let k = (start + i) % addrs.len();
        match Client::connect_tcp(addrs[k], Version::V5).await {
            Ok(c) => {
                LAST_GOOD.store(k, std::sync::atomic::Ordering::Relaxed);
                return Ok(c);
            }
            Err(e) => failures.push(format!("{}: {e}", addrs[k])),
        }
    }
    Err(if failures.is_empty() { "no MQTT address in the session file".into() } else { failures.join("; ") })
}

/// How long the edge a stopping one named has to answer before the list is tried.
const NAMED_DIAL: Duration = Duration::from_secs(3);

/// A TCP connection to `name` (`host:port`), and the address it resolved to.
async fn dial_named(name: &str) -> Result<(Client, SocketAddr), String> {
    let addr = tokio::net::lookup_host(name).await.map_err(|e| e.to_string())?.next().ok_or("no address")?;
    Client::connect_tcp(addr, Version::V5).await.map(|c| (c, addr)).map_err(|e| e.to_string())
}

/// [`connect`], and once more where the edge said to go if it refused with a Server
/// Reference (an edge that has begun to stop names another).
async fn connect_or_follow(
    s: &Session,
    suffix: &str,
    lasting: Lasting,
    named: Option<&str>,
) -> Result<(Client, bool), Refused> {
    match connect(s, suffix, lasting, named).await {
        Err(Refused::Elsewhere(to, why)) => {
            eprintln!("{why}; connecting there");
            connect(s, suffix, lasting, Some(&to)).await
        }
        other => other,
    }
}

async fn connect(s: &Session, suffix: &str, lasting: Lasting, named: Option<&str>) -> Result<(Client, bool), Refused> {
    let mut c = dial(&s.mqtt, named).await.map_err(Refused::Other)?;
    let (clean_start, keep_alive, session_expiry) = match lasting {
        Lasting::OneShot => (true, 60, None),
        Lasting::Watching { keep_alive } => (false, keep_alive, Some(WATCH_SESSION_SECS)),
    };
    let hello = Connect {
        client_id: format!("{}-{suffix}", s.username),
        clean_start,
        keep_alive,
        session_expiry,
        password: Some(s.access_token.clone().into_bytes()),
        ..Connect::default()
    };
    match c.handshake(hello, TIMEOUT).await {
        Ok(Packet::ConnAck { code: 0, session_present, .. }) => Ok((c, session_present)),
        Ok(Packet::ConnAck { code, properties, .. }) => {
            let why = format!("refused ({code:#x}): {}", properties.reason_string.unwrap_or_default());
            let elsewhere = properties.server_reference.filter(|r| !r.is_empty() && matches!(code, 0x9C | 0x9D));
            Err(match (code, elsewhere) {
                (_, Some(to)) => Refused::Elsewhere(to, why),
                // 0x87: expired or revoked token; a refresh may fix the first.
                (0x87, _) => Refused::Token(why),
                _ => Refused::Other(why),
            })
        }
        other => Err(Refused::Other(format!("no CONNACK: {other:?}"))),
    }
}

pub fn send(args: SendArgs) -> Result<(), String> {
    let mut live = Live::load(&args.session)?;
    runtime()?.block_on(async {
        let mut c = live.connect(&format!("send-{}", std::process::id())).await?;
        let s = &live.s;
        let msg_id = format!("{:x}-{}", sdk_now_ms(), std::process::id());
        let env = envelope::text(msg_id, s.username.clone(), Direction::P2p, &args.text, sdk_now_ms() as i64);
        let topic = format!("{}/im/msg/{}", s.enterprise_id, args.to);
        match c.publish(&topic, &envelope::encode(&env), 1, false, TIMEOUT).await {
            Ok(Some(code)) if code < 0x80 => {
                println!("sent to {}", args.to);
                Ok(())
            }
            Ok(code) => Err(format!("refused: {code:?}")),
            Err(e) => Err(format!("{e:?}")),
        }
    })
}

pub fn listen(args: ListenArgs) -> Result<(), String> {
    watch(args, "listening", |p| {
        let (topic, payload) = (&p.topic, &p.payload);
        match envelope::decode(payload).ok().filter(|e| e.version == envelope::VERSION) {
            Some(e) => {
                let from = sender(p).unwrap_or_else(|| e.source.clone());
                Some(format!("{topic} [{from}] {}", String::from_utf8_lossy(&e.data)))
            }
            // Not an envelope (mosquitto_pub, say): its sender all the same, when it has one.
            None => match sender(p) {
                Some(from) => Some(format!("{topic} [{from}] {}", String::from_utf8_lossy(payload))),
                None => Some(format!("{topic} {}", String::from_utf8_lossy(payload))),
            },
        }
    })
}

/// Who sent `p`, as the edge authenticated them: its `hermes-sender` property (`{enterprise}/
/// {user}`), shown as the user name. Clients cannot set it; messages without one were published
/// by the system, whose envelope names it.
fn sender(p: &sdk::mqtt::Publish) -> Option<String> {
    let (_, v) = p.properties.user_properties.iter().find(|(k, _)| k == "hermes-sender")?;
    Some(v.rsplit('/').next().unwrap_or(v).to_owned())
}

/// Prints friends' presence and signatures as they change (retained states first).
pub fn presence(args: ListenArgs) -> Result<(), String> {
    watch(args, "watching presence", |p| {
        let (topic, text) = (&p.topic, String::from_utf8_lossy(&p.payload));
        let mut levels = topic.split('/');
        match (levels.next(), levels.next(), levels.next(), levels.next()) {
            (Some(_), Some("im"), Some("pres"), Some(user)) => Some(format!("{user} is {text}")),
            (Some(_), Some("im"), Some("sig"), Some(user)) => Some(format!("{user} signature: {text}")),
            _ => None,
        }
    })
}

/// Connects and prints each PUBLISH `show` formats; counts only those. Keeps the connection
/// alive (PINGREQ after half the keep-alive without traffic) and comes back after it breaks,
/// with jittered exponential backoff, in a session that kept what arrived meanwhile.
fn watch(args: ListenArgs, what: &str, show: impl Fn(&sdk::mqtt::Publish) -> Option<String>) -> Result<(), String> {
    let mut live = Live::load(&args.session)?;
    let suffix = what.split(' ').next().unwrap_or("watch").to_owned();
    let lasting = Lasting::Watching { keep_alive: args.keep_alive_secs.max(1) };
    runtime()?.block_on(async {
        use std::io::Write;
        let idle_limit = (args.idle_secs > 0).then(|| Duration::from_secs(args.idle_secs));
        let ping_every = Duration::from_secs(u64::from(args.keep_alive_secs.max(2)) / 2);
        let mut seen = 0;
        let mut last_message = std::time::Instant::now();
        let mut failures = 0u32;
        let mut first = true;
        while args.count == 0 || seen < args.count {
            let (mut c, resumed) = match live.connect_with(&suffix, lasting).await {
                Ok(c) => c,
                // Nothing a retry can fix: the tokens are gone.
                Err(e) if first || e.contains("hermes login") || e.contains("disabled") => return Err(e),
                Err(e) => {
                    failures += 1;
                    let wait = backoff(failures);
                    eprintln!("cannot reconnect ({e}); trying again in {:.1} s", wait.as_secs_f64());
                    tokio::time::sleep(wait).await;
                    continue;
                }
            };
            if first {
                println!(
                    "{what} as {}@{} (inbox, friends' presence and signatures, notices)",
                    live.s.username, live.s.enterprise_id
                );
                first = false;
            } else {
                eprintln!("reconnected{}", if resumed { ", session resumed" } else { "" });
            }
            failures = 0;
            let _ = std::io::stdout().flush();
            let ended = loop {
                if args.count != 0 && seen >= args.count {
                    return Ok(());
                }
                if idle_limit.is_some_and(|l| last_message.elapsed() >= l) {
                    return Err(format!("nothing arrived for {} s", args.idle_secs));
                }
                let p = match c.recv(ping_every).await {
                    Ok(Packet::Publish(p)) => p,
                    Ok(Packet::Disconnect { code: 0x8E, .. }) => {
                        return Err("another connection took over this session (0x8e)".into());
                    }
                    // Disabled, revoked or logged out: coming back would be refused.
                    Ok(Packet::Disconnect { code: 0x98, reason_string, .. }) => {
                        return Err(format!("disconnected (0x98): {}", reason_string.unwrap_or_default()));
                    }
                    // A stopping edge may name another (v5 Server Reference): tried first.
                    Ok(Packet::Disconnect { code, reason_string, server_reference, .. }) => {
                        live.named = server_reference.filter(|r| !r.is_empty());
                        let to = live.named.as_ref().map(|a| format!(", to go to {a}")).unwrap_or_default();
                        break format!("disconnected ({code:#x}): {}{to}", reason_string.unwrap_or_default());
                    }
                    Ok(_) => continue,
                    Err(sdk::mqtt::RecvError::Timeout) => {
                        // Quiet: tell the edge we are still here.
                        if c.send(&Packet::PingReq).await.is_err() {
                            break "connection lost".into();
                        }
                        continue;
                    }
                    Err(e) => break format!("connection ended: {e:?}"),
                };
                if let Some(id) = p.packet_id.filter(|_| p.qos == 1) {
                    let _ = c.send(&Packet::PubAck { packet_id: id, code: 0 }).await;
                }
                if let Some(line) = show(&p) {
                    println!("{line}");
                    let _ = std::io::stdout().flush();
                    seen += 1;
                    last_message = std::time::Instant::now();
                }
            };
            failures += 1;
            let wait = backoff(failures);
            eprintln!("{ended}; reconnecting in {:.1} s", wait.as_secs_f64());
            tokio::time::sleep(wait).await;
        }
        Ok(())
    })
}

/// Full-jitter exponential backoff: a random wait up to 0.5 s doubled per failure, at most 30 s.
fn backoff(failures: u32) -> Duration {
    let cap = (500u64 << failures.min(6).saturating_sub(1)).min(30_000);
    // The clock's nanoseconds are random enough to spread clients that failed together.
    let noise =
        u64::from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos()));
    Duration::from_millis(100 + noise % cap)
}

fn sdk_now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Whether `l` has a connection waiting to be accepted.
    fn called(l: &std::net::TcpListener) -> bool {
        l.set_nonblocking(true).expect("nonblocking");
        l.accept().is_ok()
    }

    #[tokio::test]
    async fn a_client_dials_the_edge_a_stopping_one_named_before_its_own_list() {
        let listed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let named = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let at = |l: &std::net::TcpListener| l.local_addr().expect("addr");
        let _c = dial(&[at(&listed)], Some(&at(&named).to_string())).await.expect("the named edge answers");
        assert!(called(&named) && !called(&listed), "the named edge first");
        let _c = dial(&[at(&listed)], None).await.expect("the listed edge answers");
        assert!(called(&listed), "its own list without a name");
        let gone = at(&std::net::TcpListener::bind("127.0.0.1:0").expect("bind"));
        let _c = dial(&[at(&listed)], Some(&gone.to_string())).await.expect("the list after a named edge that is gone");
        assert!(called(&listed));
        let Err(both_gone) = dial(&[gone], Some(&gone.to_string())).await else { panic!("nothing answers") };
        assert_eq!(both_gone.matches(&gone.to_string()).count(), 2, "{both_gone}");
    }

    /// An MQTT 5 server on `listener` that answers each CONNECT with `code` and
    /// `server_reference` (counting them in `answered`), then keeps the connection until the
    /// client goes.
    async fn answering(
        listener: tokio::net::TcpListener,
        code: u8,
        server_reference: Option<String>,
        answered: Arc<std::sync::atomic::AtomicUsize>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = bytes::BytesMut::new();
            while !matches!(sdk::mqtt::codec::decode(&mut buf, Version::V5, 1 << 20), Ok(Some(Packet::Connect(_)))) {
                if socket.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                    return;
                }
            }
            let properties =
                sdk::mqtt::ConnAckProperties { server_reference: server_reference.clone(), ..Default::default() };
            let mut out = bytes::BytesMut::new();
            sdk::mqtt::codec::encode(
                &Packet::ConnAck { session_present: false, code, properties },
                Version::V5,
                &mut out,
            );
            socket.write_all(&out).await.expect("write CONNACK");
            answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = socket.read_buf(&mut buf).await;
        }
    }

    /// An edge that refuses a CONNECT with 0x9C (it has begun to stop) and names another: the
    /// CLI connects there, once; one that names an edge that refuses too is not followed on.
    #[tokio::test]
    async fn a_client_refused_by_a_stopping_edge_connects_where_it_names() {
        let bind = || async { tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind") };
        let (stopping, other, also_stopping) = (bind().await, bind().await, bind().await);
        let at = |l: &tokio::net::TcpListener| l.local_addr().expect("addr");
        let (stopping_at, other_at, also_at) = (at(&stopping), at(&other), at(&also_stopping));
        let counter = || Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (to_stopping, to_other, to_also) = (counter(), counter(), counter());
        tokio::spawn(answering(stopping, 0x9C, Some(other_at.to_string()), to_stopping.clone()));
        tokio::spawn(answering(other, 0, None, to_other.clone()));
        tokio::spawn(answering(also_stopping, 0x9C, Some(stopping_at.to_string()), to_also.clone()));
        let answered = || [&to_stopping, &to_other, &to_also].map(|n| n.load(std::sync::atomic::Ordering::SeqCst));
        let session = |mqtt| Session {
            http: "127.0.0.1:9".parse().expect("addr"),
            mqtt,
            enterprise_id: "e".into(),
            username: "alice".into(),
            access_token: "token".into(),
            refresh_token: String::new(),
        };
        let _c = connect_or_follow(&session(vec![stopping_at]), "t", Lasting::OneShot, None)
            .await
            .unwrap_or_else(|e| panic!("followed to the edge named: {e}"));
        assert_eq!(answered(), [1, 1, 0], "connected where the stopping edge said");
        match connect_or_follow(&session(vec![also_at]), "t", Lasting::OneShot, None).await {
            Err(Refused::Elsewhere(to, why)) => {
                assert_eq!((to, why.starts_with("refused (0x9c)")), (other_at.to_string(), true));
                assert_eq!(answered(), [2, 1, 1], "followed once, not on to the third");
            }
            Err(e) => panic!("refused again where it was sent: {e}"),
            Ok(_) => panic!("a chain of stopping edges is followed once only"),
        }
    }
}
