# syntax=docker/dockerfile:1
# The Mailfleet image: `mailfleet` (server and admin CLI) and, once the workspace has it,
# `mailfleet-operator`. Build from the repository's top level:
#   docker build -t mailfleet:0.1.0 .
# The Helm chart (charts/mailfleet) runs both binaries from this one image.

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
# Cache mounts keep the registry and the build directory between builds (BuildKit); the
# binaries are copied out of the cached target directory in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    set -eux; \
    packages="-p mailfleet"; \
    if cargo metadata --no-deps --format-version 1 --locked | grep -q '"name":"mailfleet-operator"'; then \
      packages="$packages -p mailfleet-operator"; \
    fi; \
    cargo build --release --locked $packages; \
    mkdir -p /out; \
    cp target/release/mailfleet /out/; \
    if [ -x target/release/mailfleet-operator ]; then cp target/release/mailfleet-operator /out/; fi

FROM debian:bookworm-slim
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates; \
    rm -rf /var/lib/apt/lists/*; \
    groupadd --system --gid 10001 mailfleet; \
    useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/mailfleet --no-create-home \
      --shell /usr/sbin/nologin mailfleet; \
    install -d -o 10001 -g 10001 -m 0750 /var/lib/mailfleet
COPY --from=builder /out/ /usr/local/bin/
USER 10001:10001
WORKDIR /var/lib/mailfleet
# Unprivileged ports the chart's configuration listens on (SMTP, submission, submissions,
# IMAP, IMAPS, POP3, POP3S), then HTTP (/healthz, /readyz, /metrics) and the operator's 8081.
EXPOSE 2525 5870 4650 1430 9930 1100 9950 8080 8081
ENTRYPOINT ["/usr/local/bin/mailfleet"]
CMD ["serve"]
