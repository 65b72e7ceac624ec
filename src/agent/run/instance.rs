//! One agent per configuration: `up` and `sync` hold an exclusive lock on `CONFIG.lock`
//! beside their config file (the file holds the holder's pid), so a second `up` or `sync`
//! is refused with the pid instead of fighting the first over the interface, and `down`
//! can stop the running `up` before it tears down.
//!
//! The lock is the operating system's (`std`'s `File::try_lock`: `flock(2)` on Unix,
//! `LockFileEx` on Windows): it goes away with the process, however it ends, so a crash
//! never leaves a stale lock behind; the pid inside is only for messages and signals. On
//! Windows the lock is mandatory, so another process cannot read the pid: a second agent is
//! refused all the same, without the pid in the message.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Held while an agent runs; dropping it (or the process ending) releases the lock.
#[derive(Debug)]
pub struct InstanceLock {
    file: File,
}

/// Why the lock could not be taken.
#[derive(Debug)]
pub enum LockError {
    /// Another agent holds it.
    Running {
        /// Its pid, when the lock file says.
        pid: Option<u32>,
        /// The config both would use.
        config: PathBuf,
    },
    /// The lock file could not be opened or written.
    Io(std::io::Error),
}

impl std::fmt::Display for LockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockError::Running { pid, config } => {
                let who = pid.map_or_else(
                    || "already running".to_owned(),
                    |p| format!("already running (pid {p})"),
                );
                write!(
                    f,
                    "an agent for {} is {who}: stop it with `wgmesh down` (or SIGTERM) first; \
                     a second agent would fight it over the interface",
                    config.display()
                )
            }
            LockError::Io(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for LockError {}

/// The lock file of the agent using `config`.
pub fn lock_path(config: &Path) -> PathBuf {
    let mut name = config.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    config.with_file_name(name)
}

fn open(config: &Path) -> Result<File, LockError> {
    let path = lock_path(config);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| LockError::Io(crate::fsutil::with_path(e, "cannot create", dir)))?;
    }
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
        .open(&path)
        .map_err(|e| LockError::Io(crate::fsutil::with_path(e, "cannot open", &path)))
}

/// Why [`try_lock`] did not take the lock.
enum TryLockError {
    /// Another process holds it.
    WouldBlock,
    /// Locking failed for another reason.
    Error(std::io::Error),
}

/// Takes an exclusive lock on `file` without waiting.
fn try_lock(file: &File) -> Result<(), TryLockError> {
    file.try_lock().map_err(|e| match e {
        std::fs::TryLockError::WouldBlock => TryLockError::WouldBlock,
        std::fs::TryLockError::Error(e) => TryLockError::Error(e),
    })
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// Takes the lock for `config` and records this process's pid in it.
pub fn acquire(config: &Path) -> Result<InstanceLock, LockError> {
    let mut file = open(config)?;
    match try_lock(&file) {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            return Err(LockError::Running {
                pid: read_pid(&mut file),
                config: config.to_owned(),
            })
        }
        Err(TryLockError::Error(e)) => return Err(LockError::Io(e)),
    }
    let written = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()));
    written.map_err(|e| {
        LockError::Io(crate::fsutil::with_path(
            e,
            "cannot write",
            &lock_path(config),
        ))
    })?;
    Ok(InstanceLock { file })
}

impl Drop for InstanceLock {
    fn drop(&mut self) {
        // The pid goes with the lock; the (empty) file stays, as removing it would race a
        // newcomer that has just opened it.
        let _ = self.file.set_len(0);
    }
}

/// The pid of the agent running with `config`, if one is (its lock is held).
pub fn running(config: &Path) -> Option<u32> {
    if !lock_path(config).exists() {
        return None;
    }
    // Probing takes the lock for an instant when it is free, without writing our pid.
    let mut file = open(config).ok()?;
    match try_lock(&file) {
        Err(TryLockError::WouldBlock) => read_pid(&mut file).or(Some(0)),
        _ => None,
    }
}

/// What [`stop_running`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    /// No agent was running.
    NoneRunning,
    /// The agent with this pid was asked to stop and did.
    Stopped(u32),
}

/// Why [`stop_running`] failed.
#[derive(Debug)]
pub enum StopError {
    /// The agent did not stop within the wait.
    StillRunning(u32),
    /// It could not be signalled (not ours, or not possible on this OS).
    Signal(u32, std::io::Error),
}

impl std::fmt::Display for StopError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopError::StillRunning(pid) => write!(
                f,
                "the running agent (pid {pid}) did not stop in time; it may still be removing \
                 its interface: try again, or stop it with kill -9 {pid} and run down again"
            ),
            StopError::Signal(0, e) => write!(
                f,
                "cannot stop the running agent: {e}; stop it yourself, then run down again"
            ),
            StopError::Signal(pid, e) => write!(
                f,
                "cannot stop the running agent (pid {pid}): {e}; stop it yourself, then run \
                 down again"
            ),
        }
    }
}

impl std::error::Error for StopError {}

/// Asks the agent running with `config` to stop (SIGTERM: it tells the server it goes
/// offline and removes what it set up) and waits up to `wait` for its lock to go.
pub fn stop_running(config: &Path, wait: Duration) -> Result<Stopped, StopError> {
    let Some(pid) = running(config) else {
        return Ok(Stopped::NoneRunning);
    };
    terminate(pid).map_err(|e| StopError::Signal(pid, e))?;
    let deadline = Instant::now() + wait;
    while running(config).is_some() {
        if Instant::now() >= deadline {
            return Err(StopError::StillRunning(pid));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Stopped::Stopped(pid))
}

#[cfg(unix)]
fn terminate(pid: u32) -> std::io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| std::io::Error::other("its lock file names no process"))?;
    // SAFETY: kill(2) with a positive pid and a valid signal number has no memory effects.
    if unsafe { libc::kill(pid, libc::SIGTERM) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(unix))]
fn terminate(_pid: u32) -> std::io::Result<()> {
    Err(std::io::Error::other(
        "Windows has no SIGTERM for it: press Ctrl-C in the window `wgmesh up` runs in, or \
         end the boot task (`schtasks /End /TN wgmesh`)",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_first_holders_pid_and_is_free_after_drop() {
        let dir = std::env::temp_dir().join(format!("wgmesh-instance-{}", std::process::id()));
        let config = dir.join("client.json");
        let first = acquire(&config).unwrap();
        match acquire(&config) {
            Err(LockError::Running { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("second lock: {other:?}"),
        }
        assert_eq!(running(&config), Some(std::process::id()));
        drop(first);
        assert_eq!(running(&config), None);
        assert_eq!(
            stop_running(&config, Duration::ZERO).unwrap(),
            Stopped::NoneRunning
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
