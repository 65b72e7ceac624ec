//! Where the engine's plans go (run through a [`Runner`], or printed for `--dry-run`) and
//! how a sequence of [`Step`]s is applied: run, check the host, record, save. Shared by a
//! sync and by `down`.

use crate::agent::error::AgentError;
use crate::agent::plan::{HostCheck, Step};
use crate::agent::state::config::ClientConfig;
use crate::os::runner::{execute, Runner};
use crate::os::{self, observe_windows, Plan};
use std::io::Write;
use std::path::Path;

/// Where plans go: run for real, or printed one command per line for `--dry-run`.
pub enum Sink<'a> {
    /// Execute through this runner.
    Run(&'a mut dyn Runner),
    /// Print to this writer (stdout for `--dry-run`).
    Print(&'a mut dyn Write),
}

impl Sink<'_> {
    /// Runs (or prints) one plan; an empty plan does nothing.
    pub fn apply(&mut self, plan: &Plan) -> Result<(), AgentError> {
        if plan.is_empty() {
            return Ok(());
        }
        match self {
            Sink::Run(runner) => execute(plan, *runner).map_err(AgentError::from),
            Sink::Print(out) => {
                let _ = writeln!(out, "{}", plan.render().trim_end());
                Ok(())
            }
        }
    }

    /// Says something about the run: a `#` comment line among the printed plans, or an
    /// info log line when plans run.
    pub fn note(&mut self, text: &str) {
        match self {
            Sink::Run(_) => log::info!("{text}"),
            Sink::Print(out) => {
                let _ = writeln!(out, "# {text}");
            }
        }
    }

    /// Whether plans are only printed.
    pub fn is_dry_run(&self) -> bool {
        matches!(self, Sink::Print(_))
    }

    /// Checks the host before the next step runs, through the runner that runs the plans
    /// (a dry run checks nothing: it changes nothing either).
    pub(in crate::agent) fn check(&mut self, check: &HostCheck) -> Result<(), AgentError> {
        let Sink::Run(runner) = self else {
            return Ok(());
        };
        let runner: &mut dyn Runner = &mut **runner;
        match check {
            HostCheck::ServiceGone(name) => observe_windows::wait_service_gone(
                runner,
                name,
                observe_windows::SERVICE_GONE_TIMEOUT,
                observe_windows::SERVICE_POLL,
            ),
            HostCheck::TunnelUp(name) => observe_windows::wait_tunnel_up(
                runner,
                name,
                observe_windows::TUNNEL_UP_TIMEOUT,
                observe_windows::SERVICE_POLL,
            ),
            HostCheck::ConfigDirProtected => observe_windows::check_config_dir(
                runner,
                &os::windows_config_dir_acl(),
                &os::windows_config_dir(),
            ),
        }
        .map_err(|e| AgentError::Usage(e.0))
    }
}

/// Runs (or prints) each step's plan, then records what it changed and saves the config
/// (never in a dry run, and only when `persist`).
pub(in crate::agent) fn apply_steps(
    config: &mut ClientConfig,
    path: &Path,
    persist: bool,
    steps: &[Step],
    sink: &mut Sink<'_>,
) -> Result<(), AgentError> {
    for step in steps {
        sink.apply(&step.plan)?;
        if let Some(check) = &step.check {
            sink.check(check)?;
        }
        if let Some(record) = &step.record {
            if !sink.is_dry_run() {
                config.applied = record.clone();
                if persist {
                    config.save(path)?;
                }
            }
        }
        if let Some(note) = &step.note {
            log::info!("{note}");
        }
    }
    Ok(())
}
