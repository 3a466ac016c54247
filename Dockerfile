# The procnode image for the sidecar deployment (charts/procnode).
#   docker build -t procnode:0.1.0 .
# Stage 1 builds a release binary; stage 2 is a slim Debian with the shell and coreutils that
# pods' commands usually expect (pods run inside this container unless hostPID/host mounts are
# used), plus procps for `ps` in debugging sessions.
FROM rust:1.89-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# The supervisor (one runs per container) is linked again statically and not position
# independent: nothing in it is relocated at start, so it dirties half the memory (BENCHMARKS.md).
RUN cargo build --release --locked --bins \
 && cargo rustc --release --locked --bin procnode-shim -- \
      -C target-feature=+crt-static -C relocation-model=static \
 && strip target/release/procnode target/release/procnode-shim

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates procps \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/procnode /src/target/release/procnode-shim /usr/local/bin/
ENV PROCNODE_STATE_DIR=/var/lib/procnode
VOLUME /var/lib/procnode
EXPOSE 3000
HEALTHCHECK --interval=10s --timeout=5s CMD ["procnode", "health"]
ENTRYPOINT ["procnode"]
CMD ["serve", "--listen", "127.0.0.1:3000"]
