#!/usr/bin/env bash
# Install a pinned, unmodified InvokeAI from PyPI into a cached venv outside the repo.
#
#   scripts/invokeai/install.sh VERSION        e.g. 6.12.0 or 6.14.2
#
# venv: ${INVOKEAI_VENVS:-${XDG_CACHE_HOME:-$HOME/.cache}/invoke-guard/venvs}/invokeai-VERSION
# pins: scripts/invokeai/requirements-VERSION.lock.txt (pip freeze of a tested venv,
#       installed with --no-deps so the resolution is exactly the lock file).
#
# Idempotent: when the venv's `invokeai-web --version` already reports VERSION and the
# lock stamp matches, this is a fast no-op. A venv that fails that check is deleted
# and rebuilt. FORCE=1 always rebuilds.
#
# Needs python 3.11 or 3.12 (set PYTHON=...), and PyPI. About 7 GB per version
# (torch + CUDA wheels; no GPU is needed to run the server).
# Prints the venv path as the last line on stdout; logs go to stderr.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VERSION="${1:?usage: install.sh VERSION}"
LOCK="$HERE/requirements-$VERSION.lock.txt"
VENVS="${INVOKEAI_VENVS:-${XDG_CACHE_HOME:-$HOME/.cache}/invoke-guard/venvs}"
VENV="$VENVS/invokeai-$VERSION"
STAMP="$VENV/.invoke-guard-lock.sha256"

log() { printf '[install %s %s] %s\n' "$VERSION" "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 2; }

[[ -f "$LOCK" ]] || die "no lock file $LOCK (supported versions: $(cd "$HERE" && ls requirements-*.lock.txt | sed 's/requirements-//;s/.lock.txt//' | tr '\n' ' '))"

pick_python() {
  local c
  for c in "${PYTHON:-}" python3.11 python3.12 python3; do
    [[ -n "$c" ]] || continue
    command -v "$c" >/dev/null 2>&1 || continue
    if "$c" -c 'import sys, venv, ensurepip; assert (3,11) <= sys.version_info[:2] < (3,13)' >/dev/null 2>&1; then
      echo "$c"; return 0
    fi
  done
  return 1
}

lock_sum="$(sha256sum "$LOCK" | cut -d' ' -f1)"

runs() {  # the venv's invokeai-web runs and reports VERSION
  [[ -x "$VENV/bin/invokeai-web" ]] || return 1
  local v
  v="$("$VENV/bin/invokeai-web" --version 2>/dev/null | tail -1 | tr -d '[:space:]')" || return 1
  [[ "$v" == "$VERSION" ]]
}
stamped() { [[ -f "$STAMP" && "$(cat "$STAMP")" == "$lock_sum" ]]; }

if [[ "${FORCE:-0}" != 1 ]] && stamped && runs; then
  log "ok: $VENV already has invokeai $VERSION"
  echo "$VENV"
  exit 0
fi

PY="$(pick_python)" || die "need python 3.11 or 3.12 with venv+ensurepip (set PYTHON=/path/to/python3.11)"
mkdir -p "$VENVS"
# Serialise concurrent installs of the same version.
exec 9>"$VENVS/.invokeai-$VERSION.lock"
flock 9
if [[ "${FORCE:-0}" != 1 ]] && stamped && runs; then
  log "ok: $VENV (installed by a concurrent run)"
  echo "$VENV"; exit 0
fi

pip_lock() {
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps -r "$LOCK" >&2
  "$VENV/bin/python" -m pip check >&2 || die "pip check failed for $VENV (see above)"
}

t0=$(date +%s)
if [[ "${FORCE:-0}" != 1 ]] && runs; then
  # A working venv whose lock changed: bring it in line with the lock instead of rebuilding 7 GB.
  log "venv runs but does not match $(basename "$LOCK"); syncing it"
  pip_lock
else
  [[ -e "$VENV" ]] && log "venv $VENV is missing or broken; rebuilding"
  rm -rf "$VENV"
  log "creating venv with $("$PY" --version 2>&1)"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -U pip wheel >&2
  log "pip install -r $(basename "$LOCK") --no-deps (torch + CUDA wheels, several GB)"
  pip_lock
fi
runs || die "installed venv does not report invokeai $VERSION (invokeai-web --version)"
echo "$lock_sum" > "$STAMP"
log "done in $(( $(date +%s) - t0 ))s; size $(du -sh "$VENV" | cut -f1)"
echo "$VENV"
