#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine, then runs every test:
# formatting, clippy, the Rust unit/integration tests (storage conformance suite included)
# and the end-to-end tests that drive a real `mailfleet` process with real clients.
set -euo pipefail
cd "$(dirname "$0")/.."

# One shared build directory outside the clone, so CI and developers reuse one build.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/mailfleet/target}"
export CARGO_TERM_COLOR=never
# A one-off run (CI from a fresh clone) gains nothing from incremental state, which took
# 19 GiB of the shared build directory; developers keep theirs by setting it to 1.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

# The shared build directory only grows (every build of a changed crate leaves its old test
# binaries and incremental state behind); on a long-lived machine it filled the disk. Below
# 40 GiB free, drop the incremental caches and test binaries not touched for six hours:
# the next build recreates what it needs.
prune_target() {
  local free_kib
  mkdir -p "$CARGO_TARGET_DIR"
  free_kib=$(df -Pk "$CARGO_TARGET_DIR" | awk 'NR == 2 { print $4 }')
  if [ "${free_kib:-0}" -lt $((40 * 1024 * 1024)) ]; then
    echo "== pruning $CARGO_TARGET_DIR (only $((free_kib / 1024 / 1024)) GiB free)"
    rm -rf "$CARGO_TARGET_DIR"/debug/incremental "$CARGO_TARGET_DIR"/release/incremental
    find "$CARGO_TARGET_DIR"/debug/deps "$CARGO_TARGET_DIR"/release/deps -maxdepth 1 -type f \
      ! -name '*.*' -mmin +360 -delete 2>/dev/null || true
  fi
}
prune_target

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

echo "== installing test dependencies"
missing=()
command -v swaks >/dev/null 2>&1 || missing+=(swaks)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v fetchmail >/dev/null 2>&1 || missing+=(fetchmail)
command -v mbsync >/dev/null 2>&1 || missing+=(isync)
# Dovecot is the reference oracle for ENVELOPE/BODYSTRUCTURE (services/mime/tests).
# dovecot-sieve pulls in dovecot-core alone: look for the imap binary itself.
[ -x /usr/lib/dovecot/imap ] || missing+=(dovecot-imapd)
# Postfix's smtp-sink is the remote peer of the outbound delivery tests (tests/e2e).
[ -x /usr/sbin/smtp-sink ] || missing+=(postfix)
command -v cc >/dev/null 2>&1 || missing+=(gcc)
# Redis is the cluster coordinator (services/storage/tests/conformance_redis.rs, tests/e2e);
# the Redis Cluster tests form their cluster with redis-cli (redis-tools, which
# redis-server depends on).
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# A real Prometheus scrapes the server and evaluates the shipped dashboards and alert rules
# (tests/e2e/test_metrics_prometheus.py); promtool checks and unit-tests the rules.
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
# rspamd and clamd are the spam and virus filters of tests/e2e/test_content_filter.py.
command -v rspamd >/dev/null 2>&1 || missing+=(rspamd)
[ -x /usr/sbin/clamd ] || missing+=(clamav-daemon)
# Pigeonhole's sieve-test is the reference oracle of the Sieve interpreter
# (services/sieve/tests/pigeonhole.rs).
command -v sieve-test >/dev/null 2>&1 || missing+=(dovecot-sieve)
if [ "${#missing[@]}" -gt 0 ]; then
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
fi
python3 -m pip install -q --disable-pip-version-check -r tests/e2e/requirements.txt -r tests/helm/requirements.txt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt
# Garage, a real S3 server, for the S3 blob store and cluster tests: built once, cached
# outside the clone (the first build takes a while).
MAILFLEET_GARAGE_BIN="$(scripts/install-garage.sh)"
export MAILFLEET_GARAGE_BIN

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo test"
# The Sieve differential test fails rather than skips when sieve-test is missing here.
MAILFLEET_REQUIRE_PIGEONHOLE=1 cargo test --workspace --locked

echo "== end-to-end tests"
cargo build -p mailfleet --locked
export MAILFLEET_BIN="$CARGO_TARGET_DIR/debug/mailfleet"
# The Dovecot differential test is named by path (it is not a test_*.py module).
python3 -m pytest -q -p no:cacheprovider tests/e2e services/mime/tests/dovecot_diff.py tests/terraform tests/helm
