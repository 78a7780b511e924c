//! Client verbs, enough to use Hermes from two terminals: `login` (keeps a session file),
//! `contacts`, `follow`, `send` (a text envelope to a user's inbox) and `listen` (prints what
//! arrives, decoding envelopes).

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
    mqtt: SocketAddr,
    enterprise_id: String,
    username: String,
    access_token: String,
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
}

#[derive(Debug, Clone, clap::Args)]
pub struct LoginArgs {
    /// Accounts API address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// MQTT address the other verbs connect to.
    #[arg(long, default_value = "127.0.0.1:1883")]
    mqtt: SocketAddr,
    #[arg(long)]
    enterprise: String,
    #[arg(long)]
    username: String,
    /// Read from the first line of standard input when absent.
    #[arg(long)]
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
pub struct ListenArgs {
    /// Stop after this many messages (0 = until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    count: usize,
    /// Give up (exit with an error) after this many seconds without a message (0 = never).
    #[arg(long, default_value_t = 0)]
    idle_secs: u64,
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
            mqtt: args.mqtt,
            enterprise_id: r.body["enterprise_id"].as_str().unwrap_or_default().to_owned(),
            username: r.body["username"].as_str().unwrap_or_default().to_owned(),
            access_token: r.body["access_token"].as_str().unwrap_or_default().to_owned(),
        };
        let text = serde_json::to_string_pretty(&session).map_err(|e| e.to_string())?;
        std::fs::write(&args.session.session, text).map_err(|e| format!("{}: {e}", args.session.session.display()))?;
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

async fn authed(s: &Session, method: &str, path: &str) -> Result<serde_json::Value, String> {
    let auth = format!("Bearer {}", s.access_token);
    let r = sdk::http::request(s.http, method, path, &[("Authorization", &auth)], None, TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    if r.status != 200 {
        return Err(api_error(&r));
    }
    Ok(r.body)
}

pub fn contacts(args: ContactsArgs) -> Result<(), String> {
    let s = args.session.load()?;
    runtime()?.block_on(async {
        print_contacts(&authed(&s, "GET", &format!("/v1/contacts?since={}", args.since)).await?);
        Ok(())
    })
}

pub fn follow(args: FollowArgs) -> Result<(), String> {
    let s = args.session.load()?;
    let method = if args.unfollow { "DELETE" } else { "PUT" };
    runtime()?.block_on(async {
        let r = authed(&s, method, &format!("/v1/follows/{}", args.username)).await?;
        println!(
            "{} {} (version {})",
            if args.unfollow { "unfollowed" } else { "following" },
            args.username,
            r["version"]
        );
        Ok(())
    })
}

async fn connect(s: &Session, suffix: &str) -> Result<Client, String> {
    let mut c = Client::connect_tcp(s.mqtt, Version::V5).await.map_err(|e| format!("{}: {e}", s.mqtt))?;
    let hello = Connect {
        client_id: format!("{}-{suffix}", s.username),
        clean_start: true,
        keep_alive: 60,
        password: Some(s.access_token.clone().into_bytes()),
        ..Connect::default()
    };
    match c.handshake(hello, TIMEOUT).await {
        Ok(Packet::ConnAck { code: 0, .. }) => Ok(c),
        Ok(Packet::ConnAck { code, properties, .. }) => {
            Err(format!("refused ({code:#x}): {}", properties.reason_string.unwrap_or_default()))
        }
        other => Err(format!("no CONNACK: {other:?}")),
    }
}

pub fn send(args: SendArgs) -> Result<(), String> {
    let s = args.session.load()?;
    runtime()?.block_on(async {
        let mut c = connect(&s, &format!("send-{}", std::process::id())).await?;
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
    let s = args.session.load()?;
    runtime()?.block_on(async {
        let mut c = connect(&s, "listen").await?;
        println!("listening as {}@{} (inbox, friends' presence, notices)", s.username, s.enterprise_id);
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let idle = if args.idle_secs == 0 { Duration::from_secs(3600) } else { Duration::from_secs(args.idle_secs) };
        let mut seen = 0;
        while args.count == 0 || seen < args.count {
            let p = match c.recv(idle).await {
                Ok(Packet::Publish(p)) => p,
                Ok(_) => continue,
                Err(sdk::mqtt::RecvError::Timeout) if args.idle_secs == 0 => continue,
                Err(sdk::mqtt::RecvError::Timeout) => return Err(format!("nothing arrived for {} s", args.idle_secs)),
                Err(e) => return Err(format!("connection ended: {e:?}")),
            };
            if let Some(id) = p.packet_id.filter(|_| p.qos == 1) {
                let _ = c.send(&Packet::PubAck { packet_id: id, code: 0 }).await;
            }
            match envelope::decode(&p.payload).ok().filter(|e| e.version == envelope::VERSION) {
                Some(e) => println!("{} [{}] {}", p.topic, e.source, String::from_utf8_lossy(&e.data)),
                None => println!("{} {}", p.topic, String::from_utf8_lossy(&p.payload)),
            }
            seen += 1;
        }
        Ok(())
    })
}

fn sdk_now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
