//! Where the files under test are: the host binaries and guest components a build left in the
//! target directory, each overridable by an environment variable so a script can point
//! elsewhere.

use std::path::PathBuf;

/// A target directory's file: from an environment variable, else next to the test binary.
fn artifact(variable: &str, relative: &str) -> PathBuf {
    if let Ok(path) = std::env::var(variable) {
        return PathBuf::from(path);
    }
    // target/release/deps/<test> → target/
    let executable = std::env::current_exe().expect("the test binary has a path");
    let target = executable
        .ancestors()
        .nth(3)
        .expect("the test binary lives in target/<profile>/deps");
    target.join(relative)
}

pub fn transferd_binary() -> PathBuf {
    artifact("TRANSFERD_BIN", "release/transferd")
}

/// The host built with the cargo feature `crash-points` (scripts/test.sh builds it).
pub fn crash_binary() -> PathBuf {
    artifact("TRANSFERD_CRASH_BIN", "release/transferd-crash-points")
}

pub fn guest_file() -> PathBuf {
    artifact(
        "TRANSFERD_GUEST",
        "wasm32-wasip2/release/transferd_guest.wasm",
    )
}

/// The standard logic with a lower amount limit (100 in major units): a rule change.
pub fn strict_guest_file() -> PathBuf {
    artifact(
        "TRANSFERD_TEST_STRICT_GUEST",
        "strict-guest/wasm32-wasip2/release/transferd_test_guest_strict.wasm",
    )
}

/// The standard logic publishing the wrong transfer in the way the request's description
/// names (tests/guests/hostile).
pub fn hostile_guest_file() -> PathBuf {
    artifact(
        "TRANSFERD_TEST_HOSTILE_GUEST",
        "hostile-guest/wasm32-wasip2/release/transferd_test_guest_hostile.wasm",
    )
}

/// The standard logic refusing whenever its wall clock is not the request's
/// (tests/guests/clock): proves the host's deterministic WASI.
pub fn clock_guest_file() -> PathBuf {
    artifact(
        "TRANSFERD_TEST_CLOCK_GUEST",
        "clock-guest/wasm32-wasip2/release/transferd_test_guest_clock.wasm",
    )
}

/// The standard logic exported through the released `transferd:transfer@0.1.0` world
/// (tests/guests/v0_1): a guest built before 0.2.0.
pub fn v0_1_guest_file() -> PathBuf {
    artifact(
        "TRANSFERD_TEST_V0_1_GUEST",
        "v0-1-guest/wasm32-wasip2/release/transferd_test_guest_v0_1.wasm",
    )
}

/// The standard logic plus a velocity rule written with `account-info` (tests/guests/velocity).
pub fn velocity_guest_file() -> PathBuf {
    artifact(
        "TRANSFERD_TEST_VELOCITY_GUEST",
        "velocity-guest/wasm32-wasip2/release/transferd_test_guest_velocity.wasm",
    )
}

pub fn panicking_guest_file() -> PathBuf {
    artifact(
        "TRANSFERD_TEST_PANICKING_GUEST",
        "wasm32-wasip2/release/transferd_test_guest_panicking.wasm",
    )
}
