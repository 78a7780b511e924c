//! `bench accounts`: the accounts API under load, one operation at a time: password logins
//! (argon2id), token refreshes (rotating), contact syncs. C workers loop for a duration; each
//! request is its own HTTP/1.1 connection (the SDK's client), as a phone coming online would be.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::Common;
use super::stats::{cpu_report, cpu_secs, latency_summary};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Op {
    /// POST /v1/login with the password (argon2id verification each time).
    Login,
    /// POST /v1/token/refresh, each worker rotating its own refresh token.
    Refresh,
    /// GET /v1/contacts (the full list) with an access token.
    Contacts,
}

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Accounts API address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    #[arg(long, value_enum)]
    op: Op,
    #[arg(long)]
    enterprise: String,
    /// The user every worker logs in as (with `--password`).
    #[arg(long = "user")]
    user: String,
    /// Concurrent workers.
    #[arg(short, long, default_value_t = 16)]
    concurrency: usize,
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
}

const TIMEOUT: Duration = Duration::from_secs(30);

async fn post(http: SocketAddr, path: &str, body: &Value) -> Result<Value, String> {
    let r = sdk::http::request(http, "POST", path, &[], Some(body), TIMEOUT).await.map_err(|e| e.to_string())?;
    if r.status == 200 { Ok(r.body) } else { Err(format!("{path}: HTTP {} {}", r.status, r.body)) }
}

/// One worker: repeats `op` until `until`; returns latencies and failures.
async fn worker(args: Args, login: Value, until: Instant) -> Result<(Vec<Duration>, usize), String> {
    let session = post(args.http, "/v1/login", &login).await?;
    let mut refresh = session["refresh_token"].as_str().unwrap_or_default().to_owned();
    let auth = format!("Bearer {}", session["access_token"].as_str().unwrap_or_default());
    let (mut samples, mut failed) = (Vec::new(), 0);
    while Instant::now() < until {
        let t = Instant::now();
        let ok = match args.op {
            Op::Login => post(args.http, "/v1/login", &login).await.is_ok(),
            Op::Refresh => match post(args.http, "/v1/token/refresh", &json!({"refresh_token": refresh})).await {
                Ok(b) => {
                    refresh = b["refresh_token"].as_str().unwrap_or_default().to_owned();
                    true
                }
                Err(_) => false,
            },
            Op::Contacts => {
                sdk::http::request(args.http, "GET", "/v1/contacts", &[("Authorization", &auth)], None, TIMEOUT)
                    .await
                    .is_ok_and(|r| r.status == 200)
            }
        };
        if ok {
            samples.push(t.elapsed());
        } else {
            failed += 1;
        }
    }
    Ok((samples, failed))
}

pub async fn run(common: &Common, args: Args) -> Result<Value, String> {
    let password = common.password.clone().ok_or("--password is required")?;
    let login = json!({"enterprise": args.enterprise, "username": args.user, "password": password});
    let cpu_before = (cpu_secs(common.pid), cpu_secs(None));
    let started = Instant::now();
    let until = started + Duration::from_secs(args.duration_secs);
    let workers: Vec<_> =
        (0..args.concurrency).map(|_| tokio::spawn(worker(args.clone(), login.clone(), until))).collect();
    let (mut samples, mut failed) = (Vec::new(), 0);
    for w in workers {
        let (s, f) = w.await.map_err(|e| e.to_string())??;
        samples.extend(s);
        failed += f;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let done = samples.len() as u64;
    let mut report = json!({
        "scenario": "accounts",
        "op": format!("{:?}", args.op).to_lowercase(),
        "concurrency": args.concurrency,
        "completed": done,
        "failed": failed,
        "ops_per_sec": (done as f64 / elapsed).round(),
        "latency": latency_summary(samples),
    });
    if let Some(m) = report.as_object_mut() {
        cpu_report(m, common.pid, cpu_before, done);
    }
    Ok(report)
}
