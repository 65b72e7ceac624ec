//! Starting the agent at boot on Windows: a Task Scheduler task that runs `wgmesh up` as
//! SYSTEM when the machine starts, the Windows counterpart of `etc/wgmesh.service` (systemd)
//! and `etc/com.wgmesh.agent.plist` (launchd).
//!
//! Why a scheduled task rather than a Windows service: `wgmesh up` is an ordinary console
//! program that stops on Ctrl-C; a service must answer the service control manager's
//! protocol (`StartServiceCtrlDispatcher`, status reports, stop requests), which would mean a
//! second entry point and the `windows-service` crate's FFI in the agent's loop. Task
//! Scheduler starts an ordinary program at boot as SYSTEM, without a time limit and
//! restarted when it fails, and its definition is plain XML: the whole installation is a
//! plan of argv vectors tested here like every other plan. The tunnel itself stays
//! wireguard-windows' service (`WireGuardTunnel$NAME`), which already starts at boot.

use super::{Command, Plan};

/// The task's name (`schtasks /TN`), in the root folder of the task library.
pub const TASK_NAME: &str = "wgmesh";

/// Where `wgmesh service install` expects the binary unless told otherwise.
pub const DEFAULT_EXE: &str = r"C:\Program Files\wgmesh\wgmesh.exe";

/// The agent's configuration file the task passes to `wgmesh up` unless told otherwise:
/// inside the protected folder the tunnel configuration lives in.
pub const DEFAULT_CONFIG: &str = r"C:\ProgramData\wgmesh\client.json";

/// A path that cannot be put into the task's command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadPath(pub String);

impl std::fmt::Display for BadPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} cannot go into the boot task: a Windows path must be absolute (C:\\...) and \
             must not contain a double quote or a line break",
            self.0
        )
    }
}

impl std::error::Error for BadPath {}

/// An absolute Windows path without the characters that would break out of its quotes in
/// the task's command line (`"`) or its XML line.
fn checked(path: &str) -> Result<&str, BadPath> {
    let bytes = path.as_bytes();
    let absolute =
        bytes.len() > 3 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':' && bytes[2] == b'\\'
            || path.starts_with(r"\\");
    if !absolute || path.contains(['"', '\n', '\r']) {
        return Err(BadPath(path.to_owned()));
    }
    Ok(path)
}

