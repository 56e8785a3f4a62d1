#!/usr/bin/env bash
# Installs Garage, the S3-compatible object store the S3 blob backend is tested against
# (services/storage/tests/conformance_s3.rs, tests/e2e/s3server.py), into a cache outside
# the clone, and prints the binary's path. Idempotent: a working binary is kept.
#
# Licensing: Garage is AGPL-3.0. It is only a separate test peer that the tests start as
# its own process and talk to over HTTP; it is never linked into, shipped with or
# required by Mailfleet.
#
# The build is long (a large dependency tree), hence the cache: set MAILFLEET_TOOLS to
# choose where it goes; tests find the binary there or through MAILFLEET_GARAGE_BIN.
set -euo pipefail

GARAGE_VERSION=2.5.0
TOOLS="${MAILFLEET_TOOLS:-$HOME/.cache/mailfleet/tools}"
BIN="$TOOLS/bin/garage"

if [ -x "$BIN" ] && "$BIN" --version >/dev/null 2>&1; then
  echo "$BIN"
  exit 0
fi

command -v cargo >/dev/null 2>&1 || { echo "cargo is needed to build garage" >&2; exit 1; }
mkdir -p "$TOOLS"
# Its own target directory: garage's dependency versions differ from Mailfleet's, and
# sharing the workspace's build directory would only churn both.
# bundled-libs + sqlite: no system libraries needed, and the metadata engine the
# harnesses configure (db_engine = "sqlite").
CARGO_TARGET_DIR="$HOME/.cache/mailfleet/garage-target" \
  cargo install garage --version "$GARAGE_VERSION" --locked \
  --no-default-features --features bundled-libs,sqlite \
  --root "$TOOLS" >&2

"$BIN" --version >&2
echo "$BIN"
