#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo-fuzz / libFuzzer, nightly toolchain) of the guard's decoders.
#
#   scripts/fuzz.sh                 every target for FUZZ_SECONDS (default 30) each
#   scripts/fuzz.sh TARGET...       only these (see fuzz/Cargo.toml)
#   FUZZ_SECONDS=3600 scripts/fuzz.sh socketio_events     a long run
#
# Seeds: fuzz/corpus/TARGET (committed); what a run adds stays local (git-ignored).
# Crashes land in fuzz/artifacts/TARGET and fail the run. Installs cargo-fuzz when missing.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO/fuzz"
SECONDS_EACH="${FUZZ_SECONDS:-30}"
TOOLCHAIN="${FUZZ_TOOLCHAIN:-nightly}"

command -v cargo >/dev/null || { echo "fuzz.sh: cargo not found" >&2; exit 2; }
rustup run "$TOOLCHAIN" rustc --version >/dev/null 2>&1 || rustup toolchain install "$TOOLCHAIN" --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

targets=("$@")
if (( ${#targets[@]} == 0 )); then
  mapfile -t targets < <(cargo +"$TOOLCHAIN" fuzz list)
fi
summary=()
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  log="$(mktemp -t "fuzz-$t.XXXXXX")"
  echo "=== fuzz $t for ${SECONDS_EACH}s ==="
  if ! cargo +"$TOOLCHAIN" fuzz run "$t" "corpus/$t" -- -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 >"$log" 2>&1; then
    tail -40 "$log"
    echo "fuzz.sh: $t FAILED (artifacts in fuzz/artifacts/$t)" >&2
    exit 1
  fi
  runs=$(grep -Eo 'Done [0-9]+ runs' "$log" | tail -1 | grep -Eo '[0-9]+' || echo "?")
  summary+=("$t: $runs executions in ${SECONDS_EACH}s, 0 crashes")
  rm -f "$log"
done
printf '%s\n' "${summary[@]}"
