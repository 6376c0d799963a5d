#!/usr/bin/env bash
# Builds every fuzz target and runs each for SECONDS (default 15) on its corpus
# (fuzz/corpus/<target>/). A crash, a failed property or a leak fails the run, leaving the
# input in fuzz/artifacts/<target>/. Needs the nightly toolchain and cargo-fuzz.
#   fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-15}"
shift || true
# --dev: the fuzz workspace's dev profile is optimised (opt-level 1) and builds in a
# fraction of the release profile's time. No sanitizer: no crate of ours has `unsafe`.
flags=(--dev --sanitizer none)
cargo +nightly fuzz build "${flags[@]}"
targets=("$@")
if [ "${#targets[@]}" = 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target"
  echo "fuzz: $target for ${seconds}s"
  # -rss_limit_mb: a target that grows past it fails (what the agent holds is bounded).
  log="target/fuzz-$target.log"
  if ! cargo +nightly fuzz run "${flags[@]}" "$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=1024 -timeout=10 -print_final_stats=1 \
    >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "fuzz: $target FAILED; the input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
  grep -hE '^stat::(number_of_executed_units|peak_rss_mb)|^INFO: seed corpus' "$log" || true
done
echo "fuzz: ${#targets[@]} targets passed, ${seconds}s each"
