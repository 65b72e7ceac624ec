//! The only place wgmesh spawns processes or writes planned files.
//!
//! [`execute`] walks a [`Plan`]: writes its files atomically, then runs each command,
//! taking fallbacks and tolerating known-harmless failures. What actually happens is behind
//! the [`Runner`] trait: [`SystemRunner`] runs real processes; [`RecordingRunner`] records
//! and scripts them for tests, and fails loudly on anything it was not told to expect.

use super::{Command, Plan, PlannedFile};
use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// What a successful command printed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandOutput {
    /// Standard output, lossily decoded as UTF-8.
    pub stdout: String,
    /// Standard error (warnings of a command that still succeeded).
    pub stderr: String,
}

/// How a command failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandFailure {
    /// It ran and exited with this non-zero status.
    Exit(i32),
    /// It was killed by a signal.
    Signal,
    /// It did not finish in time and was killed.
    TimedOut(Duration),
    /// It could not be started (usually: not installed, or not in `PATH`).
    Spawn(String),
}

/// A failed command, with what is needed to act on it: the command line, how it ended, and
/// its (trimmed) stderr. When a fallback also failed, the first failure is kept in
/// `previous`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandError {
    /// The program that failed.
    pub program: String,
    /// Its arguments (never secrets: those travel on stdin).
    pub args: Vec<String>,
    /// How it ended.
    pub failure: CommandFailure,
    /// Its standard error, trimmed.
    pub stderr: String,
    /// The failure of the command this one was the fallback for.
    pub previous: Option<Box<CommandError>>,
}

impl CommandError {
    /// An error for `cmd` failing with `failure` and `stderr`.
    pub fn new(cmd: &Command, failure: CommandFailure, stderr: &str) -> CommandError {
        CommandError {
            program: cmd.program.clone(),
            args: cmd.args.clone(),
            failure,
            stderr: stderr.trim().to_string(),
            previous: None,
        }
    }

    /// The exit status, when the command ran to an exit.
    pub fn exit_status(&self) -> Option<i32> {
        match self.failure {
            CommandFailure::Exit(code) => Some(code),
            _ => None,
        }
    }
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(previous) = &self.previous {
            write!(f, "{previous}; then fallback ")?;
        }
        let line = Command::new(&self.program).args(self.args.clone());
        write!(f, "`{}` ", line.render_argv())?;
        match &self.failure {
            CommandFailure::Exit(code) => write!(f, "exited with status {code}")?,
            CommandFailure::Signal => write!(f, "was killed by a signal")?,
            CommandFailure::TimedOut(after) => {
                write!(f, "did not finish within {after:?} and was killed")?
            }
            CommandFailure::Spawn(why) => write!(
                f,
                "could not be started: {why} (is `{}` installed and in PATH?)",
                self.program
            )?,
        }
        if !self.stderr.is_empty() {
            write!(f, ": {}", self.stderr)?;
        }
        Ok(())
    }
}

impl std::error::Error for CommandError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.previous
            .as_deref()
            .map(|p| p as &(dyn std::error::Error + 'static))
    }
}

/// Why a plan stopped.
#[derive(Debug)]
pub enum ExecuteError {
    /// A planned file could not be written.
    File {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A command failed, and neither a fallback nor `allow_failure` covered it.
    Command(CommandError),
}

impl fmt::Display for ExecuteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExecuteError::File { path, source } => {
                write!(f, "cannot write {}: {source}", path.display())
            }
            ExecuteError::Command(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ExecuteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ExecuteError::File { source, .. } => Some(source),
            ExecuteError::Command(e) => e.source(),
        }
    }
}

impl From<CommandError> for ExecuteError {
    fn from(e: CommandError) -> ExecuteError {
        ExecuteError::Command(e)
    }
}

/// Carries out single steps of a plan; [`execute`] handles ordering, fallbacks and tolerated
/// failures, so implementations stay trivial.
pub trait Runner {
    /// Runs `cmd` alone (ignoring its `fallback` and `allow_failure`): success means it
    /// exited 0.
    fn run(&mut self, cmd: &Command) -> Result<CommandOutput, CommandError>;

    /// Writes a planned file so that readers see the old or the new contents, never a mix.
    fn write_file(&mut self, file: &PlannedFile) -> io::Result<()>;
}

