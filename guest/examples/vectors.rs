//! Runs every conformance vector through the native build of the guest logic.
//!
//! `cargo run -p transferd-guest --example vectors -- DIR` checks each case against its
//! `expected` outcome; `--write` fills `expected` in from the logic (for a new case, or after a
//! deliberate change of rules, to be reviewed in the diff); `--print` prints each outcome as
//! `name canonical-json`, the line format every harness shares.

use std::process::ExitCode;

use transferd_guest::logic::initiate_transfer;
use transferd_guest::vectors::run_cli;

fn main() -> ExitCode {
    run_cli(|replay, vector| initiate_transfer(replay, &vector.context, &vector.request))
}
