#!/bin/bash
# `make run` in two clones, one after the other on the same machine: prints one line per clone
# (commit, exit code, wall seconds). Usage: bench/make_run_pair.sh OLD_CLONE NEW_CLONE [OUT_FILE]
# Each clone needs its own `make venv` first; their results/ and runs/ folders are deleted.
set -u
out=${3:-/dev/stdout}
for dir in "$1" "$2"; do
  (cd "$dir" && rm -rf results runs)
  start=$(date +%s.%N)
  make -C "$dir" run > "$dir/make_run.log" 2>&1; rc=$?
  end=$(date +%s.%N)
  echo "$dir $(git -C "$dir" rev-parse --short HEAD) rc=$rc wall_s=$(echo "$end - $start" | bc)" >> "$out"
done
