# syntax=docker/dockerfile:1
# The citypark server image: `docker build -t citypark .`, then
#   docker run -p 50051:50051 -p 9464:9464 citypark serve --demo
# Any `serve` flag can be given as arguments or as its CITYPARK_* variable
# (`citypark serve --help`); deploy/compose.yaml and deploy/k8s/ run this image.

# The toolchain citypark is built and tested with in CI; at least the crate's
# rust-version (Cargo.toml). Debian 12 here and in the runtime image, so the binary
# finds the glibc it was linked against.
ARG RUST_VERSION=1.95

ARG NODE_VERSION=22

# The live map (web/): its pinned packages from the npm registry, the protobuf-es
# code generated from proto/, one bundle. Built here, on Node.js, so the Rust stage
# needs none: build.rs embeds it from CITYPARK_WEB_DIST.
FROM node:${NODE_VERSION}-bookworm-slim AS map
WORKDIR /src/web
COPY web/package.json web/package-lock.json ./
RUN --mount=type=cache,target=/root/.npm npm ci --no-audit --no-fund
COPY proto /src/proto
COPY web ./
RUN node build.mjs --proto ../proto --out /map

FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
# build.rs compiles the protos with protox, so no protoc or other system package is
# needed. The registry and target caches survive between builds (BuildKit), so a
# source change rebuilds citypark, not its dependencies; the binary is copied out of
# the cache mount in the same step, as the mount is gone afterwards.
COPY . .
COPY --from=map /map /map
ENV CITYPARK_WEB_DIST=/map
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin citypark \
    && cp target/release/citypark /usr/local/bin/citypark \
    && mkdir -p /data

# glibc, libgcc and CA certificates, nothing else: no shell, no package manager. The
# image's "nonroot" user is uid 65532; it is named by number so that Kubernetes'
# runAsNonRoot can check it.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /usr/local/bin/citypark /usr/local/bin/citypark
# The single binary's files (its SQLite history and the plates' hash key), owned by
# the user it runs as; mount a volume here to keep them (a Redis deployment's history
# is PostgreSQL: --history).
COPY --from=builder --chown=65532:65532 /data /var/lib/citypark
VOLUME /var/lib/citypark
USER 65532:65532

# Listen on every interface of the container. These are variables rather than flags
# in CMD so that `docker run citypark serve --store …` (or Kubernetes' args) keeps
# them: a flag in CMD would be dropped with it, and the server would bind loopback,
# out of reach of its own port mappings and probes. The HTTP port serves the live map
# (/map/) and open data (/open-data/v1/), and takes the payment gateway's callbacks
# (POST /payments/v1/callback).
ENV CITYPARK_GRPC_ADDR=0.0.0.0:50051 \
    CITYPARK_METRICS_ADDR=0.0.0.0:9464 \
    CITYPARK_HTTP_ADDR=0.0.0.0:8080 \
    CITYPARK_LOG_FORMAT=json \
    CITYPARK_DATA_DIR=/var/lib/citypark
# gRPC (and gRPC-Web), Prometheus /metrics, HTTP.
EXPOSE 50051 9464 8080

# The standard gRPC health of the server as a whole, through the binary itself (no
# grpc_health_probe to ship). A start on Redis loads the city before it serves, hence
# the start period. With TLS on the gRPC port, override it with an https:// --server.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["citypark", "health", "--server", "http://127.0.0.1:50051", "--timeout-ms", "3000"]

ENTRYPOINT ["citypark"]
CMD ["serve"]
