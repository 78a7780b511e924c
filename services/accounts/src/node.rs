//! One accounts node as a process runs it: its data directory (keys, uploads, the SQLite
//! database), its database (SQLite or Postgres) and the API serving them. The `accounts` binary
//! ([`run_until_signal`]) and `hermes up` start it through the same calls.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use broker::access::{AccessDirectory, Revocation, Tables};
use broker::relations::RelationDirectory;
use bus::Bus;
use redis_state::StateDirectories;
use wire::token::Signer;

use crate::config::{AccountsConfig, NodeConfig};
use crate::owner_only;
use crate::postgres::PgStore;
use crate::sqlite::SqliteStore;
use crate::store::{AccountStore, StoreError};

/// What a data directory holds that others must not read: its keys and the SQLite database
/// with its -wal and -shm files (password and token hashes).
const PRIVATE_FILES: [&str; 9] = [
    "token.key",
    "admin.key",
    "link.key",
    "accounts.db",
    "accounts.db-wal",
    "accounts.db-shm",
    "sessions.db",
    "sessions.db-wal",
    "sessions.db-shm",
];

/// A data directory that is its owner's alone.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    /// Each path made owner-only, with the mode it had, to be logged once logging is up.
    tightened: Vec<(PathBuf, u32)>,
    /// Held while this process uses the directory alone ([`DataDir::lock`]).
    lock: Option<std::fs::File>,
}

