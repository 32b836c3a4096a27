//! Runs the velocity guest's vectors (tests/guests/velocity/vectors) through the native build
//! of its logic: `cargo run -p transferd-test-guest-velocity --example vectors -- DIR`, with
//! `--write` and `--print` as the standard guest's checker takes them.

use std::process::ExitCode;

use transferd_guest::logic::initiate_transfer_ruled;
use transferd_guest::rules::STANDARD;
use transferd_guest::vectors::run_cli;
use transferd_test_guest_velocity::RULES;

fn main() -> ExitCode {
    run_cli(|replay, vector| {
        initiate_transfer_ruled(&STANDARD, RULES, replay, &vector.context, &vector.request)
    })
}
