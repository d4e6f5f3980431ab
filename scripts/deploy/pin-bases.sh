#!/usr/bin/env bash
# Re-pin the Dockerfile's base images to the digests their tags point at today.
#
#   scripts/deploy/pin-bases.sh [Dockerfile]
#
# Needs `docker buildx` (or `crane`) and network access to the registries. Rewrites the
# BUILD_IMAGE / RUNTIME_IMAGE ARG lines in place (tag kept, digest replaced) and prints the diff;
# review and commit it like any other change.
set -euo pipefail
FILE="${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/Dockerfile}"

digest_of() {
  if command -v crane >/dev/null 2>&1; then
    crane digest "$1"
  elif docker buildx version >/dev/null 2>&1; then
    docker buildx imagetools inspect "$1" --format '{{json .Manifest.Digest}}' | tr -d '"'
  else
    echo "pin-bases.sh: need crane or docker buildx" >&2; exit 2
  fi
}

cp "$FILE" "$FILE.bak"
for arg in BUILD_IMAGE RUNTIME_IMAGE; do
  line="$(grep -E "^ARG $arg=" "$FILE")" || { echo "pin-bases.sh: no ARG $arg in $FILE" >&2; exit 2; }
  ref="${line#ARG $arg=}"
  tag="${ref%@*}"
  digest="$(digest_of "$tag")"
  [[ "$digest" =~ ^sha256:[0-9a-f]{64}$ ]] || { echo "pin-bases.sh: bad digest '$digest' for $tag" >&2; exit 2; }
  sed -i "s|^ARG $arg=.*|ARG $arg=$tag@$digest|" "$FILE"
  echo "$arg: $tag@$digest"
done
diff -u "$FILE.bak" "$FILE" || true
rm -f "$FILE.bak"