/// Runs a plan: files first, then commands in order. A failing command runs its fallback
/// instead; a failure tolerated anywhere in a fallback chain is logged and skipped; any
/// other failure stops the plan and is returned.
pub fn execute(plan: &Plan, runner: &mut dyn Runner) -> Result<(), ExecuteError> {
    for file in &plan.files {
        runner
            .write_file(file)
            .map_err(|source| ExecuteError::File {
                path: file.path.clone(),
                source,
            })?;
    }
    for cmd in &plan.commands {
        run_chain(cmd, runner)?;
    }
    Ok(())
}

fn run_chain(cmd: &Command, runner: &mut dyn Runner) -> Result<(), CommandError> {
    let mut current = cmd;
    let mut tolerated = false;
    let mut previous: Option<CommandError> = None;
    loop {
        tolerated |= current.allow_failure;
        let mut error = match runner.run(current) {
            Ok(_) => return Ok(()),
            Err(error) => error,
        };
        error.previous = previous.take().map(Box::new);
        match current.fallback.as_deref() {
            Some(next) => {
                log::debug!("{error}; falling back to `{}`", next.render_argv());
                previous = Some(error);
                current = next;
            }
            None if tolerated => {
                log::debug!("ignoring harmless failure: {error}");
                return Ok(());
            }
            None => return Err(error),
        }
    }
}

/// How long [`SystemRunner`] lets one command run before killing it: generous for
/// `wireguard.exe /installtunnelservice`, short enough that a wedged tool cannot stall the
/// agent's loop forever.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs real processes (via `duct`) and writes real files.
#[derive(Debug, Clone)]
pub struct SystemRunner {
    /// Per-command time limit.
    pub timeout: Duration,
}

