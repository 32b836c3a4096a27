#!/usr/bin/env bash
# The compiler scripts/test.sh builds the workspace's own crates with (cargo's
# RUSTC_WORKSPACE_WRAPPER): clippy's driver, which compiles exactly as rustc does and lints as
# `cargo clippy` does, every warning an error as with `cargo clippy -- -D warnings`. Cargo calls
# it as `clippy-rustc.sh <rustc> <arguments>`; dependencies are compiled by rustc alone.
#
# Why not `cargo clippy`: it checks every dependency again in check mode, whose artifacts no
# build shares, a large part of a cold run; linting while the tests' own builds compile costs
# only the lints.
exec clippy-driver "$@" -D warnings
