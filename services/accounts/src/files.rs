//! Large attachments (paper 001 §3.3): uploaded over HTTP, stored by content hash, fetched
//! through an expiring signed link. What the upload answers is what a hyperlink envelope
//! (`wire::pb::Hyperlink`) carries; the files themselves never travel over MQTT.

use std::path::PathBuf;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWriteExt};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
pub type ByteStream<'a> = Pin<Box<dyn Stream<Item = Result<Bytes, String>> + Send + 'a>>;
pub type Reader = Pin<Box<dyn AsyncRead + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("the file is larger than {0} bytes")]
    TooLarge(u64),
    #[error("reading the upload: {0}")]
    Body(String),
    #[error("file store: {0}")]
    Io(String),
}

/// Content-addressed storage: the same bytes are stored once.
pub trait FileStore: Send + Sync + std::fmt::Debug + 'static {
    /// Stores what `body` yields, refusing more than `max` bytes; returns (SHA-256 hex, size).
    fn put<'a>(&'a self, body: ByteStream<'a>, max: u64) -> BoxFuture<'a, Result<(String, u64), FileError>>;
    /// The stored file and its size, if there is one with this hash.
    fn open<'a>(&'a self, sha256: &'a str) -> BoxFuture<'a, Result<Option<(Reader, u64)>, FileError>>;
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Files under a directory, as `<dir>/<first two hex digits>/<sha256>`.
#[derive(Debug)]
pub struct DiskFiles {
    dir: PathBuf,
}

impl DiskFiles {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DiskFiles { dir: dir.into() }
    }

    fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(&sha256[..2]).join(sha256)
    }

    async fn write(
        &self,
        mut body: ByteStream<'_>,
        max: u64,
        tmp: &std::path::Path,
    ) -> Result<(String, u64), FileError> {
        let io = |e: std::io::Error| FileError::Io(e.to_string());
        let mut file = tokio::fs::File::create(tmp).await.map_err(io)?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(FileError::Body)?;
            size += chunk.len() as u64;
            if size > max {
                return Err(FileError::TooLarge(max));
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(io)?;
        }
        file.sync_all().await.map_err(io)?;
        let hash = hex(&hasher.finalize());
        let path = self.path(&hash);
        tokio::fs::create_dir_all(path.parent().unwrap_or(&self.dir)).await.map_err(io)?;
        tokio::fs::rename(tmp, &path).await.map_err(io)?;
        Ok((hash, size))
    }
}

impl FileStore for DiskFiles {
    fn put<'a>(&'a self, body: ByteStream<'a>, max: u64) -> BoxFuture<'a, Result<(String, u64), FileError>> {
        Box::pin(async move {
            let tmp_dir = self.dir.join("tmp");
            tokio::fs::create_dir_all(&tmp_dir).await.map_err(|e| FileError::Io(e.to_string()))?;
            let tmp = tmp_dir.join(crate::store::new_id());
            let result = self.write(body, max, &tmp).await;
            if result.is_err() {
                let _ = tokio::fs::remove_file(&tmp).await;
            }
            result
        })
    }

    fn open<'a>(&'a self, sha256: &'a str) -> BoxFuture<'a, Result<Option<(Reader, u64)>, FileError>> {
        Box::pin(async move {
            if !is_sha256_hex(sha256) {
                return Ok(None);
            }
            match tokio::fs::File::open(self.path(sha256)).await {
                Ok(f) => {
                    let size = f.metadata().await.map_err(|e| FileError::Io(e.to_string()))?.len();
                    Ok(Some((Box::pin(f) as Reader, size)))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(FileError::Io(e.to_string())),
            }
        })
    }
}

/// Signs and checks download links: HMAC-SHA256 over hash, content type, name and expiry.
#[derive(Clone)]
pub struct LinkSigner {
    key: Vec<u8>,
}

impl std::fmt::Debug for LinkSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkSigner")
    }
}

/// What a signed link names.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Link {
    pub ct: String,
    pub name: String,
    pub exp: i64,
    pub sig: String,
}

impl LinkSigner {
    pub fn new(key: impl Into<Vec<u8>>) -> Self {
        LinkSigner { key: key.into() }
    }

    fn mac(&self, sha256: &str, ct: &str, name: &str, exp: i64) -> hmac::Hmac<Sha256> {
        let mut mac =
            <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        for part in [sha256, ct, name, &exp.to_string()] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        mac
    }

    pub fn sign(&self, sha256: &str, ct: &str, name: &str, exp: i64) -> String {
        hex(&self.mac(sha256, ct, name, exp).finalize().into_bytes())
    }

    /// True if `link` was signed by us for this file and has not expired at `now_ms`.
    pub fn verify(&self, sha256: &str, link: &Link, now_ms: i64) -> bool {
        let Some(sig) = (0..link.sig.len() / 2)
            .map(|i| link.sig.get(2 * i..2 * i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
            .collect::<Option<Vec<u8>>>()
        else {
            return false;
        };
        link.exp > now_ms && self.mac(sha256, &link.ct, &link.name, link.exp).verify_slice(&sig).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_verify_only_unchanged_and_unexpired() {
        let s = LinkSigner::new(b"k".to_vec());
        let h = sha256_hex(b"data");
        let link = Link {
            ct: "image/png".into(),
            name: "a.png".into(),
            exp: 2000,
            sig: s.sign(&h, "image/png", "a.png", 2000),
        };
        assert!(s.verify(&h, &link, 1000));
        assert!(!s.verify(&h, &link, 2000), "expired");
        assert!(!s.verify(&sha256_hex(b"other"), &link, 1000), "another file");
        assert!(!s.verify(&h, &Link { ct: "text/html".into(), ..link.clone() }, 1000), "another type");
        assert!(!s.verify(&h, &Link { exp: 9999, ..link.clone() }, 1000), "a later expiry");
        assert!(!s.verify(&h, &Link { sig: "zz".into(), ..link.clone() }, 1000));
        assert!(!LinkSigner::new(b"other".to_vec()).verify(&h, &link, 1000), "another key");
    }

    #[tokio::test]
    async fn disk_store_keeps_content_by_hash_and_enforces_the_limit() {
        let dir = std::env::temp_dir().join(format!("hermes-files-{}", crate::store::new_id()));
        let store = DiskFiles::new(&dir);
        let chunks = |parts: Vec<&'static [u8]>| -> ByteStream<'static> {
            Box::pin(futures_util::stream::iter(parts.into_iter().map(|p| Ok(Bytes::from_static(p)))))
        };
        let (hash, size) = store.put(chunks(vec![b"hello ", b"world"]), 100).await.expect("stored");
        assert_eq!((hash.as_str(), size), (sha256_hex(b"hello world").as_str(), 11));
        let (mut r, n) = store.open(&hash).await.expect("io").expect("found");
        let mut back = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut r, &mut back).await.expect("read");
        assert_eq!((back.as_slice(), n), (&b"hello world"[..], 11));
        assert!(matches!(store.put(chunks(vec![b"0123456789", b"x"]), 10).await, Err(FileError::TooLarge(10))));
        assert_eq!(std::fs::read_dir(dir.join("tmp")).expect("tmp").count(), 0, "no partial files left");
        assert!(store.open("../../etc/passwd").await.expect("io").is_none());
        let _ = std::fs::remove_dir_all(dir);
    }
}