impl SystemRunner {
    /// A runner with [`DEFAULT_TIMEOUT`].
    pub fn new() -> SystemRunner {
        SystemRunner {
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl Default for SystemRunner {
    fn default() -> Self {
        SystemRunner::new()
    }
}

impl Runner for SystemRunner {
    fn run(&mut self, cmd: &Command) -> Result<CommandOutput, CommandError> {
        // wg-quick's `[#]` echo; secrets are on stdin and never part of the line.
        log::debug!("[#] {}", cmd.render_argv());
        let mut expr = duct::cmd(&cmd.program, &cmd.args);
        // duct applies the innermost (first added) `env` last, so add ours in reverse: the
        // last `VAR=value` of the command then wins, as it does in a shell.
        for (name, value) in cmd.env.iter().rev() {
            expr = expr.env(name, value);
        }
        expr = match &cmd.stdin {
            Some(payload) => expr.stdin_bytes(payload.as_bytes().to_vec()),
            None => expr.stdin_null(),
        };
        let handle = expr
            .stdout_capture()
            .stderr_capture()
            .unchecked()
            .start()
            .map_err(|e| CommandError::new(cmd, CommandFailure::Spawn(e.to_string()), ""))?;
        let output = match handle.wait_timeout(self.timeout) {
            Ok(Some(output)) => output.clone(),
            Ok(None) => {
                let _ = handle.kill();
                return Err(CommandError::new(
                    cmd,
                    CommandFailure::TimedOut(self.timeout),
                    "",
                ));
            }
            Err(e) => {
                return Err(CommandError::new(
                    cmd,
                    CommandFailure::Spawn(e.to_string()),
                    "",
                ))
            }
        };
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        if output.status.success() {
            Ok(CommandOutput { stdout, stderr })
        } else {
            let failure = match output.status.code() {
                Some(code) => CommandFailure::Exit(code),
                None => CommandFailure::Signal,
            };
            Err(CommandError::new(cmd, failure, &stderr))
        }
    }

    fn write_file(&mut self, file: &PlannedFile) -> io::Result<()> {
        crate::fsutil::write_replacing(&file.path, file.contents.as_bytes(), file.mode)
    }
}

/// What a [`RecordingRunner`] answers for one expected command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scripted {
    /// Exit 0 printing this on stdout.
    Succeed(String),
    /// Exit with this status printing this on stderr.
    Fail(i32, String),
}

/// A fake runner for tests: it answers only the commands it was told to expect, in order, and
/// panics on anything else (a panic, because an `Err` could be swallowed by `allow_failure`
/// and hide an unexpected command). Unmet expectations also panic when it is dropped.
#[derive(Debug, Default)]
pub struct RecordingRunner {
    expected: VecDeque<(String, Scripted)>,
    /// Every command (as [`Command::render_argv`]) and file (as [`PlannedFile::render`]) seen.
    pub recorded: Vec<String>,
    /// The contents of every file written, for tests to inspect (secrets included).
    pub written: Vec<(PathBuf, Vec<u8>)>,
}

impl RecordingRunner {
    /// A runner that expects nothing yet.
    pub fn new() -> RecordingRunner {
        RecordingRunner::default()
    }

    /// Expects the command rendered as `line` next, and makes it succeed.
    pub fn expect(&mut self, line: &str) -> &mut RecordingRunner {
        self.expect_scripted(line, Scripted::Succeed(String::new()))
    }

    /// Expects the command rendered as `line` next, and answers with `outcome`.
    pub fn expect_scripted(&mut self, line: &str, outcome: Scripted) -> &mut RecordingRunner {
        self.expected.push_back((line.to_string(), outcome));
        self
    }

    /// Expects the file write rendered as `line` (`# write PATH (mode 0600)`) next.
    pub fn expect_write(&mut self, line: &str) -> &mut RecordingRunner {
        self.expect(line)
    }

    /// Panics unless every expectation was met.
    pub fn assert_done(&self) {
        if let Some((line, _)) = self.expected.front() {
            panic!(
                "RecordingRunner: expected `{line}` (and {} more), but it never ran; ran: {:#?}",
                self.expected.len() - 1,
                self.recorded
            );
        }
    }

    fn next(&mut self, line: String) -> Scripted {
        match self.expected.pop_front() {
            Some((want, outcome)) if want == line => {
                self.recorded.push(line);
                outcome
            }
            Some((want, _)) => panic!(
                "RecordingRunner: unexpected `{line}`; expected `{want}`; ran before: {:#?}",
                self.recorded
            ),
            None => panic!(
                "RecordingRunner: unexpected `{line}`: no more commands expected; ran before: {:#?}",
                self.recorded
            ),
        }
    }
}

impl Runner for RecordingRunner {
    fn run(&mut self, cmd: &Command) -> Result<CommandOutput, CommandError> {
        match self.next(cmd.render_argv()) {
            Scripted::Succeed(stdout) => Ok(CommandOutput {
                stdout,
                stderr: String::new(),
            }),
            Scripted::Fail(status, stderr) => Err(CommandError::new(
                cmd,
                CommandFailure::Exit(status),
                &stderr,
            )),
        }
    }

    fn write_file(&mut self, file: &PlannedFile) -> io::Result<()> {
        match self.next(file.render()) {
            Scripted::Succeed(_) => {
                self.written
                    .push((file.path.clone(), file.contents.as_bytes().to_vec()));
                Ok(())
            }
            Scripted::Fail(_, message) => Err(io::Error::other(message)),
        }
    }
}

impl Drop for RecordingRunner {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.assert_done();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::{Payload, Secret};

    fn ip(args: &[&str]) -> Command {
        Command::new("ip").args(args.iter().copied())
    }

    #[test]
    fn fallback_runs_when_the_command_fails() {
        let plan = Plan::of(vec![
            ip(&["link", "add", "dev", "wg0", "type", "wireguard"])
                .or_else(Command::new("wireguard-go").arg("wg0")),
            ip(&["link", "set", "up", "dev", "wg0"]),
        ]);
        let mut runner = RecordingRunner::new();
        runner
            .expect_scripted(
                "ip link add dev wg0 type wireguard",
                Scripted::Fail(2, "Error: Unknown device type.\n".into()),
            )
            .expect("wireguard-go wg0")
            .expect("ip link set up dev wg0");
        execute(&plan, &mut runner).unwrap();
        runner.assert_done();
    }

    #[test]
    fn fallback_is_skipped_when_the_command_succeeds() {
        let plan = Plan::of(vec![ip(&[
            "link",
            "add",
            "dev",
            "wg0",
            "type",
            "wireguard",
        ])
        .or_else(Command::new("wireguard-go").arg("wg0"))]);
        let mut runner = RecordingRunner::new();
        runner.expect("ip link add dev wg0 type wireguard");
        execute(&plan, &mut runner).unwrap();
    }

    #[test]
    fn tolerated_failure_does_not_stop_the_plan() {
        let plan = Plan::of(vec![
            ip(&["link", "delete", "dev", "wg0"]).tolerate_failure(),
            ip(&["link", "add", "dev", "wg0", "type", "wireguard"]),
        ]);
        let mut runner = RecordingRunner::new();
        runner
            .expect_scripted(
                "ip link delete dev wg0",
                Scripted::Fail(1, "Cannot find device \"wg0\"".into()),
            )
            .expect("ip link add dev wg0 type wireguard");
        execute(&plan, &mut runner).unwrap();
    }

    #[test]
    fn first_real_failure_stops_with_program_args_status_and_stderr() {
        let plan = Plan::of(vec![
            ip(&["-4", "address", "add", "10.100.0.5/32", "dev", "wg0"]),
            ip(&["link", "set", "up", "dev", "wg0"]),
        ]);
        let mut runner = RecordingRunner::new();
        runner.expect_scripted(
            "ip -4 address add 10.100.0.5/32 dev wg0",
            Scripted::Fail(2, "RTNETLINK answers: File exists\n\n".into()),
        );
        let err = execute(&plan, &mut runner).unwrap_err();
        assert_eq!(
            err.to_string(),
            "`ip -4 address add 10.100.0.5/32 dev wg0` exited with status 2: \
             RTNETLINK answers: File exists"
        );
        match err {
            ExecuteError::Command(e) => {
                assert_eq!(e.program, "ip");
                assert_eq!(e.exit_status(), Some(2));
            }
            other => panic!("{other:?}"),
        }
        runner.assert_done(); // the second command never ran
    }

    #[test]
    fn failed_fallback_reports_both_failures() {
        let plan = Plan::of(vec![ip(&[
            "link",
            "add",
            "dev",
            "wg0",
            "type",
            "wireguard",
        ])
        .or_else(Command::new("wireguard-go").arg("wg0"))]);
        let mut runner = RecordingRunner::new();
        runner
            .expect_scripted(
                "ip link add dev wg0 type wireguard",
                Scripted::Fail(2, "Error: Unknown device type.".into()),
            )
            .expect_scripted("wireguard-go wg0", Scripted::Fail(1, "no tun".into()));
        let err = execute(&plan, &mut runner).unwrap_err().to_string();
        assert!(
            err.contains("Unknown device type") && err.contains("fallback `wireguard-go wg0`"),
            "{err}"
        );
    }

    #[test]
    fn files_are_written_before_commands() {
        let plan = Plan {
            files: vec![PlannedFile::private(
                "/tmp/x.conf",
                Payload::Secret(Secret::new("key", b"k".to_vec())),
            )],
            commands: vec![Command::new("true")],
        };
        let mut runner = RecordingRunner::new();
        runner
            .expect_write("# write /tmp/x.conf (mode 0600)")
            .expect("true");
        execute(&plan, &mut runner).unwrap();
        assert_eq!(
            runner.written,
            vec![(PathBuf::from("/tmp/x.conf"), b"k".to_vec())]
        );
    }

    #[test]
    #[should_panic(expected = "unexpected `ip link delete dev wg1`")]
    fn recording_runner_panics_on_unexpected_commands_even_if_tolerated() {
        let plan = Plan::of(vec![
            ip(&["link", "delete", "dev", "wg1"]).tolerate_failure()
        ]);
        let mut runner = RecordingRunner::new();
        runner.expect("ip link delete dev wg0");
        let _ = execute(&plan, &mut runner);
    }

    #[test]
    fn system_runner_passes_stdin_and_env_and_reports_failures() {
        let mut runner = SystemRunner::new();
        let cat = Command::new("sh")
            .args(["-c", "printf '%s|' \"$WGM_TEST\"; cat"])
            .env("WGM_TEST", "a b")
            .stdin(Payload::Secret(Secret::new("key", b"secret\n".to_vec())));
        assert_eq!(runner.run(&cat).unwrap().stdout, "a b|secret\n");

        let last_wins = Command::new("sh")
            .args(["-c", "printf %s \"$WGM_TEST\""])
            .env("WGM_TEST", "first")
            .env("WGM_TEST", "last");
        assert_eq!(runner.run(&last_wins).unwrap().stdout, "last");

        let fail = Command::new("sh").args(["-c", "echo '  oops  ' >&2; exit 3"]);
        let err = runner.run(&fail).unwrap_err();
        assert_eq!(err.failure, CommandFailure::Exit(3));
        assert_eq!(err.stderr, "oops");

        let missing = Command::new("wgmesh-no-such-program-xyz");
        let err = runner.run(&missing).unwrap_err();
        assert!(matches!(err.failure, CommandFailure::Spawn(_)), "{err}");
        assert!(err.to_string().contains("installed"), "{err}");

        let slow = SystemRunner {
            timeout: Duration::from_millis(100),
        }
        .run(&Command::new("sleep").arg("5"))
        .unwrap_err();
        assert!(
            matches!(slow.failure, CommandFailure::TimedOut(_)),
            "{slow}"
        );
    }
}
