//! `wgmesh service install|uninstall`: the agent started at boot on Windows, as a Task
//! Scheduler task (see [`crate::os::boot`] for why a task rather than a Windows service).
//! Linux and macOS use the files in `etc/` instead.

use super::exit::{CliError, EXIT_COMMAND, EXIT_USAGE};
use crate::os::boot;
use crate::os::runner::{execute, SystemRunner};
use crate::os::{Plan, TargetOs};
use argh::FromArgs;

/// Start the agent at boot on Windows: a scheduled task runs `wgmesh up` as SYSTEM at
/// startup (Linux and macOS: see etc/wgmesh.service and etc/com.wgmesh.agent.plist).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "service")]
pub struct ServiceArgs {
    #[argh(subcommand)]
    action: Action,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum Action {
    Install(InstallArgs),
    Uninstall(UninstallArgs),
}

/// Register the boot task (replacing an older one) and start it now.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "install")]
pub struct InstallArgs {
    /// the wgmesh.exe the task runs (default: this program on Windows,
    /// C:\Program Files\wgmesh\wgmesh.exe in a --dry-run elsewhere)
    #[argh(option)]
    exe: Option<String>,
    /// the config file the task passes to `wgmesh up` (default
    /// C:\ProgramData\wgmesh\client.json)
    #[argh(option, default = "boot::DEFAULT_CONFIG.to_string()")]
    config: String,
    /// print the commands instead of running them (works on any OS)
    #[argh(switch)]
    dry_run: bool,
}

/// Stop the agent and delete the boot task (the tunnel stays until `wgmesh down`).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "uninstall")]
pub struct UninstallArgs {
    /// print the commands instead of running them (works on any OS)
    #[argh(switch)]
    dry_run: bool,
}

/// Runs `wgmesh service ...`.
pub fn run(args: ServiceArgs) -> Result<(), CliError> {
    let (plan, dry_run) = match args.action {
        Action::Install(a) => {
            let exe = match a.exe {
                Some(exe) => exe,
                None if TargetOs::current() == Some(TargetOs::Windows) => std::env::current_exe()
                    .map_err(|e| {
                        CliError::new(
                            EXIT_USAGE,
                            format!("cannot find this program's path ({e}); pass --exe"),
                        )
                    })?
                    .display()
                    .to_string(),
                None => boot::DEFAULT_EXE.to_string(),
            };
            let plan = boot::install(&exe, &a.config)
                .map_err(|e| CliError::new(EXIT_USAGE, e.to_string()))?;
            (plan, a.dry_run)
        }
        Action::Uninstall(a) => (boot::uninstall(), a.dry_run),
    };
    apply(&plan, dry_run)
}

fn apply(plan: &Plan, dry_run: bool) -> Result<(), CliError> {
    if dry_run {
        print!("{}", plan.render());
        return Ok(());
    }
    if TargetOs::current() != Some(TargetOs::Windows) {
        return Err(CliError::new(
            EXIT_USAGE,
            "`wgmesh service` manages the Windows boot task; on Linux install \
             etc/wgmesh.service (systemd), on macOS etc/com.wgmesh.agent.plist (launchd), as \
             etc/README.md shows (--dry-run prints the Windows commands)",
        ));
    }
    execute(plan, &mut SystemRunner::new()).map_err(|e| CliError::new(EXIT_COMMAND, e.to_string()))
}
