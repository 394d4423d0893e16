#!/usr/bin/env bash
# Runs every test of xvs: the lint gate, then all unit, property and integration tests.
# Installs what it needs (idempotent). Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

require_cargo
# Build dependencies of the AF_XDP crates (xsk-rs builds libxdp/libbpf with cc; clang compiles
# the XDP program), and the tools the namespace tests use.
install_packages clang m4 libelf-dev zlib1g-dev pkg-config iproute2 ethtool curl iputils-ping python3 keepalived tshark

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test"
cargo test --workspace --all-targets
# Doc tests (none should silently vanish).
cargo test --workspace --doc

echo "== end-to-end tests (namespaces, AF_XDP; root)"
cargo build --release -q -p xvsd -p xvsadm
cargo build --release -q -p xvs-bench --bin xvs-pktgen
python3 tests/e2e/run.py
