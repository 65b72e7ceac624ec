//! Commands as data: [`Command`], [`Plan`] and [`PlannedFile`], with [`Secret`] keeping
//! private keys off command lines, out of logs and out of rendered plans.

use crate::keys::PrivateKey;
use std::borrow::Cow;
use std::fmt;
use std::path::PathBuf;

/// Permission bits of every file a plan writes: files carry private keys (owner only).
pub const PRIVATE_FILE_MODE: u32 = 0o600;

/// Bytes that must never appear in a log, a rendered plan or a `Debug` dump (a private key on
/// its way to `wg`'s stdin or into a 0600 config file). The buffer is zeroed when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    what: &'static str,
    bytes: Vec<u8>,
}

impl Secret {
    /// Wraps secret bytes; `what` names them in rendered plans ("private key") instead of the
    /// value.
    pub fn new(what: &'static str, bytes: Vec<u8>) -> Secret {
        Secret { what, bytes }
    }

    /// A private key as `wg` reads it from a file or stdin: base64 and a newline.
    pub fn private_key(key: &PrivateKey) -> Secret {
        Secret::new("private key", format!("{}\n", key.to_base64()).into_bytes())
    }

    /// What the secret is, for rendered plans and logs.
    pub fn what(&self) -> &'static str {
        self.what
    }

    /// The secret bytes, for the runner to hand to a child process or a file, and nothing
    /// else.
    pub fn expose(&self) -> &[u8] {
        &self.bytes
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({}, <redacted>)", self.what)
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        for byte in self.bytes.iter_mut() {
            // SAFETY: `byte` is a valid, aligned, exclusive reference into our own buffer; the
            // volatile write only stops the compiler from eliding the wipe of a dying buffer.
            unsafe { std::ptr::write_volatile(byte, 0) };
        }
    }
}

/// Data a command reads on stdin or a planned file holds: either a secret (never shown) or
/// public text (an nftables ruleset), which [`Plan::render`] shows as a here-document so the
/// rendered plan stays complete and runnable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// Bytes that are redacted everywhere except in the child process or the file.
    Secret(Secret),
    /// Text that is safe to show.
    Text(String),
}

impl Payload {
    /// The bytes to deliver.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Payload::Secret(s) => s.expose(),
            Payload::Text(t) => t.as_bytes(),
        }
    }
}

/// One process to run: argv, extra environment, optional stdin, and what to do on failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The program, looked up in `PATH` (`ip`, `wg`, `wireguard.exe`, ...).
    pub program: String,
    /// Arguments, passed as separate argv entries (never through a shell).
    pub args: Vec<String>,
    /// Variables added to the inherited environment (macOS `WG_TUN_NAME_FILE`).
    pub env: Vec<(String, String)>,
    /// What the process reads on stdin: private keys travel here, never on argv, because argv
    /// is readable by every local user through `ps` and `/proc`.
    pub stdin: Option<Payload>,
    /// A known-harmless failure (deleting something already gone) is logged, not fatal.
    pub allow_failure: bool,
    /// Run this instead if the command fails (Linux: no kernel WireGuard, so `wireguard-go`).
    pub fallback: Option<Box<Command>>,
}

impl Command {
    /// A command with no arguments, environment or stdin that must succeed.
    pub fn new(program: impl Into<String>) -> Command {
        Command {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            stdin: None,
            allow_failure: false,
            fallback: None,
        }
    }

