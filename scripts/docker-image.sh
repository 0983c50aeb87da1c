#!/usr/bin/env bash
# Builds the runtime image distkv:latest (deploy/Dockerfile) from the release
# binaries and the shared libraries they link, on an empty base: no image
# registry is needed. Usage: scripts/docker-image.sh [TAG]  (default distkv:latest)
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-distkv:latest}
command -v docker >/dev/null || { echo "docker-image.sh: docker is not installed" >&2; exit 2; }
cargo build --release --quiet --bins
stage=$(mktemp -d -t distkv-image.XXXXXX)
trap 'rm -rf "$stage"' EXIT
root="$stage/rootfs"
mkdir -p "$root/usr/local/bin" "$root/data" "$root/tmp"
chmod 1777 "$root/tmp"
for bin in server manager client benchmark admin; do
  # Debug info stays in target/; the image gets the code only.
  objcopy --strip-debug "target/release/$bin" "$root/usr/local/bin/$bin"
done
# The dynamic loader and every library the binaries link, at their paths.
for lib in $(for b in "$root"/usr/local/bin/*; do ldd "$b"; done | grep -oE '/[^ ]+\.so[^ ]*' | sort -u); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
cp deploy/Dockerfile "$stage/Dockerfile"
docker build --quiet -t "$tag" "$stage" >/dev/null
echo "docker-image.sh: built $tag ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.1f MB", $1 / 1e6}'))"
