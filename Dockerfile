# syntax=docker/dockerfile:1
# Build: docker build -t tidekeeper .
FROM rust:1.95-slim-bookworm AS build
# libgit2 and libssh2 are built against OpenSSL: its headers, and pkg-config to find them.
RUN apt-get update \
    && apt-get install -y --no-install-recommends pkg-config=1.8.* libssl-dev=3.0.* \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The dependencies in a layer of their own: a change to tidekeeper's source
# does not build them again. Empty stand-ins replace the sources here, one for
# every target Cargo.toml names, written from the manifest itself
# (scripts/stub-targets), so this layer cannot fall behind it.
COPY Cargo.toml Cargo.lock build.rs ./
COPY crates crates
COPY repo-template repo-template
COPY scripts/stub-targets scripts/stub-targets
RUN scripts/stub-targets >/dev/null \
    && cargo build --release --locked --bin tidekeeper \
    && rm -rf src benches tests examples
COPY . .
# The git revision for tidekeeper_build_info (.git is not in the context):
# docker build --build-arg TIDEKEEPER_REVISION="$(git rev-parse HEAD)" .
ARG TIDEKEEPER_REVISION=unknown
# Targets left out of the context (.dockerignore: tests) get stand-ins again.
RUN scripts/stub-targets >/dev/null \
    && touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin tidekeeper \
    && strip target/release/tidekeeper

FROM debian:bookworm-slim
# What the binary needs at run time and nothing else: OpenSSL (git over
# https, libssh2), CA roots, ssh-keygen (host keys for new cloud servers),
# and curl for the health check.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libssl3=3.0.* ca-certificates=20230311* openssh-client=1:9.2p1-* curl=7.88.* \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --create-home --home-dir /var/lib/tidekeeper --shell /usr/sbin/nologin tidekeeper
COPY --from=build /src/target/release/tidekeeper /usr/local/bin/tidekeeper
USER 10001:10001
WORKDIR /var/lib/tidekeeper
ENV TIDEKEEPER_STATE_DIR=/var/lib/tidekeeper/state
EXPOSE 8420
# The daemon serves /healthz on its HTTP port.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["curl", "-fsS", "http://127.0.0.1:8420/healthz"]
ENTRYPOINT ["tidekeeper"]
# Set TIDEKEEPER_REPO (and TIDEKEEPER_WEBHOOK_SECRET, TIDEKEEPER_SSH_KEY) when running.
CMD ["run", "--listen", "0.0.0.0:8420"]
