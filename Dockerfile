# syntax=docker/dockerfile:1
# invoke-guard container image: a static (musl) release binary on distroless/static, running as the
# non-root user 65532, friendly to a read-only root filesystem (the only path it writes is the ledger
# volume /var/lib/invoke-guard). The admin listener stays on loopback unless configured
# (INVOKE_GUARD_ADMIN_LISTEN); the HEALTHCHECK asks it with `invoke-guard health`.
#
# Base images are pinned by digest, the tag beside it for people. These are the digests of
# rust:1.91-bookworm and gcr.io/distroless/static-debian12:nonroot as pinned by several public
# projects; refresh them (needs docker buildx or crane) with:
#   scripts/deploy/pin-bases.sh            # rewrites the two ARG lines below to today's digests
#
# Build and run (README "Deployment"; there is no container engine on the CI machine, so these are
# documented, and tests/deploy.rs checks this file's structure):
#   docker build -t invoke-guard:0.1.0 .
#   docker run --rm --read-only -p 9091:9091 \
#     -v /srv/invokeai/databases:/invokeai/databases:ro \
#     -v invoke-guard-ledger:/var/lib/invoke-guard \
#     -e INVOKE_GUARD_UPSTREAM=http://invokeai.internal:9090 invoke-guard:0.1.0
ARG BUILD_IMAGE=rust:1.91-bookworm@sha256:c1e5f19e773b7878c3f7a805dd00a495e747acbdc76fb2337a4ebf0418896b33
ARG RUNTIME_IMAGE=gcr.io/distroless/static-debian12:nonroot@sha256:d093aa3e30dbadd3efe1310db061a14da60299baff8450a17fe0ccc514a16639

FROM ${BUILD_IMAGE} AS build
ARG TARGETARCH
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
RUN case "${TARGETARCH:-amd64}" in \
      amd64) echo x86_64-unknown-linux-musl ;; \
      arm64) echo aarch64-unknown-linux-musl ;; \
      *) echo "unsupported architecture ${TARGETARCH}" >&2; exit 1 ;; \
    esac > /rust-target \
 && rustup target add "$(cat /rust-target)"
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin invoke-guard --target "$(cat /rust-target)" \
 && cp "target/$(cat /rust-target)/release/invoke-guard" /invoke-guard \
 && strip /invoke-guard \
 && (ldd /invoke-guard 2>&1 || true) | grep -Eq 'not a dynamic executable|statically linked' \
 && /invoke-guard --version \
 && mkdir -p /rootfs/var/lib/invoke-guard /rootfs/etc/invoke-guard \
 && cp routes.toml /rootfs/etc/invoke-guard/routes.toml

FROM ${RUNTIME_IMAGE}
COPY --from=build /invoke-guard /usr/local/bin/invoke-guard
COPY --from=build /rootfs/etc/invoke-guard /etc/invoke-guard
# Owned by the runtime user so a fresh named volume mounted here is writable.
COPY --from=build --chown=65532:65532 /rootfs/var/lib/invoke-guard /var/lib/invoke-guard
# mimalloc commits arena memory on demand instead of up front: RSS 12.7 MiB at start and 23 MiB idle after
# load instead of 19 and 37, CPU per request unchanged within noise (docs/benchmarks.md, "Allocator options").
ENV MIMALLOC_ARENA_EAGER_COMMIT=0 \
    INVOKE_GUARD_ROUTES=/etc/invoke-guard/routes.toml \
    INVOKE_GUARD_LISTEN=0.0.0.0:9091 \
    INVOKE_GUARD_ADMIN_LISTEN=127.0.0.1:9092 \
    INVOKE_GUARD_UPSTREAM=http://127.0.0.1:9090 \
    INVOKE_GUARD_DB=/invokeai/databases/invokeai.db \
    INVOKE_GUARD_LEDGER=/var/lib/invoke-guard/ledger.db
USER 65532:65532
VOLUME ["/var/lib/invoke-guard"]
EXPOSE 9091
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
  CMD ["/usr/local/bin/invoke-guard", "health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/invoke-guard"]
CMD ["serve"]
