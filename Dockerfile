# syntax=docker/dockerfile:1
# Build: docker build -t tidekeeper .
FROM rust:1.95-slim-bookworm AS build
# libgit2 and libssh2 are built against OpenSSL: its headers, and pkg-config to find them.
RUN apt-get update \
    && apt-get install -y --no-install-recommends pkg-config=1.8.* libssl-dev=3.0.* \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The dependencies in a layer of their own: a change to tidekeeper's source
# does not build them again. Empty targets stand in for the sources here.
COPY Cargo.toml Cargo.lock build.rs ./
COPY crates crates
COPY repo-template repo-template
# Every bench and test target the manifest names gets a stand-in, read from
# Cargo.toml itself, so this layer cannot fall behind it.
RUN mkdir -p src benches tests \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && awk '/^\[\[bench\]\]/ { getline; gsub(/name = |"/, ""); print }' Cargo.toml > benches/names \
    && while read -r b; do echo 'fn main() {}' > "benches/$b.rs"; done < benches/names \
    && echo 'fn main() {}' > tests/tests.rs \
    && cargo build --release --locked --bin tidekeeper \
    && rm -rf src benches tests
COPY . .
RUN touch src/main.rs src/lib.rs \
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
