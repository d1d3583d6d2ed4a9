#!/usr/bin/env bash
# The full test suite, as the README and .ci/run call it: installs what the tests need (etcd,
# python3, tmux, openssl), then format check, clippy with warnings denied, and every test of the
# workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v etcd >/dev/null 2>&1 || need_apt+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need_apt+=(etcd-client)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
command -v tmux >/dev/null 2>&1 || need_apt+=(tmux)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)  # throw-away TLS certificates
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "tests/run.sh: missing ${need_apt[*]} and cannot apt-get install them (need root on Debian)" >&2
    exit 1
  fi
  echo "tests/run.sh: installing ${need_apt[*]} from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# Debian's package starts an etcd on the default ports; the tests start their own on port 0,
# so the packaged service is not needed.

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace --bins
cargo test --workspace --no-fail-fast -- --test-threads="${TEST_THREADS:-4}"
