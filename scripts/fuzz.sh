#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo-fuzz / libFuzzer, nightly toolchain, AddressSanitizer) of the
# guard's parsers and filters. Targets (fuzz/fuzz_targets/, properties in each file's header):
#   canonical framing routes args lists models   request targets, HTTP/1 framing vs hyper,
#                                                routes.toml, JSON/multipart/query extraction,
#                                                6.12 list filters over generated ownership facts,
#                                                the batch scan (every model reference found)
#   engineio_decode socketio_decode socketio_events socketio_client     Engine.IO / Socket.IO
#
#   scripts/fuzz.sh                 every target for FUZZ_SECONDS (default 30) each
#   scripts/fuzz.sh TARGET...       only these
#   FUZZ_SECONDS=600 scripts/fuzz.sh            the documented long run (docs/reliability.md)
#
# Seeds: fuzz/corpus/TARGET (committed; regenerate with `python3 fuzz/seeds.py`); what a run adds
# stays local (git-ignored). Crashes land in fuzz/artifacts/TARGET and fail the run.
# The build (about 10 minutes cold on 2 cores) goes to FUZZ_TARGET_DIR, by default
# ${XDG_CACHE_HOME:-~/.cache}/invoke-guard/fuzz-target, outside the repository, so a fresh clone
# reuses it. FUZZ_SUMMARY=FILE appends one line per target (target, executions, seconds, crashes).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO/fuzz"
SECONDS_EACH="${FUZZ_SECONDS:-30}"
TOOLCHAIN="${FUZZ_TOOLCHAIN:-nightly}"
TARGET_DIR="${FUZZ_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/invoke-guard/fuzz-target}"

command -v cargo >/dev/null || { echo "fuzz.sh: cargo not found" >&2; exit 2; }
rustup run "$TOOLCHAIN" rustc --version >/dev/null 2>&1 || rustup toolchain install "$TOOLCHAIN" --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

targets=("$@")
if (( ${#targets[@]} == 0 )); then
  mapfile -t targets < <(cargo +"$TOOLCHAIN" fuzz list)
fi
mkdir -p "$TARGET_DIR"
echo "=== fuzz build (target dir $TARGET_DIR) ==="
build_log="$(mktemp -t fuzz-build.XXXXXX)"
if ! cargo +"$TOOLCHAIN" fuzz build --target-dir "$TARGET_DIR" >"$build_log" 2>&1; then
  tail -40 "$build_log"
  echo "fuzz.sh: the fuzz targets do not build" >&2
  exit 1
fi
rm -f "$build_log"
summary=()
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  log="$(mktemp -t "fuzz-$t.XXXXXX")"
  echo "=== fuzz $t for ${SECONDS_EACH}s ==="
  if ! cargo +"$TOOLCHAIN" fuzz run --target-dir "$TARGET_DIR" "$t" "corpus/$t" -- \
      -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
    tail -40 "$log"
    echo "fuzz.sh: $t FAILED (artifacts in fuzz/artifacts/$t)" >&2
    [[ -n "${FUZZ_SUMMARY:-}" ]] && echo "$t,?,$SECONDS_EACH,1" >>"$FUZZ_SUMMARY"
    exit 1
  fi
  runs=$(grep -Eo 'Done [0-9]+ runs' "$log" | tail -1 | grep -Eo '[0-9]+' || echo "?")
  cov=$(grep -Eo 'cov: [0-9]+' "$log" | tail -1 | grep -Eo '[0-9]+' || echo "?")
  summary+=("$t: $runs executions in ${SECONDS_EACH}s, coverage $cov, 0 crashes")
  [[ -n "${FUZZ_SUMMARY:-}" ]] && echo "$t,$runs,$SECONDS_EACH,0" >>"$FUZZ_SUMMARY"
  rm -f "$log"
done
printf '%s\n' "${summary[@]}"
echo "PASS ${#summary[@]}/${#targets[@]} fuzz targets, 0 crashes"
