# syntax=docker/dockerfile:1
# transferd's image: the host binary and the guest component it serves at first start. One
# image for every role: `transferd serve` (the default command) and `transferd worker`.
#
#   docker build -t transferd:dev .        (or `docker compose build`, see compose.yaml)
#
# The RUN --mount=type=cache steps need BuildKit, Docker's default builder since 23.0.

# --- build -----------------------------------------------------------------------------------
# The Debian release is named, not left to the tag's default: the runtime stage is
# bookworm-slim, and a binary linked against a newer glibc would not start there.
FROM rust:1.95-bookworm AS build

# The rust image (on Debian's buildpack-deps) already holds what the bundled librdkafka needs:
# rdkafka-sys builds it with its own ./configure and make (the cmake-build feature is off), so a
# C compiler, make, pkg-config, zlib1g-dev and libssl-dev for its TLS and SASL. Only the guest's
# target is missing.
RUN rustup target add wasm32-wasip2

WORKDIR /src
# The commit `transferd_build_info` names: .git is not in the context, so it is passed in
# (`--build-arg TRANSFERD_BUILD_COMMIT=$(git rev-parse --short=12 HEAD)`); unset, `unknown`.
ARG TRANSFERD_BUILD_COMMIT=""
# The whole workspace (.dockerignore keeps build output and .git out): cargo reads every member's
# manifest, and host/build.rs embeds tests/vectors.
COPY . .

# The cargo registry and the target directory are cache mounts, so a rebuild after a source
# change compiles only what changed. They are not part of the image: each step copies its
# artifact out of the target directory itself. sharing=locked: builds running at once (compose
# builds the image for each service that names it) take turns instead of writing one target
# directory together.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/cache/target,sharing=locked \
    CARGO_TARGET_DIR=/cache/target cargo build --release --locked -p transferd \
    && mkdir -p /out \
    && cp /cache/target/release/transferd /out/transferd

# The guest component, from its own folder, as scripts/env.sh builds it.
WORKDIR /src/guest
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/cache/target,sharing=locked \
    CARGO_TARGET_DIR=/cache/target cargo build --release --locked --target wasm32-wasip2 \
    && cp /cache/target/wasm32-wasip2/release/transferd_guest.wasm /out/transferd_guest.wasm

# --- runtime ---------------------------------------------------------------------------------
FROM debian:bookworm-slim

# ca-certificates: the trust store that verifies PostgreSQL's, Redis's, Kafka's and the OTLP
# collector's certificates when their own CA file is not given. libssl3: librdkafka's TLS and
# SASL (rdkafka's `ssl` feature links the system OpenSSL; sqlx, redis and reqwest use rustls).
# curl: compose.yaml's health checks. Not pinned to versions (DL3008): bookworm's updates
# replace them and a pinned version would stop installing.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl libssl3 \
    && rm -rf /var/lib/apt/lists/*

# A non-root user with a home: compiled guests are cached in $HOME/.cache/transferd/compiled
# (TRANSFERD_GUEST_CACHE_DIR's default), so a restarted container does not compile again.
RUN useradd --create-home --uid 10001 --user-group --shell /usr/sbin/nologin transferd

# The binary links libc, libm, libgcc_s, libz and libssl dynamically, all installed above.
COPY --from=build /out/transferd /usr/local/bin/transferd
COPY --from=build /out/transferd_guest.wasm /usr/local/share/transferd/transferd_guest.wasm

# The guest file a replica serves (and stores in the registry) when nothing was activated yet;
# the built-in default is a path inside a cargo target directory.
ENV TRANSFERD_GUEST=/usr/local/share/transferd/transferd_guest.wasm
# Every interface: the built-in default, 127.0.0.1, cannot be reached from outside the container.
ENV TRANSFERD_LISTEN=0.0.0.0:8080

# Numeric, so an orchestrator can tell the user is not root without reading /etc/passwd.
USER 10001:10001
WORKDIR /home/transferd
# The API and probes; the internal admin address (TRANSFERD_ADMIN_LISTEN); a worker's probes and
# metrics (TRANSFERD_WORKER_LISTEN).
EXPOSE 8080 9090 9091

# No HEALTHCHECK here: the same image runs `transferd serve` and `transferd worker`, which
# answer on different addresses (TRANSFERD_LISTEN, TRANSFERD_WORKER_LISTEN); compose.yaml and
# the Kubernetes manifests probe each.
# transferd is PID 1 and handles SIGTERM itself: it drains within TRANSFERD_DRAIN_TIMEOUT_MS.
ENTRYPOINT ["transferd"]
CMD ["serve"]