/// XML text escaping for element content.
fn xml_text(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The Task Scheduler definition (schema 1.2): at boot, as SYSTEM (`S-1-5-18`) with the
/// highest privileges, `EXE up --config CONFIG`; no execution time limit (the default is
/// 72 hours, after which Task Scheduler would kill the agent), Task Scheduler's
/// restart-on-failure every minute, on battery too, and never twice at once. `etc/wgmesh-task.xml` is this for
/// the default paths.
pub fn task_xml(exe: &str, config: &str) -> Result<String, BadPath> {
    let (exe, config) = (checked(exe)?, checked(config)?);
    let arguments = format!("up --config \"{config}\"");
    Ok(format!(
        r#"<?xml version="1.0" encoding="UTF-16"?>
<Task version="1.2" xmlns="http://schemas.microsoft.com/windows/2004/02/mit/task">
  <RegistrationInfo>
    <Description>wgmesh agent: keeps this machine in the WireGuard mesh (installed by wgmesh service install)</Description>
    <URI>\{TASK_NAME}</URI>
  </RegistrationInfo>
  <Triggers>
    <BootTrigger>
      <Enabled>true</Enabled>
    </BootTrigger>
  </Triggers>
  <Principals>
    <Principal id="Author">
      <UserId>S-1-5-18</UserId>
      <RunLevel>HighestAvailable</RunLevel>
    </Principal>
  </Principals>
  <Settings>
    <MultipleInstancesPolicy>IgnoreNew</MultipleInstancesPolicy>
    <DisallowStartIfOnBatteries>false</DisallowStartIfOnBatteries>
    <StopIfGoingOnBatteries>false</StopIfGoingOnBatteries>
    <AllowHardTerminate>true</AllowHardTerminate>
    <StartWhenAvailable>true</StartWhenAvailable>
    <RunOnlyIfNetworkAvailable>false</RunOnlyIfNetworkAvailable>
    <AllowStartOnDemand>true</AllowStartOnDemand>
    <Enabled>true</Enabled>
    <Hidden>false</Hidden>
    <RunOnlyIfIdle>false</RunOnlyIfIdle>
    <WakeToRun>false</WakeToRun>
    <ExecutionTimeLimit>PT0S</ExecutionTimeLimit>
    <Priority>7</Priority>
    <RestartOnFailure>
      <Interval>PT1M</Interval>
      <Count>999</Count>
    </RestartOnFailure>
  </Settings>
  <Actions Context="Author">
    <Exec>
      <Command>{}</Command>
      <Arguments>{}</Arguments>
    </Exec>
  </Actions>
</Task>
"#,
        xml_text(exe),
        xml_text(&arguments)
    ))
}

/// `powershell.exe` running a fixed script; values reach it only through environment
/// variables, never pasted into its text.
fn powershell(script: &str) -> Command {
    Command::new("powershell.exe").args(["-NoProfile", "-NonInteractive", "-Command", script])
}

/// Registers the boot task (replacing an older definition) and starts it now.
/// `Register-ScheduledTask -Xml` takes the definition as a string, passed in an environment
/// variable: no file a user could swap between writing and registering.
pub fn install(exe: &str, config: &str) -> Result<Plan, BadPath> {
    let xml = task_xml(exe, config)?;
    Ok(Plan::of(vec![
        powershell(
            "$ErrorActionPreference = \"Stop\"; \
             Register-ScheduledTask -TaskName $env:WGMESH_TASK -Xml $env:WGMESH_TASK_XML -Force \
             | Out-Null",
        )
        .env("WGMESH_TASK", TASK_NAME)
        .env("WGMESH_TASK_XML", xml),
        Command::new("schtasks.exe").args(["/Run", "/TN", TASK_NAME]),
    ]))
}

/// Stops the running agent (Task Scheduler ends its process: the tunnel and its routes
/// stay until `wgmesh down`) and deletes the task.
pub fn uninstall() -> Plan {
    Plan::of(vec![
        Command::new("schtasks.exe")
            .args(["/End", "/TN", TASK_NAME])
            .tolerate_failure(),
        Command::new("schtasks.exe").args(["/Delete", "/TN", TASK_NAME, "/F"]),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golden(name: &str, actual: &str) {
        let path = format!("{}/{name}", env!("CARGO_MANIFEST_DIR"));
        if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
            std::fs::write(&path, actual).unwrap();
            return;
        }
        let expected = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{path}: {e}; UPDATE_GOLDEN=1 creates it"));
        assert!(
            expected == actual,
            "{path} differs (UPDATE_GOLDEN=1 rewrites it after you check):\n{actual}"
        );
    }

    #[test]
    fn the_shipped_task_file_is_what_install_registers() {
        let xml = task_xml(DEFAULT_EXE, DEFAULT_CONFIG).unwrap();
        golden("etc/wgmesh-task.xml", &xml);
        assert!(xml.contains("<BootTrigger>"));
        assert!(xml.contains("<UserId>S-1-5-18</UserId>"));
        assert!(xml.contains("<ExecutionTimeLimit>PT0S</ExecutionTimeLimit>"));
        assert!(xml.contains(
            "<Arguments>up --config &quot;C:\\ProgramData\\wgmesh\\client.json&quot;</Arguments>"
        ));
    }

    #[test]
    fn install_registers_then_starts_and_uninstall_ends_then_deletes() {
        // The whole plans are goldens (tests/golden/windows_service_*.txt); here, the order.
        let plan = install(DEFAULT_EXE, DEFAULT_CONFIG).unwrap();
        let xml = task_xml(DEFAULT_EXE, DEFAULT_CONFIG).unwrap();
        assert_eq!(plan.commands.len(), 2);
        assert!(plan.commands[0]
            .env
            .contains(&("WGMESH_TASK_XML".to_string(), xml)));
        assert_eq!(plan.commands[1].render(), "schtasks.exe /Run /TN wgmesh");
        assert_eq!(
            uninstall().render(),
            "schtasks.exe /End /TN wgmesh || true\nschtasks.exe /Delete /TN wgmesh /F\n"
        );
    }

    #[test]
    fn paths_that_would_break_the_command_line_are_refused() {
        for bad in [
            "wgmesh.exe",
            "C:\\a\\b.exe\"",
            "C:\\x\"\\y.exe",
            "/usr/bin/wgmesh",
            "C:\\a\nb.exe",
        ] {
            assert!(task_xml(bad, DEFAULT_CONFIG).is_err(), "{bad:?}");
            assert!(task_xml(DEFAULT_EXE, bad).is_err(), "{bad:?}");
        }
        let err = install("relative.exe", DEFAULT_CONFIG).unwrap_err();
        assert!(err.to_string().contains("must be absolute"), "{err}");
        let xml = task_xml(r"C:\Tools & Co\<w>.exe", r"\\server\share\c.json").unwrap();
        assert!(xml.contains(r"<Command>C:\Tools &amp; Co\&lt;w&gt;.exe</Command>"));
    }
}
