use std::path::PathBuf;

use embedded_state::SqliteStreams;

/// A directory of its own under the system's temporary one, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let dir = std::env::temp_dir().join(format!("hermes-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn sqlite_streams_meet_the_contract() {
    let dir = TempDir::new("streams-contract");
    let streams =
        SqliteStreams::open(&dir.0.join("streams.db"), broker::streams::contract::RETENTION).await.expect("open");
    broker::streams::contract::check(&streams, "contract").await;
}
