//! Embeds the conformance vectors marked `invariant` into the binary: every uploaded guest
//! version is checked against them before it can be activated, wherever the binary runs. Also
//! names the commit the binary is built from, for `transferd_build_info`.

use std::fmt::Write;
use std::path::Path;
use std::process::Command;

/// Overrides the commit found by git (a container build, where `.git` is left out).
const COMMIT_OVERRIDE: &str = "TRANSFERD_BUILD_COMMIT";

fn main() {
    build_commit();
    embed_vectors();
}

/// Sets `TRANSFERD_BUILD_COMMIT` for the crate: the override, else the checkout's HEAD (12 hex
/// digits), else `unknown`. Runs again only when HEAD or the branch it names moves, not on
/// every source change.
fn build_commit() {
    println!("cargo:rerun-if-env-changed={COMMIT_OVERRIDE}");
    // The checkout this run is for (see `embed_vectors`), not the directory it runs in.
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default();
    let git = |args: &[&str]| {
        let output = Command::new("git")
            .arg("-C")
            .arg(&manifest_dir)
            .args(args)
            .output()
            .ok()?;
        let text = String::from_utf8(output.stdout).ok()?;
        (output.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
    };
    for watched in ["HEAD", "packed-refs"] {
        if let Some(path) = git(&["rev-parse", "--path-format=absolute", "--git-path", watched]) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"])
        && let Some(path) = git(&["rev-parse", "--path-format=absolute", "--git-path", &branch])
    {
        println!("cargo:rerun-if-changed={path}");
    }
    let commit = std::env::var(COMMIT_OVERRIDE)
        .ok()
        .filter(|commit| !commit.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env={COMMIT_OVERRIDE}={commit}");
}

fn embed_vectors() {
    // Read when the script runs, not when it was compiled: checkouts at other paths share one
    // target directory, and cargo reuses this script's binary for all of them, so a path
    // compiled in would point into whichever checkout built it first (gone once it is removed).
    let manifest_dir =
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let directory = Path::new(&manifest_dir).join("../tests/vectors");
    println!("cargo:rerun-if-changed={}", directory.display());
    let mut paths: Vec<_> = std::fs::read_dir(&directory)
        .expect("tests/vectors exists")
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.extension()
                .is_some_and(|extension| extension == "json")
        })
        .collect();
    paths.sort();
    let mut source = String::from(
        "/// (file name, JSON) of every invariant vector.\npub const INVARIANT_VECTORS: &[(&str, &str)] = &[\n",
    );
    for path in paths {
        println!("cargo:rerun-if-changed={}", path.display());
        let text = std::fs::read_to_string(&path).expect("a readable vector");
        // A cheap test that avoids a JSON dependency at build time; the registry parses them.
        if !text.contains("\"invariant\": true") {
            continue;
        }
        let name = path
            .file_name()
            .and_then(|name| name.to_str())
            .expect("a UTF-8 file name");
        writeln!(
            source,
            "    ({name:?}, include_str!({:?})),",
            path.display().to_string()
        )
        .expect("writing to a String");
    }
    source.push_str("];\n");
    let out = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("invariant_vectors.rs");
    std::fs::write(out, source).expect("writing the generated vectors");
}
