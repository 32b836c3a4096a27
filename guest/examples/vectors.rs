//! Runs every conformance vector through the native build of the guest logic.
//!
//! `cargo run -p transferd-guest --example vectors -- DIR` checks each case against its
//! `expected` outcome; `--write` fills `expected` in from the logic (for a new case, or after a
//! deliberate change of rules, to be reviewed in the diff); `--print` prints each outcome as
//! `name canonical-json`, the line format every harness shares.

use std::path::PathBuf;
use std::process::ExitCode;

use transferd_guest::logic::initiate_transfer;
use transferd_guest::vectors::{Vector, canonical, outcome};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let write = args.iter().any(|arg| arg == "--write");
    let print = args.iter().any(|arg| arg == "--print");
    let directory = args
        .iter()
        .find(|arg| !arg.starts_with("--"))
        .map(PathBuf::from)
        .unwrap_or_else(|| "tests/vectors".into());
    let vectors = match Vector::load_dir(&directory) {
        Ok(vectors) => vectors,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::FAILURE;
        }
    };
    let mut failures = 0;
    for vector in &vectors {
        let mut replay = vector.replay();
        let result = initiate_transfer(&mut replay, &vector.context, &vector.request);
        let actual = outcome(&result, &replay.calls);
        if print {
            println!("{} {}", vector.name, canonical(&actual));
        }
        if write {
            let mut document = vector.document.clone();
            document["expected"] = actual;
            let text = serde_json::to_string_pretty(&document).expect("a vector serialises") + "\n";
            let path = directory.join(format!("{}.json", vector.name));
            if let Err(error) = std::fs::write(&path, text) {
                eprintln!("{}: {error}", path.display());
                failures += 1;
            }
        } else if vector.expected.as_ref().map(canonical) != Some(canonical(&actual)) {
            eprintln!("FAIL {}: got {}", vector.name, canonical(&actual));
            failures += 1;
        }
    }
    eprintln!("{} vectors, {} failed", vectors.len(), failures);
    if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
