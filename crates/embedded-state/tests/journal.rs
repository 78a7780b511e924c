use std::path::PathBuf;
use std::sync::Arc;

use broker::journal::{SessionJournal, Stored, Write};
use embedded_state::SqliteJournal;

/// A directory of its own under the system's temporary one, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let dir = std::env::temp_dir().join(format!("hermes-{name}-{}-{n}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        TempDir(dir)
    }

    fn file(&self) -> PathBuf {
        self.0.join("journal.db")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn sqlite_journal_meets_the_contract() {
    let dir = TempDir::new("journal-contract");
    let journal = SqliteJournal::open(&dir.file()).await.expect("open");
    broker::journal::contract::check(&journal, "contract").await;
}

/// The file the writer child (below) writes to; set only in that child.
const CHILD_FILE: &str = "HERMES_JOURNAL_TEST_CHILD_FILE";
/// What the writer child prints once its batch is written (after the test harness's
/// `test writer_child ... `, on the same line).
const WRITTEN: &str = "journal written";

fn batch(s: &Arc<str>, parked: &Arc<str>) -> [Write; 7] {
    [
        Write::Record { session: s.clone(), record: b"r".to_vec(), ttl_secs: Some(3600) },
        Write::Message { session: s.clone(), entry: u64::MAX, body: b"last".to_vec() },
        Write::Message { session: s.clone(), entry: 7, body: b"seven".to_vec() },
        Write::Record { session: parked.clone(), record: b"p".to_vec(), ttl_secs: Some(1) },
        Write::Message { session: parked.clone(), entry: 1, body: b"queued".to_vec() },
        Write::Cursor { session: s.clone(), stream: "orders".into(), cursor: b"o7".to_vec() },
        Write::Cursor { session: parked.clone(), stream: "orders".into(), cursor: b"p1".to_vec() },
    ]
}

/// In the child process `what_was_written_survives_a_kill_9` starts (and passes at once
/// anywhere else): writes, says so, and waits to be killed.
#[tokio::test]
async fn writer_child() {
    let Some(file) = std::env::var_os(CHILD_FILE) else { return };
    let journal = SqliteJournal::open(std::path::Path::new(&file)).await.expect("open");
    journal.write(&batch(&"5:alice/phone".into(), &"5:alice/tablet".into())).await.expect("write");
    println!("{WRITTEN}");
    std::io::Write::flush(&mut std::io::stdout()).expect("flush");
    tokio::time::sleep(std::time::Duration::from_secs(60)).await;
}

#[tokio::test]
async fn what_was_written_survives_a_kill_9() {
    use std::io::BufRead;
    let dir = TempDir::new("journal-restart");
    let mut child = std::process::Command::new(std::env::current_exe().expect("this test binary"))
        .args(["writer_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_FILE, dir.file())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the writer");
    let stdout = child.stdout.take().expect("its stdout");
    let written = std::io::BufReader::new(stdout).lines().map_while(Result::ok).any(|line| line.ends_with(WRITTEN));
    child.kill().expect("SIGKILL the writer");
    child.wait().expect("reap the writer");
    assert!(written, "the writer never wrote");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.file()).expect("the file").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "owner-only");
    }

    // The parked session's expiry (1 s) runs out while no process has the journal open.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let journal = SqliteJournal::open(&dir.file()).await.expect("reopen");
    let (s, parked): (Arc<str>, Arc<str>) = ("5:alice/phone".into(), "5:alice/tablet".into());
    let messages = vec![(7, b"seven".to_vec()), (u64::MAX, b"last".to_vec())];
    let cursors = vec![("orders".to_string(), b"o7".to_vec())];
    let want = Stored { record: b"r".to_vec(), messages, inbound: vec![], cursors };
    assert_eq!(journal.load(&s).await.expect("load"), Some(want));
    assert_eq!(journal.load(&parked).await.expect("load"), None, "expired while closed");
    // Swept at open: the parked session's messages and cursors are gone too, not only hidden.
    let again = [Write::Record { session: parked.clone(), record: b"p2".to_vec(), ttl_secs: None }];
    journal.write(&again).await.expect("write");
    assert_eq!(
        journal.load(&parked).await.expect("load"),
        Some(Stored { record: b"p2".to_vec(), ..Stored::default() })
    );
    assert_eq!(journal.sweep_expired().await.expect("sweep"), 0);
}
