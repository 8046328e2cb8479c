# syntax=docker/dockerfile:1
# Build: docker build -t tidekeeper .
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin tidekeeper \
    && strip target/release/tidekeeper

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends git=1:2.39.* ca-certificates=20230311* openssh-client=1:9.2p1-* curl=7.88.* \
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
