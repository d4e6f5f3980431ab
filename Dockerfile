# invoke-guard container image: a static-ish release binary on a slim Debian base, non-root.
#
#   docker build -t invoke-guard .
#   docker run --rm -p 9091:9091 \
#     -v /srv/invokeai/databases:/invokeai/databases:ro \
#     -e INVOKE_GUARD_UPSTREAM=http://invokeai:9090 invoke-guard
#
# The InvokeAI database directory is mounted read-only (the guard opens it with mode=ro; SQLite
# needs the -wal/-shm files InvokeAI keeps beside it). The ledger lives in a writable volume.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin invoke-guard && strip target/release/invoke-guard

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/invoke-guard --create-home invoke-guard
COPY --from=build /src/target/release/invoke-guard /usr/local/bin/invoke-guard
COPY routes.toml /etc/invoke-guard/routes.toml
COPY config/invoke-guard.toml /etc/invoke-guard/invoke-guard.toml
ENV INVOKE_GUARD_CONFIG=/etc/invoke-guard/invoke-guard.toml \
    INVOKE_GUARD_ROUTES=/etc/invoke-guard/routes.toml \
    INVOKE_GUARD_LISTEN=0.0.0.0:9091 \
    INVOKE_GUARD_ADMIN_LISTEN=0.0.0.0:9092 \
    INVOKE_GUARD_UPSTREAM=http://127.0.0.1:9090 \
    INVOKE_GUARD_DB=/invokeai/databases/invokeai.db \
    INVOKE_GUARD_LEDGER=/var/lib/invoke-guard/ledger.db
USER 10001:10001
VOLUME ["/var/lib/invoke-guard"]
EXPOSE 9091 9092
ENTRYPOINT ["/usr/local/bin/invoke-guard"]
CMD ["serve"]
