# syntax=docker/dockerfile:1
# Images of the Tallyhouse services: one build, one small image per binary.
#
#   docker build --target gateway  -t ghcr.io/tallyhouse/gateway:$TAG .
#   docker build --target registry -t ghcr.io/tallyhouse/registry:$TAG .
#   docker build --target ingest   -t ghcr.io/tallyhouse/ingest:$TAG .
#   docker build --target query    -t ghcr.io/tallyhouse/query:$TAG .
#   docker build --target auth     -t ghcr.io/tallyhouse/auth:$TAG .
#   docker build --target tallyhouse -t ghcr.io/tallyhouse/tallyhouse:$TAG .   (the CLI: operators, the canary)
#
# The build stage compiles every binary once (the later targets reuse it);
# each runtime image holds its binary and the CA certificates of the base
# image, nothing else, and runs as an unprivileged user. The binaries link
# glibc only (rustls with aws-lc-rs, no OpenSSL), which the distroless "cc"
# base provides. tests/python/test_dockerfile.py checks that every binary
# named here is one the workspace builds.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
        --bin gateway --bin registry --bin ingest --bin query --bin auth --bin tallyhouse \
    && mkdir -p /out \
    && cp target/release/gateway target/release/registry target/release/ingest \
          target/release/query target/release/auth target/release/tallyhouse /out/

# Debian 12 without a shell or package manager: glibc, libgcc, CA
# certificates, and the `nonroot` user (65532).
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
USER nonroot:nonroot

FROM runtime AS gateway
COPY --from=build /out/gateway /usr/local/bin/gateway
EXPOSE 8080 9180
ENTRYPOINT ["/usr/local/bin/gateway"]

FROM runtime AS registry
COPY --from=build /out/registry /usr/local/bin/registry
EXPOSE 9181
ENTRYPOINT ["/usr/local/bin/registry"]

FROM runtime AS ingest
COPY --from=build /out/ingest /usr/local/bin/ingest
EXPOSE 9182
ENTRYPOINT ["/usr/local/bin/ingest"]
CMD ["serve"]

FROM runtime AS query
COPY --from=build /out/query /usr/local/bin/query
EXPOSE 9183
ENTRYPOINT ["/usr/local/bin/query"]

FROM runtime AS auth
COPY --from=build /out/auth /usr/local/bin/auth
EXPOSE 9184
ENTRYPOINT ["/usr/local/bin/auth"]

FROM runtime AS tallyhouse
COPY --from=build /out/tallyhouse /usr/local/bin/tallyhouse
ENTRYPOINT ["/usr/local/bin/tallyhouse"]
