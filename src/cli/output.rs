//! Where output goes: logs to stderr (coloured only on a terminal), machine-readable output to
//! stdout, where a closed pipe (`| head`) is not an error.

use super::exit::{CliError, EXIT_INTERNAL};
use crate::types::InvalidValue;
use serde::Serialize;
use std::io::{IsTerminal, Write};

/// Log verbosity, as the design's levels (10.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLevel(pub log::LevelFilter);

impl std::str::FromStr for LogLevel {
    type Err = InvalidValue;
    fn from_str(value: &str) -> Result<Self, InvalidValue> {
        value
            .parse::<log::LevelFilter>()
            .map(LogLevel)
            .map_err(|_| {
                InvalidValue(format!(
                    "unknown log level {value:?}: use error, warn, info, debug or trace"
                ))
            })
    }
}

impl Default for LogLevel {
    fn default() -> Self {
        LogLevel(log::LevelFilter::Info)
    }
}

/// Sends logs to stderr (stdout is for machine-readable output), coloured only on a terminal.
pub fn init_logging(level: LogLevel) {
    let config = simplelog::ConfigBuilder::new()
        .set_time_level(log::LevelFilter::Error)
        .set_target_level(log::LevelFilter::Off)
        .set_thread_level(log::LevelFilter::Off)
        // Our own debug lines say which request went where; the HTTP crates' are noise.
        .add_filter_ignore_str("ureq")
        .add_filter_ignore_str("rustls")
        .build();
    let colour = if std::io::stderr().is_terminal() {
        simplelog::ColorChoice::Auto
    } else {
        simplelog::ColorChoice::Never
    };
    let _ = simplelog::TermLogger::init(level.0, config, simplelog::TerminalMode::Stderr, colour);
}

/// Pretty JSON and a newline on stdout.
pub(super) fn print_json<T: Serialize>(value: &T) -> Result<(), CliError> {
    let mut text = serde_json::to_string_pretty(value).expect("output types serialize");
    text.push('\n');
    write_stdout(&text)
}

/// Writes to stdout; a closed pipe (`| head`) is not an error.
pub(super) fn write_stdout(text: &str) -> Result<(), CliError> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(CliError::new(
            EXIT_INTERNAL,
            format!("cannot write to stdout: {e}"),
        )),
        _ => Ok(()),
    }
}
