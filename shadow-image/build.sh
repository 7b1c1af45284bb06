#!/bin/bash
# Build the ktpy shadow image into an OCI archive, without Docker:
#   shadow-image/build.sh [--tag REF] [--out FILE.tar]
# Defaults: REF = ghcr.io/ktpy/shadow:<ktpy version>, FILE = dist/ktpy-shadow-<version>.oci.tar
# Environment: KTPY_BUILD_PULL=never builds only from a base image already in
# buildah's storage (the test bed has no registry); KTPY_BASE_IMAGE overrides
# the Dockerfile's base.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")

usage() { sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//' >&2; exit "${1:-2}"; }

# The image is tagged with ktpy's own version so CLI and image always match.
version=$(sed -n 's/^__version__ *= *["'\'']\([^"'\'']*\)["'\''].*/\1/p' "$root/ktpy/__init__.py" 2>/dev/null | head -n1)
# Before the package exists there is no version to read: the first release.
version=${version:-0.1.0}

tag="ghcr.io/ktpy/shadow:$version"
out="$root/dist/ktpy-shadow-$version.oci.tar"
while [ $# -gt 0 ]; do
    case $1 in
        --tag) [ $# -ge 2 ] || usage; tag=$2; shift 2 ;;
        --tag=*) tag=${1#--tag=}; shift ;;
        --out) [ $# -ge 2 ] || usage; out=$2; shift 2 ;;
        --out=*) out=${1#--out=}; shift ;;
        -h|--help) usage 0 ;;
        *) echo "build.sh: unknown argument: $1" >&2; usage ;;
    esac
done

command -v buildah >/dev/null || { echo "build.sh: buildah not found (apt-get install buildah)" >&2; exit 1; }

args=(bud --network=host --isolation=chroot --layers
      --build-arg "KTPY_VERSION=$version" --tag "$tag" --file "$here/Dockerfile")
if [ -n "${KTPY_BUILD_PULL:-}" ]; then
    args+=("--pull=$KTPY_BUILD_PULL")
fi
if [ -n "${KTPY_BASE_IMAGE:-}" ]; then
    args+=(--build-arg "BASE_IMAGE=$KTPY_BASE_IMAGE")
fi

start=$(date +%s)
buildah "${args[@]}" "$here"

mkdir -p "$(dirname "$out")"
# Write next to the target and rename, so a failed push never leaves a
# half-written archive where a cache or the test bed would trust it.
tmp="$out.tmp.$$"
trap 'rm -f "$tmp"' EXIT
buildah push --quiet "$tag" "oci-archive:$tmp:$tag"
mv -f "$tmp" "$out"
trap - EXIT
echo "build.sh: $tag -> $out ($(( $(date +%s) - start )) s)" >&2