    /// Appends one argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Command {
        self.args.push(arg.into());
        self
    }

    /// Appends several arguments.
    pub fn args<I, S>(mut self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Adds an environment variable for this process only.
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Command {
        self.env.push((name.into(), value.into()));
        self
    }

    /// Feeds `payload` to the process's stdin.
    pub fn stdin(mut self, payload: Payload) -> Command {
        self.stdin = Some(payload);
        self
    }

    /// Marks a failure of this command (and of its fallbacks) as harmless.
    pub fn tolerate_failure(mut self) -> Command {
        self.allow_failure = true;
        self
    }

    /// Adds `fallback` at the end of this command's fallback chain.
    pub fn or_else(mut self, fallback: Command) -> Command {
        let mut slot = &mut self.fallback;
        while let Some(next) = slot {
            slot = &mut next.fallback;
        }
        *slot = Some(Box::new(fallback));
        self
    }

    /// The argv of this command alone (no fallback), quoted for a POSIX shell, with `VAR=value`
    /// prefixes: what the runner echoes as `[#] ...` before running it.
    pub fn render_argv(&self) -> String {
        let mut words: Vec<String> = Vec::new();
        for (name, value) in &self.env {
            words.push(format!("{}={}", name, quote(value)));
        }
        let program = quote(&self.program);
        // A leading word containing '=' would be read as one more assignment: force quotes.
        if program.contains('=') && !program.starts_with('\'') {
            words.push(format!("'{program}'"));
        } else {
            words.push(program.into_owned());
        }
        words.extend(self.args.iter().map(|a| quote(a).into_owned()));
        words.join(" ")
    }

    /// The whole command as one shell line (plus any here-documents on the following lines):
    /// fallbacks as `a || b`, tolerated failure as `|| true`, a secret stdin as
    /// `< /dev/stdin` with a comment naming what is withheld.
    pub fn render(&self) -> String {
        let mut line = String::new();
        let mut notes: Vec<String> = Vec::new();
        let mut heredocs: Vec<String> = Vec::new();
        let mut tolerated = false;
        let mut current = Some(self);
        while let Some(cmd) = current {
            if !line.is_empty() {
                line.push_str(" || ");
            }
            line.push_str(&cmd.render_argv());
            match &cmd.stdin {
                Some(Payload::Secret(secret)) => {
                    line.push_str(" < /dev/stdin");
                    notes.push(format!("{} on stdin, not shown", secret.what()));
                }
                Some(Payload::Text(text)) => {
                    let delimiter = heredoc_delimiter(text);
                    line.push_str(&format!(" <<'{delimiter}'"));
                    let mut doc = text.clone();
                    if !doc.ends_with('\n') {
                        doc.push('\n');
                    }
                    doc.push_str(&delimiter);
                    heredocs.push(doc);
                }
                None => {}
            }
            tolerated |= cmd.allow_failure;
            current = cmd.fallback.as_deref();
        }
        if tolerated {
            line.push_str(" || true");
        }
        if !notes.is_empty() {
            line.push_str("  # ");
            line.push_str(&notes.join("; "));
        }
        for doc in heredocs {
            line.push('\n');
            line.push_str(&doc);
        }
        line
    }
}

/// Picks a here-document delimiter that does not occur as a line of `text`.
fn heredoc_delimiter(text: &str) -> String {
    let mut delimiter = String::from("EOF");
    while text.lines().any(|l| l == delimiter) {
        delimiter.push('_');
    }
    delimiter
}

/// Quotes one word so a POSIX shell reads it back unchanged: words made only of characters
/// that are never special stay bare (so plans read like hand-typed commands); anything else is
/// single-quoted, with embedded `'` written as `'\''`.
pub fn quote(word: &str) -> Cow<'_, str> {
    let safe = |b: u8| b.is_ascii_alphanumeric() || b"_@%+=:,./-".contains(&b);
    if !word.is_empty() && word.bytes().all(safe) {
        Cow::Borrowed(word)
    } else {
        Cow::Owned(format!("'{}'", word.replace('\'', r"'\''")))
    }
}

/// A file a plan needs on disk before its commands run (the Windows tunnel configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedFile {
    /// Where to write it; the runner writes a temporary file beside it and renames it over.
    pub path: PathBuf,
    /// What to write; usually a secret, since these files carry private keys.
    pub contents: Payload,
    /// Unix permission bits; always [`PRIVATE_FILE_MODE`] for files made by the generators.
    pub mode: u32,
}

impl PlannedFile {
    /// A file readable by its owner only.
    pub fn private(path: impl Into<PathBuf>, contents: Payload) -> PlannedFile {
        PlannedFile {
            path: path.into(),
            contents,
            mode: PRIVATE_FILE_MODE,
        }
    }

    /// The comment line [`Plan::render`] shows for this file.
    pub fn render(&self) -> String {
        format!("# write {} (mode {:04o})", self.path.display(), self.mode)
    }
}

/// Everything one step needs: files to write first, then commands to run in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Written (atomically) before any command runs.
    pub files: Vec<PlannedFile>,
    /// Run in order; the first failure that is neither tolerated nor rescued stops the plan.
    pub commands: Vec<Command>,
}

impl Plan {
    /// A plan of commands only.
    pub fn of(commands: Vec<Command>) -> Plan {
        Plan {
            files: Vec::new(),
            commands,
        }
    }

    /// True when running the plan would do nothing (so the agent can skip it and log nothing).
    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.commands.is_empty()
    }

    /// Appends another plan's files and commands after this one's.
    pub fn extend(&mut self, other: Plan) {
        self.files.extend(other.files);
        self.commands.extend(other.commands);
    }

    /// The plan as a shell script body: one `# write PATH (mode 0600)` line per file, then one
    /// line per command, quoted so a POSIX shell reads each argv back unchanged. Secrets are
    /// never shown. Used for golden tests, `--dry-run` and logs.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for file in &self.files {
            out.push_str(&file.render());
            out.push('\n');
        }
        for cmd in &self.commands {
            out.push_str(&cmd.render());
            out.push('\n');
        }
        out
    }
}
