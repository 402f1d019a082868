#!/usr/bin/env bash
# Runs the fuzz targets (tests/fuzz/fuzz_targets), each until 10 million executions or SECONDS
# (default 1800), whichever comes first, and prints what each did. A crash stops that target
# and leaves its input in tests/fuzz/artifacts/TARGET/: turn it into a regression test beside
# the code it broke.
#
#   tests/fuzz/run.sh [SECONDS] [TARGET...]      (needs the nightly toolchain and cargo-fuzz)
#
# Built optimised with debug assertions (overflow checks on) and no sanitizer: in safe Rust the
# findings are panics, and the sanitizer would cost half the executions.
set -uo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-1800}
shift || true
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list --fuzz-dir tests/fuzz)

# The files a target starts from, besides its own seeds (tests/fuzz/seeds/TARGET).
seeds_of() {
  case "$1" in
    gateway_config) echo gateway/examples ;;
    edge_config) echo firmware/edge/examples ;;
    profile) echo firmware/edge/profiles ;;
    sim_scenario) echo simulators/scenarios ;;
    data_files)
      # The input's first byte picks the file kind: 0 coefficients, 1 limits.
      local d=target/fuzz-seeds/data_files
      mkdir -p "$d"
      { printf '\x00'; cat gateway/energy/data/coefficients.toml; } > "$d/coefficients"
      { printf '\x01'; cat gateway/energy/data/limits.toml; } > "$d/limits"
      echo "$d" ;;
  esac
}

# Built once, then run: the binaries stay what was built while the sources change.
one=()
[ ${#targets[@]} -eq 1 ] && one=("${targets[0]}")
cargo +nightly fuzz build --fuzz-dir tests/fuzz -O -a -s none "${one[@]}" || exit 1
# A workspace member: its binaries land in the workspace's target directory.
bindir=target/x86_64-unknown-linux-gnu/release
status=0
for t in "${targets[@]}"; do
  corpus=target/fuzz-corpus/$t
  mkdir -p "$corpus" "tests/fuzz/artifacts/$t"
  dirs=("$corpus")
  [ -d "tests/fuzz/seeds/$t" ] && dirs+=("tests/fuzz/seeds/$t")
  extra=$(seeds_of "$t")
  [ -n "$extra" ] && dirs+=("$extra")
  log=target/fuzz-$t.log
  echo "==> $t (${secs} s or 10 million runs)"
  "$bindir/$t" "${dirs[@]}" \
    -max_total_time="$secs" -runs=10000000 -rss_limit_mb=4096 -timeout=20 \
    -artifact_prefix="tests/fuzz/artifacts/$t/" -print_final_stats=1 >"$log" 2>&1
  rc=$?
  runs=$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}')
  took=$(grep -E '^Done [0-9]+ runs in' "$log" | sed -E 's/Done ([0-9]+) runs in ([0-9]+) second.*/\2 s/')
  if [ $rc -eq 0 ]; then
    echo "    $t: ${runs:-?} executions in ${took:-$secs s}, no crash"
  else
    status=1
    echo "    $t: FAILED after ${runs:-?} executions (see $log and tests/fuzz/artifacts/$t/)"
    grep -E "panicked|ERROR|SUMMARY" "$log" | head -5
  fi
done
exit $status
