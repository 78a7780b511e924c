//! Files and directories only their owner may read: keys, the SQLite database, session files.
//! They are created with those permissions, so there is no moment in which another local user
//! could open them, and tightened when an older version left them readable.

use std::io::{self, Write};
use std::path::Path;

/// Group and other permission bits: none of them on what this module keeps.
const OTHERS: u32 = 0o077;

/// Creates the file `path`, which must not exist yet, readable and writable by its owner only
/// (0600), holding `contents`.
pub fn create(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// Replaces the file `path` (or creates it) with `contents` in one step: they are written to a
/// new owner-only file beside it, which is then renamed over it. Readers see the old file or the
/// new one, never half of one, and the new one is owner-only whatever the old one was.
pub fn replace(path: &Path, contents: &[u8]) -> io::Result<()> {
    let name = path.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file name"))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".{}.tmp", std::process::id()));
    let temp = path.with_file_name(temp_name);
    // Left behind by a process that had our id and died before its rename.
    match std::fs::remove_file(&temp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let written = create(&temp, contents).and_then(|()| std::fs::rename(&temp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

/// Creates the directory `path` and any missing parent, each listable by its owner only (0700).
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(path)
}

/// Takes every group and other permission away from `path` (a file or a directory; the one a
/// symbolic link points to). Returns the mode it had when there was something to take, `None`
/// when it was already owner-only or does not exist. A directory every user may write to is an
/// error, not changed: it is a shared one (such as `/tmp`) that others rely on, and anyone could
/// have put files of their choosing in it.
pub fn tighten(path: &Path) -> io::Result<Option<u32>> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mode = meta.permissions().mode() & 0o7777;
        if meta.is_dir() && mode & 0o002 != 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "every user may write to this directory, so it cannot hold secrets: use a directory of its own",
            ));
        }
        if mode & OTHERS == 0 {
            return Ok(None);
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & !OTHERS))?;
        Ok(Some(mode))
    }
    #[cfg(not(unix))]
    {
        let _ = (path, OTHERS);
        Ok(None)
    }
}

/// The text of the key file `path`; when there is no such file, `new()` is written there,
/// owner-only, and returned. Any other failure to read it is an error naming the file: a key is
/// never replaced because it could not be read, which would silently end every token, link or
/// admin session made with the old one.
pub fn read_or_create(path: &Path, new: impl FnOnce() -> Result<String, String>) -> Result<String, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let text = new()?;
            create(path, text.as_bytes()).map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(text)
        }
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}
