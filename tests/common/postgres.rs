//! A throwaway PostgreSQL 15 cluster for tests and benches: its own data folder under a
//! temporary folder, its own free port on 127.0.0.1, its unix socket in the same folder, and
//! a password login (scram) so the URL the server gets looks like production. Stopped and
//! removed on drop, even when the test failed.
//!
//! `initdb` and `pg_ctl` refuse to run as root, so they run as the `postgres` user (Debian's
//! `postgresql` package creates it). Nothing here skips: a machine without PostgreSQL fails
//! the test with the package to install.

#![allow(dead_code)]

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Where Debian's `postgresql` package (PostgreSQL 15) puts its programs.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// The superuser the throwaway cluster is created with.
pub const PG_USER: &str = "wgmesh";

/// One running throwaway cluster.
pub struct PgCluster {
    dir: PathBuf,
    port: u16,
    password: String,
    uid: u32,
    gid: u32,
    running: bool,
    /// The network namespace the cluster runs in (its own 127.0.0.1), if not the host's.
    netns: Option<String>,
}

fn postgres_ids() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    let line = passwd
        .lines()
        .find(|l| l.starts_with("postgres:"))
        .unwrap_or_else(|| {
            panic!(
                "no `postgres` user on this machine: install PostgreSQL 15 with \
                 `apt-get install postgresql` (the replica tests need it)"
            )
        });
    let fields: Vec<&str> = line.split(':').collect();
    (fields[2].parse().unwrap(), fields[3].parse().unwrap())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

impl PgCluster {
    /// Creates and starts a cluster; panics with the reason (and the server log) if it cannot.
    pub fn start() -> PgCluster {
        Self::start_in(None)
    }

    /// Like [`PgCluster::start`], inside network namespace `netns` (listening on that
    /// namespace's loopback, for servers started in it).
    pub fn start_in_netns(netns: &str) -> PgCluster {
        Self::start_in(Some(netns.to_owned()))
    }

    fn start_in(netns: Option<String>) -> PgCluster {
        let initdb = Path::new(PG_BIN).join("initdb");
        assert!(
            initdb.exists(),
            "{} is missing: install PostgreSQL 15 with `apt-get install postgresql` \
             (the replica tests need it)",
            initdb.display()
        );
        let (uid, gid) = postgres_ids();
        let mut seed = [0u8; 6];
        getrandom::fill(&mut seed).unwrap();
        let suffix: String = seed.iter().map(|b| format!("{b:02x}")).collect();
        let dir = std::env::temp_dir().join(format!("wgmesh-pg-{suffix}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut pw = [0u8; 12];
        getrandom::fill(&mut pw).unwrap();
        let password: String = pw.iter().map(|b| format!("{b:02x}")).collect();
        let cluster = PgCluster {
            dir,
            port: free_port(),
            password,
            uid,
            gid,
            running: false,
            netns,
        };
        std::os::unix::fs::chown(&cluster.dir, Some(uid), Some(gid)).unwrap();
        let pwfile = cluster.dir.join("pwfile");
        std::fs::write(&pwfile, format!("{}\n", cluster.password)).unwrap();
        std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid)).unwrap();
        let out = cluster
            .as_postgres(&initdb)
            .arg("-D")
            .arg(cluster.data())
            .args([
                "-U",
                PG_USER,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .args(["-E", "UTF8", "--no-sync"])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut cluster = cluster;
        cluster.start_again();
        cluster
    }

    fn as_postgres(&self, program: &Path) -> Command {
        let mut cmd = match &self.netns {
            // `ip netns exec` needs root, so the switch to `postgres` comes after it.
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns, "runuser", "-u", "postgres", "--"])
                    .arg(program);
                cmd
            }
            None => {
                let mut cmd = Command::new(program);
                cmd.uid(self.uid).gid(self.gid);
                cmd
            }
        };
        cmd.current_dir(&self.dir).stdin(Stdio::null());
        cmd
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// `postgresql://wgmesh:PASSWORD@127.0.0.1:PORT/postgres`, as `--store` takes it.
    pub fn url(&self) -> String {
        format!(
            "postgresql://{PG_USER}:{}@127.0.0.1:{}/postgres",
            self.password, self.port
        )
    }

    /// The port the cluster listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Starts the (stopped) cluster again on the same port and data folder.
    pub fn start_again(&mut self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
            self.port,
            self.dir.display()
        );
        let out = self
            .as_postgres(&Path::new(PG_BIN).join("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(["-o", &options, "-w", "-t", "60", "start"])
            .stdout(Stdio::null())
            .output()
            .expect("run pg_ctl start");
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        self.running = true;
    }

    /// Stops the cluster (fast shutdown: open sessions are cut, as in an outage).
    pub fn stop(&mut self) {
        let out = self
            .as_postgres(&Path::new(PG_BIN).join("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .args(["-m", "fast", "-w", "-t", "60", "stop"])
            .stdout(Stdio::null())
            .output()
            .expect("run pg_ctl stop");
        assert!(
            out.status.success(),
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.running = false;
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.running {
            let _ = self
                .as_postgres(&Path::new(PG_BIN).join("pg_ctl"))
                .arg("-D")
                .arg(self.data())
                .args(["-m", "immediate", "-w", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
