#!/usr/bin/env bash
# The whole test suite, on a fresh machine:
#   0. cargo fmt --check and clippy -D warnings
#   1. unit + integration tests (cargo test: real guard on 127.0.0.1:0, recording mock upstream,
#      fixture databases written by real InvokeAI, raw-TCP smuggling cases, the rule-test matrix
#      tests/data/policy/*.toml decision-only and through the guard)
#   2. end-to-end: real InvokeAI 6.12.0, 6.13.8 and 6.14.2 from PyPI (cached venvs outside the repo),
#      the cross-user matrix and the Socket.IO suite (real python-socketio clients) through the
#      guard (tests/e2e/run.sh)
#   3. the official web UI of each of those versions through the guard in headless Chromium
#      (tests/e2e/browser/run.sh VERSION)
#   4. deployment artefacts: Kubernetes manifests and the Compose file against their schemas
#      (scripts/deploy/validate.sh; cached venv outside the repo)
#   5. scripts/demo.sh 6.12.0 (real InvokeAI behind the guard: a leak refused)
#   6. hardening (docs/reliability.md): every fuzz target for FUZZ_SECONDS (default 10) each
#      (scripts/fuzz.sh; the build is cached outside the repo) and a 60 s loopback soak of the
#      real binary (tests/soak.rs, SOAK_SECONDS)
#
#   scripts/test.sh            everything
#   scripts/test.sh --quick    cargo tests only (no InvokeAI, no browser, no fuzzing or soak)
#
# Everything it needs is installed idempotently by scripts/setup-test-deps.sh. A missing
# prerequisite that cannot be installed is an error, never a silent skip.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

QUICK=0
for a in "$@"; do
  case "$a" in
    --quick) QUICK=1 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "test.sh: unknown option $a" >&2; exit 2 ;;
  esac
done

step() { printf '\n=== %s (%s) ===\n' "$*" "$(date +%H:%M:%S)"; }
t0=$(date +%s)

command -v cargo >/dev/null || { echo "test.sh: cargo not found (install Rust: https://rustup.rs)" >&2; exit 2; }

LOG="$(mktemp -t invoke-guard-test.XXXXXX)"
trap 'rm -f "$LOG"' EXIT

# One plain closing line for the whole suite: "suite: N passed, N failed".
summary() {
  awk '
    /^test result: / { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
    # e2e summaries; the browser run repeats its line, so each distinct line counts once.
    (/^PASS [0-9]+\/[0-9]+ / || /^FAIL [0-9]+\/[0-9]+ /) && !seen[$0]++ { split($2, a, "/"); p += a[1]; f += a[2] - a[1] }
    END { printf "suite: %d passed, %d failed\n", p, f }
  ' "$LOG"
}

# A cold machine spends ~15 min installing InvokeAI venvs, Chromium and friends: start that now, in the
# background, so it overlaps the Rust build, the tests and the fuzz build (CPU-bound, where the installs are
# mostly downloads); the "test prerequisites" step below waits for it and fails the run if it failed.
SETUP_PID=""
if [[ $QUICK == 0 ]]; then
  SETUP_LOG="$(mktemp -t invoke-guard-setup.XXXXXX)"
  trap 'rm -f "$LOG" "$SETUP_LOG"; [[ -n "$SETUP_PID" ]] && kill "$SETUP_PID" 2>/dev/null || true' EXIT
  scripts/setup-test-deps.sh >"$SETUP_LOG" 2>&1 &
  SETUP_PID=$!
fi

step "format and lints (cargo fmt --check, clippy -D warnings)"
if ! cargo clippy --version >/dev/null 2>&1 || ! cargo fmt --version >/dev/null 2>&1; then
  command -v rustup >/dev/null && rustup component add clippy rustfmt
fi
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings

step "unit and integration tests"
cargo test --all-targets --locked 2>&1 | tee -a "$LOG"

if [[ $QUICK == 1 ]]; then
  echo "quick run done in $(( $(date +%s) - t0 )) s"
  summary
  exit 0
fi

step "fuzz targets, ${FUZZ_SECONDS:-10} s each (scripts/fuzz.sh)"
FUZZ_SECONDS="${FUZZ_SECONDS:-10}" scripts/fuzz.sh 2>&1 | tee -a "$LOG"

step "loopback soak, ${SOAK_SECONDS:-60} s (tests/soak.rs)"
SOAK_SECONDS="${SOAK_SECONDS:-60}" cargo test --locked --test soak -- --ignored --nocapture 2>&1 | tee -a "$LOG"

step "test prerequisites (started in the background at the beginning)"
setup_rc=0
wait "$SETUP_PID" || setup_rc=$?
SETUP_PID=""
cat "$SETUP_LOG"
[[ $setup_rc == 0 ]] || { echo "test.sh: scripts/setup-test-deps.sh failed (exit $setup_rc, log above)" >&2; exit "$setup_rc"; }

step "deployment artefacts (Kubernetes schemas, Compose schema)"
scripts/deploy/validate.sh 2>&1 | tee -a "$LOG"

step "release build"
cargo build --release --locked

step "rule tests as an operator runs them (invoke-guard test)"
target/release/invoke-guard test tests/data/policy/6.12.0.toml tests/data/policy/6.14.2.toml

step "end-to-end against real InvokeAI 6.12.0, 6.13.8 and 6.14.2"
GUARD_BIN="$REPO/target/release/invoke-guard" tests/e2e/run.sh 6.12.0 6.13.8 6.14.2 2>&1 | tee -a "$LOG"

step "the newcomer's demo (scripts/demo.sh 6.12.0, non-interactive)"
DEMO_KEEP=0 GUARD_BIN="$REPO/target/release/invoke-guard" scripts/demo.sh 6.12.0 2>&1 | tee -a "$LOG"

# Every version's web UI runs even when an earlier one fails; the suite fails at the end then.
ui_rc=0
for v in 6.12.0 6.13.8 6.14.2; do
  step "web UI through the guard (headless Chromium, InvokeAI $v)"
  GUARD_BIN="$REPO/target/release/invoke-guard" tests/e2e/browser/run.sh "$v" 2>&1 | tee -a "$LOG" || ui_rc=1
done

echo "whole suite done in $(( $(date +%s) - t0 )) s"
summary
[[ $ui_rc == 0 ]] || { echo "test.sh: the web UI test failed on at least one version (see above)" >&2; exit 1; }
