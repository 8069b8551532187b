#!/usr/bin/env bash
# Builds the libFuzzer targets (CMake preset `fuzz`: clang, ASan + UBSan) and runs them:
#   scripts/fuzz.sh TARGET SECONDS      TARGET: fuzz_config, fuzz_openrouter, fuzz_money,
#                                       fuzz_segment, or all (each for SECONDS)
# Each target runs on a working copy of its seed corpus (fuzz/corpus/TARGET, copied into
# build/fuzz/corpus/TARGET, which keeps what earlier runs found); crashing inputs go to
# build/fuzz/artifacts/TARGET/, logs to build/fuzz/logs/. Prints one line per target and exits 1
# when any target crashed (or leaked, or hung), naming the input that did it.
# The build and each run take the build lock (LEDGER_BUILD_LOCK, default /tmp/ledger-build.lock;
# empty = no lock) one step at a time: do not wrap this script in flock yourself.
set -euo pipefail
cd "$(dirname "$0")/.."

targets_all=(fuzz_config fuzz_openrouter fuzz_money fuzz_segment)
usage() { echo "usage: $0 TARGET SECONDS   (TARGET: ${targets_all[*]} or all)" >&2; exit 2; }
[ $# -eq 2 ] || usage
case "$2" in '' | *[!0-9]*) usage ;; esac
seconds="$2"
if [ "$1" = all ]; then
  targets=("${targets_all[@]}")
else
  case " ${targets_all[*]} " in *" $1 "*) targets=("$1") ;; *) usage ;; esac
fi

lock="${LEDGER_BUILD_LOCK-/tmp/ledger-build.lock}"
locked() { if [ -n "$lock" ]; then flock "$lock" "$@"; else "$@"; fi; }

# What the build needs (scripts/setup.sh), plus clang and its libFuzzer runtime; apt-get runs only
# when something is missing.
scripts/setup.sh >/dev/null
missing=()
for p in clang libclang-rt-dev; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo_cmd=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "fuzz: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
    sudo_cmd=(sudo)
  fi
  echo "fuzz: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

export CC=clang CXX=clang++
build=build/fuzz
locked cmake --preset fuzz >/dev/null
if ! locked cmake --build --preset fuzz -j 2 >"$build/build.log" 2>&1; then
  grep -E "error|Error" "$build/build.log" | head -20 >&2
  echo "fuzz: build failed (see $build/build.log)" >&2
  exit 1
fi

# Longest input per target: a config or a response body of a few KiB; an amount or a double; a
# few hundred 13-byte segment patches (or the start of a header).
max_len() {
  case "$1" in
    fuzz_config | fuzz_openrouter) echo 8192 ;;
    fuzz_money) echo 64 ;;
    fuzz_segment) echo 2048 ;;
  esac
}

mkdir -p "$build/logs"
failed=0
for t in "${targets[@]}"; do
  corpus="$build/corpus/$t" artifacts="$build/artifacts/$t" log="$build/logs/$t.log"
  mkdir -p "$corpus" "$artifacts"
  cp -n fuzz/corpus/"$t"/* "$corpus"/ 2>/dev/null || true
  before=$(ls -d /dev/shm/ledger-fuzz-segment.* 2>/dev/null || true)
  rc=0
  # The run's own time starts once the lock is held (the start is written from inside it).
  locked env ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}" UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1}" \
    bash -c 'date +%s >"$0.start"; exec "$@"' "$log" \
    "$build/fuzz/$t" "$corpus" -max_total_time="$seconds" -max_len="$(max_len "$t")" -timeout=20 \
    -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$artifacts/" >"$log" 2>&1 || rc=$?
  elapsed=$(($(date +%s) - $(cat "$log.start")))
  # A crashed segment run leaves its temporary ledger behind: remove those this run made.
  for d in $(ls -d /dev/shm/ledger-fuzz-segment.* 2>/dev/null || true); do
    case " $(echo $before) " in *" $d "*) ;; *) rm -rf "$d" ;; esac
  done
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  runs=${runs:-$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -1)}
  if [ "$rc" -eq 0 ]; then
    echo "$t: ${runs:-?} runs in $elapsed s, no crash"
  else
    failed=1
    input=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
    what=$(grep -m1 -oE "ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer): [A-Za-z -]+|runtime error: .*|fuzz_[a-z]+: .*" "$log" || true)
    echo "$t: FAILED after ${runs:-?} runs in $elapsed s: ${what:-exit $rc}"
    echo "  input: ${input:-none written} (reproduce: $build/fuzz/$t ${input:-}); log: $log"
  fi
done
exit "$failed"
