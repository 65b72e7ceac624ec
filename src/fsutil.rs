//! Durable file writes: every state file wgmesh owns is replaced atomically, so a crash or
//! `kill -9` leaves either the old file or the new one, never a torn mix.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Adds the path to an io::Error so the message says which file failed.
pub fn with_path(err: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(err.kind(), format!("{what} {}: {err}", path.display()))
}

/// Writes `bytes` to `path` atomically: a temp file in the same folder, fsync, rename, then
/// fsync of the folder so the rename itself survives a power cut. `mode` applies on Unix
/// (0o600 for anything holding a key).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = parent_dir(path);
    fs::create_dir_all(&dir).map_err(|e| with_path(e, "cannot create folder", &dir))?;
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let _ = fs::remove_file(&tmp); // a leftover of a crashed earlier run
    let result = (|| {
        let mut file = open_new(&tmp, mode)?;
        #[cfg(unix)]
        {
            // The umask may have cleared bits of `mode`; say exactly what we mean.
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(fs::Permissions::from_mode(mode))?;
        }
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)?;
        sync_dir(&dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| with_path(e, "cannot write", path))
}

/// Like [`write_atomic`], but a file that cannot be replaced because it is a mount point
/// (a bind-mounted `/etc/hosts` in a container or under `ip netns exec`: rename(2) says
/// EBUSY) is rewritten in place instead, which is not atomic: a reader may briefly see it
/// short. Said once per process at warn level, since nothing better is possible there.
pub fn write_replacing(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    match write_atomic(path, bytes, mode) {
        Err(e) if e.kind() == io::ErrorKind::ResourceBusy => {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                log::warn!(
                    "{} is a mount point (a bind mount, as in containers and `ip netns exec`) \
                     and cannot be replaced atomically: rewriting it in place",
                    path.display()
                )
            });
            write_in_place(path, bytes).map_err(|e| with_path(e, "cannot rewrite", path))
        }
        other => other,
    }
}

/// Truncates and rewrites an existing file, keeping its inode (and so any mount on it).
fn write_in_place(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).truncate(true).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Creates (truncating) a file with `mode` permissions from the start, so a secret is never
/// readable by others even for an instant.
pub fn open_new(path: &Path, mode: u32) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    options.open(path)
}

/// Flushes a folder's entries to disk (a no-op where the OS cannot open folders).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// The folder holding `path` ("." for a bare file name).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The user's config folder for wgmesh (design 7.2: `~/.config/wireguard-mesh`), honouring
/// `XDG_CONFIG_HOME`.
pub fn config_dir() -> PathBuf {
    if let Some(xdg) = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("wireguard-mesh");
    }
    let home = std::env::var_os("HOME")
        .or_else(|| std::env::var_os("USERPROFILE"))
        .unwrap_or_else(|| ".".into());
    PathBuf::from(home).join(".config").join("wireguard-mesh")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_content_and_sets_mode() {
        let dir = std::env::temp_dir().join(format!("wgmesh-fsutil-{}", std::process::id()));
        let path = dir.join("sub").join("key");
        write_atomic(&path, b"one", 0o600).unwrap();
        write_atomic(&path, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let leftovers: Vec<_> = fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp files left behind");
        fs::remove_dir_all(&dir).unwrap();
    }
}
