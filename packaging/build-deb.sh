#!/usr/bin/env bash
# Builds postern_*.deb (agent) and postern-relay_*.deb: the binaries, their man pages and
# shell completions (generated from the CLIs), then cargo-deb (`cargo install cargo-deb`).
#   packaging/build-deb.sh [--no-build] [--fast] [--out DIR]
# --no-build packages the binaries already in $CARGO_TARGET_DIR/release/ (default target/);
# --fast compresses less (the tests use it); --out (default target/debian/) and
# $CARGO_TARGET_DIR, when relative, are taken from the caller's folder.
set -euo pipefail

build=1
fast=()
root=$(cd "$(dirname "$0")/.." && pwd)
out=$root/target/debian
while [ $# -gt 0 ]; do
    case $1 in
        --no-build) build=0; shift ;;
        --fast) fast=(--fast); shift ;;
        --out) out=$2; shift 2 ;;
        *) echo "usage: $0 [--no-build] [--fast] [--out DIR]" >&2; exit 2 ;;
    esac
done
# A relative --out or CARGO_TARGET_DIR is the caller's, not the repository's: resolved
# before the cd below.
case $out in
    /*) ;;
    *) out=$PWD/$out ;;
esac
case ${CARGO_TARGET_DIR:-/} in
    /*) ;;
    *) export CARGO_TARGET_DIR=$PWD/$CARGO_TARGET_DIR ;;
esac
command -v cargo-deb >/dev/null || { echo "cargo-deb is missing: cargo install cargo-deb --locked" >&2; exit 1; }

cd "$root"
target=${CARGO_TARGET_DIR:-$root/target}
if [ "$build" = 1 ]; then
    cargo build --locked --release -p postern-agent -p postern-relay --bins
fi

assets=$target/release/postern-assets
mkdir -p "$assets" "$out"
for program in postern postern-relay; do
    binary=$target/release/$program
    [ -x "$binary" ] || { echo "$binary is missing" >&2; exit 1; }
    "$binary" man | gzip -9n > "$assets/$program.1.gz"
    "$binary" completions bash > "$assets/$program.bash"
    "$binary" completions zsh > "$assets/_$program"
    "$binary" completions fish > "$assets/$program.fish"
done

for package in postern-agent postern-relay; do
    cargo deb --no-build "${fast[@]}" -p "$package" -o "$out"
done
ls -1 "$out"/*.deb
