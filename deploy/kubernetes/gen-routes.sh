#!/usr/bin/env bash
# Refresh the base's copy of routes.toml from the repository's (tests/deploy.rs fails when they differ).
# Your own policy does not go here: put it in an overlay (README "Kubernetes").
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cp "$HERE/../../routes.toml" "$HERE/routes.toml"