impl DataDir {
    /// Creates `path` (0700) when it is missing; it and the files of [`PRIVATE_FILES`] lose any
    /// group or other permission they have (older versions made them 0755 and 0644). A
    /// directory every user may write to is an error.
    pub fn open(path: &Path) -> Result<DataDir, String> {
        owner_only::create_dir_all(path).map_err(|e| format!("data_dir {}: {e}", path.display()))?;
        let mut dir = DataDir { path: path.to_path_buf(), tightened: Vec::new(), lock: None };
        dir.tighten(path.to_path_buf())?;
        for name in PRIVATE_FILES {
            dir.keep_private(name)?;
        }
        Ok(dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the directory for this process alone, for as long as it runs (an advisory lock
    /// on the file `lock` in it): a second process on it is an error, before it touches what
    /// the first one keeps there.
    pub fn lock(&mut self) -> Result<(), String> {
        let path = self.path.join("lock");
        let file = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {
                self.lock = Some(file);
                Ok(())
            }
            Err(std::fs::TryLockError::WouldBlock) => Err(format!(
                "data_dir {} is in use by another process (it holds {}); stop it first, or give this one another data_dir",
                self.path.display(),
                path.display()
            )),
            Err(std::fs::TryLockError::Error(e)) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Makes the file `name` in it owner-only too, when it exists (`hermes up`: the edge's
    /// users file).
    pub fn keep_private(&mut self, name: &str) -> Result<(), String> {
        self.tighten(self.path.join(name))
    }

    fn tighten(&mut self, path: PathBuf) -> Result<(), String> {
        if let Some(mode) = owner_only::tighten(&path).map_err(|e| format!("{}: {e}", path.display()))? {
            self.tightened.push((path, mode));
        }
        Ok(())
    }

    /// Logs a warning for each path that was made owner-only.
    pub fn warn_tightened(&self) {
        for (path, mode) in &self.tightened {
            let (path, was) = (path.display().to_string(), format!("{mode:o}"));
            tracing::warn!(path, was, "other local users could read this: made it readable by its owner only");
        }
    }

    /// Its keys, each read, or made when its file is missing. A file that cannot be read or is
    /// not a key is an error naming it, never replaced.
    pub fn keys(&self) -> Result<Keys, String> {
        Ok(Keys {
            signer: self.signer("token.key")?,
            admin: self.secret("admin.key")?,
            links: self.secret("link.key")?,
        })
    }

    /// The token signing key.
    fn signer(&self, name: &str) -> Result<Signer, String> {
        let path = self.path.join(name);
        let new = || Signer::generate().map(|s| s.to_paserk()).map_err(|e| e.to_string());
        let text = owner_only::read_or_create(&path, new)?;
        Signer::from_paserk(&text).map_err(|e| format!("{}: not a token signing key: {e}", path.display()))
    }

    /// A secret (`admin.key`, `link.key`), created on first use. One that exists must be a key:
    /// at least 16 printable ASCII characters without spaces (the admin key travels in an HTTP
    /// header).
    fn secret(&self, name: &str) -> Result<String, String> {
        let path = self.path.join(name);
        let text = owner_only::read_or_create(&path, || Ok(crate::store::new_id()))?;
        let key = text.trim();
        if key.len() < 16 || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "{}: not a key (16 or more printable ASCII characters without spaces): fix it, or remove it to have a new one made",
                path.display()
            ));
        }
        Ok(key.to_owned())
    }
}

/// The keys of a data directory.
pub struct Keys {
    /// Signs access tokens (`token.key`).
    pub signer: Signer,
    /// The operator's `X-Admin-Key` (`admin.key`).
    pub admin: String,
    /// Signs download links (`link.key`).
    pub links: String,
}

/// What the API is built from besides its database.
pub struct ApiParts {
    pub keys: Keys,
    /// Where account events go.
    pub bus: Arc<dyn Bus>,
    /// Where edges read relations, ACL tables and revocations; the API writes each change there
    /// and keeps its login limits there too.
    pub directories: Option<StateDirectories>,
}

/// The accounts database: Postgres when `http.database_url` is set, else SQLite in the data
/// directory.
#[derive(Debug, Clone)]
pub enum Database {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

/// Evaluates `$body` with `$store` bound to the backend of `$db`, whichever it is.
macro_rules! with_store {
    ($db:expr, $store:ident => $body:expr) => {
        match $db {
            Database::Sqlite($store) => $body,
            Database::Postgres($store) => $body,
        }
    };
}

impl Database {
    /// Opens it and applies the migrations.
    pub async fn open(cfg: &AccountsConfig, data: &DataDir) -> Result<Database, String> {
        if cfg.database_url.is_empty() {
            let store = SqliteStore::open(&data.path.join("accounts.db"))
                .await
                .map_err(|e| format!("accounts database: {e}"))?;
            Ok(Database::Sqlite(store))
        } else {
            let store = PgStore::connect(&cfg.database_url, 16).await.map_err(|e| format!("http.database_url: {e}"))?;
            Ok(Database::Postgres(store))
        }
    }

    /// Enterprise `acme`, unless it exists: alice and bob follow each other (friends), carol
    /// follows alice, all with `password`.
    pub async fn seed_demo(&self, password: &str) -> Result<(), String> {
        with_store!(self, store => seed_demo(store, password).await)
    }

    /// What edges need to know when they start, as the database holds it now.
    pub async fn edge_state(&self) -> Result<EdgeState, String> {
        with_store!(self, store => EdgeState::load(store).await)
    }

    /// Serves the API on `cfg.addr` (HTTPS with `cfg.tls_cert`) until `stop` resolves; returns
    /// the address it listens on.
    pub async fn serve(
        self,
        cfg: &AccountsConfig,
        data: &DataDir,
        parts: ApiParts,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> Result<SocketAddr, String> {
        let files = data.path.join("files");
        let router = with_store!(self, store => router(store, cfg, parts, files));
        let tls = cfg.tls()?;
        service_kit::http::serve_with_limits(&cfg.addr, tls, router, stop, cfg.http_limits()?)
            .await
            .map_err(|e| format!("http.addr {}: {e}", cfg.addr))
    }
}

fn router<S: AccountStore>(store: S, cfg: &AccountsConfig, parts: ApiParts, files: PathBuf) -> axum::Router {
    let ApiParts { keys: Keys { signer, admin, links }, bus, directories } = parts;
    let links = crate::files::LinkSigner::new(links);
    let files = Arc::new(crate::files::DiskFiles::new(files));
    let mut state = crate::api::AccountsState::new(store, signer, cfg.clone(), admin, bus, files, links);
    if let Some(d) = &directories {
        // Every instance on this Redis counts the same attempts and failures.
        state.login_guard = Arc::new(d.login_guard(cfg.login_limits()));
    }
    state.directory = directories.as_ref().map(|d| d.relations.clone());
    state.access = directories.map(|d| d.access);
    crate::api::router(Arc::new(state))
}

/// What edges need from the database when they start, beyond the token: relations, group
/// memberships, enterprises' ACL tables and recent revocations.
#[derive(Debug)]
pub struct EdgeState {
    /// (enterprise, follower, followee)
    pub follows: Vec<(String, String, String)>,
    /// (enterprise, group, username)
    pub memberships: Vec<(String, String, String)>,
    /// Each enterprise's own tables.
    pub tables: Vec<(String, Tables)>,
    /// Those of the last [`wire::token::REVOCATION_MEMORY_MS`]: of users, and of login sessions
    /// (devices that logged out).
    pub revocations: Vec<Revocation>,
}

impl EdgeState {
    async fn load<S: AccountStore>(store: &S) -> Result<EdgeState, String> {
        let db = |e: StoreError| format!("accounts database: {e}");
        let tables = store.all_policies().await.map_err(db)?.into_iter().map(|(e, p)| {
            (e, Tables { version: p.version as u64, acl_rules: p.acl_rules, auto_subscribe: p.auto_subscribe })
        });
        let horizon = crate::store::now_ms() - wire::token::REVOCATION_MEMORY_MS;
        let revocations =
            store.revocations_since(horizon).await.map_err(db)?.into_iter().map(|(enterprise, user_id, before_ms)| {
                Revocation { enterprise, user_id, before_ms, session: String::new() }
            });
        // Devices that logged out: without these a restarted edge would take their tokens again.
        let sessions = store.session_revocations_since(horizon).await.map_err(db)?.into_iter().map(|s| Revocation {
            enterprise: s.enterprise_id,
            user_id: s.user_id,
            before_ms: s.before_ms,
            session: s.session,
        });
        Ok(EdgeState {
            follows: store.all_follows().await.map_err(db)?,
            memberships: store.all_memberships().await.map_err(db)?,
            tables: tables.collect(),
            revocations: revocations.chain(sessions).collect(),
        })
    }

    /// Writes the follows and memberships into `dir`.
    pub async fn write_relations(&self, dir: &dyn RelationDirectory) -> Result<(), String> {
        let redis = |err: String| format!("state.redis_url: {err}");
        for (e, follower, followee) in &self.follows {
            dir.set_follow(e, follower, followee, true).await.map_err(redis)?;
        }
        for (e, group, username) in &self.memberships {
            dir.set_member(e, group, username, true).await.map_err(redis)?;
        }
        Ok(())
    }

    /// Writes the tables and revocations into `dir`, where newer ones win.
    pub async fn write_access(&self, dir: &dyn AccessDirectory) -> Result<(), String> {
        let redis = |err: String| format!("state.redis_url: {err}");
        for (e, tables) in &self.tables {
            dir.save_tables(e, tables).await.map_err(redis)?;
        }
        for r in &self.revocations {
            dir.save_revocation(r).await.map_err(redis)?;
        }
        Ok(())
    }
}

async fn seed_demo<S: AccountStore>(store: &S, password: &str) -> Result<(), String> {
    let e = match store.create_enterprise("acme").await {
        Ok(e) => e,
        Err(StoreError::Conflict) => return Ok(()),
        Err(e) => return Err(e.to_string()),
    };
    let mut ids = std::collections::HashMap::new();
    for (name, display) in [("alice", "Alice"), ("bob", "Bob"), ("carol", "Carol")] {
        // A hash each, so a salt each: one hash shared by all would show anyone who reads the
        // database that they have the same password, and one cracking effort would serve all.
        let hash = service_kit::password::hash(password)?;
        let u = store.create_user(&e.id, name, display, &hash).await.map_err(|e| e.to_string())?;
        ids.insert(name, u.id);
    }
    for (a, b) in [("alice", "bob"), ("bob", "alice"), ("carol", "alice")] {
        store.set_follow(&e.id, &ids[a], &ids[b], true).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Runs a node with telemetry and the ops endpoint until Ctrl-C or SIGTERM. Its keys are read
/// (or made) before anything starts, and the directories edges read (with `state.redis_url`)
/// are refilled from the database before the API serves.
pub async fn run_until_signal(cfg: NodeConfig) -> Result<(), String> {
    let data = DataDir::open(Path::new(&cfg.data_dir))?;
    let keys = data.keys()?;
    let telemetry = service_kit::telemetry::init("accounts", &cfg.telemetry).map_err(|e| e.to_string())?;
    data.warn_tightened();
    let directories = StateDirectories::connect(&cfg.state.redis_url).await?;
    if directories.is_none() {
        tracing::warn!("state.redis_url is empty: edges cannot load relations, ACL tables or revocations");
    }
    let bus = events_bus(&cfg.bus.nats_url).await?;
    let db = Database::open(&cfg.http, &data).await?;
    if let Some(d) = &directories {
        let mark = fill_directories(&db.edge_state().await?, d).await?;
        tokio::spawn(keep_filled(db.clone(), d.clone(), mark));
    }
    let parts = ApiParts { keys, bus, directories };
    let http = db.serve(&cfg.http, &data, parts, service_kit::shutdown::signal()).await?;
    let ops = if cfg.ops.addr.is_empty() {
        None
    } else {
        let router = service_kit::http::ops_router(telemetry.prometheus.clone());
        Some(service_kit::http::serve_ops(&cfg.ops, router, service_kit::shutdown::signal()).await?)
    };
    // Listening for the signal before saying we serve: a SIGTERM sent as soon as the line
    // appears stops the node.
    let stop = service_kit::shutdown::signal();
    let ops = ops.map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(%http, %ops, "accounts serving");
    stop.await;
    tracing::info!("stopping");
    drop(telemetry);
    Ok(())
}

/// Fills the directories edges read (relations, ACL tables, revocations) with `state`; returns
/// the directories' mark as it was before (see [`StateDirectories::mark`]): a loss while they
/// are filled changes it, and [`keep_filled`] fills them again.
pub async fn fill_directories(state: &EdgeState, dirs: &StateDirectories) -> Result<String, String> {
    let mark = dirs.mark(&crate::store::new_id()).await.map_err(|e| format!("state.redis_url: {e}"))?;
    state.write_relations(dirs.relations.as_ref()).await?;
    state.write_access(dirs.access.as_ref()).await?;
    Ok(mark)
}

/// How often an accounts node looks whether Redis lost the directories.
const FILLED_CHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// Fills the directories again whenever Redis lost them (restarted without its data, flushed):
/// without it, an edge starting afterwards would read no revocations and take tokens that were
/// revoked, and no relations. Every accounts node looks; a fill is idempotent (newer wins).
/// `mark` is the directories' mark when they were last filled; a fill that fails is tried
/// again at the next look.
pub async fn keep_filled(db: Database, dirs: StateDirectories, mut mark: String) {
    loop {
        tokio::time::sleep(FILLED_CHECK).await;
        match dirs.mark(&crate::store::new_id()).await {
            Ok(now) if now == mark => {}
            Ok(_) => {
                tracing::warn!(
                    "Redis lost the directories edges read (restarted without its data?): filling them again"
                );
                match async { fill_directories(&db.edge_state().await?, &dirs).await }.await {
                    Ok(filled) => {
                        tracing::info!("directories filled again from the database");
                        mark = filled;
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot fill the directories again yet"),
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot tell whether Redis still holds the directories"),
        }
    }
}

/// NATS at `nats_url`; without it, account events go nowhere (a bus in this process that
/// nobody reads), which is said once in the log.
async fn events_bus(nats_url: &str) -> Result<Arc<dyn Bus>, String> {
    if nats_url.is_empty() {
        tracing::warn!(
            "bus.nats_url is empty: account events go nowhere, so edges do not learn of revocations, relation or ACL changes"
        );
        return Ok(Arc::new(bus::memory::MemoryBus::default()));
    }
    let nats = bus::nats::NatsBus::connect(nats_url).await.map_err(|e| format!("bus.nats_url: {e}"))?;
    Ok(Arc::new(nats))
}
