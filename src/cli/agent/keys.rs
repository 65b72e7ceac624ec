//! `genkey` and `pubkey`: WireGuard key utilities like `wg genkey` and `wg pubkey`, needing
//! no config, server or interface.

use crate::cli::exit::{CliError, EXIT_USAGE};
use crate::cli::output::write_stdout;
use crate::keys::PrivateKey;
use argh::FromArgs;
use std::io::Read;

/// Print a new private key in base64, like `wg genkey`.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "genkey")]
pub struct GenkeyArgs {}

/// Read a private key on stdin and print its public key, like `wg pubkey`.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "pubkey")]
pub struct PubkeyArgs {}

/// `wgmesh genkey`.
pub fn genkey(_: GenkeyArgs) -> Result<(), CliError> {
    write_stdout(&format!("{}\n", PrivateKey::generate().to_base64()))
}

/// `wgmesh pubkey`.
pub fn pubkey(_: PubkeyArgs) -> Result<(), CliError> {
    let mut input = String::new();
    std::io::stdin()
        .take(1024)
        .read_to_string(&mut input)
        .map_err(|e| {
            CliError::new(
                EXIT_USAGE,
                format!("cannot read a private key on stdin: {e}"),
            )
        })?;
    let key = PrivateKey::from_base64(&input)
        .map_err(|e| CliError::new(EXIT_USAGE, format!("stdin: {e}")))?;
    write_stdout(&format!("{}\n", key.public_key().to_base64()))
}
