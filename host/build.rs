//! Embeds the conformance vectors marked `invariant` into the binary: every uploaded guest
//! version is checked against them before it can be activated, wherever the binary runs.

use std::fmt::Write;
use std::path::Path;

fn main() {
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
