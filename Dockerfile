# Fast VM images.
#   vmrunner   - what each VM's container runs: vmrunner + QEMU, OVMF, swtpm (the docker runtime's image)
#   controller - the fastvm controller (API + dashboard), with QEMU too so the process runtime also works
# Both compile from source in the `build` stage. Where no registry can be reached, scripts/build-images.sh
# builds the binaries on the host, stages them in dist/, and builds the `*-prebuilt` targets on a
# Debian base made with debootstrap (BASE build argument). Stages are ordered so that the prebuilt
# targets never need the Rust image.
ARG BASE=debian:bookworm-slim
ARG RUST_IMAGE=rust:1-bookworm

FROM ${BASE} AS vm-base
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      qemu-system-x86 qemu-utils ovmf swtpm swtpm-tools iproute2 ca-certificates \
 && rm -rf /var/lib/apt/lists/*

FROM vm-base AS vmrunner-prebuilt
COPY dist/vmrunner /usr/local/bin/vmrunner
ENTRYPOINT ["/usr/local/bin/vmrunner"]

FROM vm-base AS controller-prebuilt
COPY dist/fastvm dist/vmrunner /usr/local/bin/
ENV FASTVM_DATA_DIR=/var/lib/fastvm FASTVM_LISTEN=0.0.0.0:8000
EXPOSE 8000
ENTRYPOINT ["/usr/local/bin/fastvm"]
CMD ["serve"]

FROM node:20-bookworm-slim AS dashboard
WORKDIR /src/frontend
COPY frontend/package.json frontend/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY frontend/build.mjs ./
COPY frontend/src src
RUN npm run build

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY controller controller
COPY vmrunner vmrunner
COPY --from=dashboard /src/frontend/dist frontend/dist
COPY openapi openapi
RUN cargo build --release --locked --bin fastvm --bin vmrunner

FROM vm-base AS vmrunner
COPY --from=build /src/target/release/vmrunner /usr/local/bin/vmrunner
ENTRYPOINT ["/usr/local/bin/vmrunner"]

FROM vm-base AS controller
COPY --from=build /src/target/release/fastvm /src/target/release/vmrunner /usr/local/bin/
ENV FASTVM_DATA_DIR=/var/lib/fastvm FASTVM_LISTEN=0.0.0.0:8000
EXPOSE 8000
ENTRYPOINT ["/usr/local/bin/fastvm"]
CMD ["serve"]
