# syntax=docker/dockerfile:1
# The trialbridge image: the all-in-one binary, every service a subcommand
# (`store`, `gateway`, `sync`, `serve` for all in one process, plus the CLI tools).
#   docker build -t trialbridge:0.1.0 .
#   docker run --rm -p 8080:8080 trialbridge:0.1.0 store   (needs TRIALBRIDGE_* settings)

# Build stage: the workspace in release mode. Dependencies are built first from the
# manifests alone so that a source change does not rebuild them.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates crates
COPY services services
COPY integration-tests/Cargo.toml integration-tests/Cargo.toml
COPY integration-tests/src integration-tests/src
COPY proto proto
COPY studies studies
COPY openapi openapi
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p trialbridge \
    && install -D -m 0755 target/release/trialbridge /out/trialbridge

# Runtime stage: glibc and CA certificates only (distroless), a fixed non-root user, nothing
# to write except the mounted /data and /tmp (the chart mounts the root filesystem read-only).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/trialbridge /usr/local/bin/trialbridge
USER 10001:10001
WORKDIR /data
ENV TRIALBRIDGE_DATA_DIR=/data \
    TRIALBRIDGE_LOG_FORMAT=json
EXPOSE 8080 8081 8082 2575 9108
ENTRYPOINT ["/usr/local/bin/trialbridge"]
CMD ["store"]
