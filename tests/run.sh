#!/usr/bin/env bash
# run.sh BUILD: run every test program in BUILD/tests, show their output, and
# end with one line: "N passed, N failed, N skipped".
# A program that dies (a crash, a sanitizer report) counts as a failure even
# when cmocka could not report it.
build=${1:-build}
export WEFT_BIN="$build/weft"
pass=0 fail=0 skip=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT
start=$(date +%s)
times=""
for t in "$build"/tests/test_*; do
  [ -x "$t" ] || continue
  t0=$(date +%s)
  "$t" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  times="$times $(basename "$t") $(( $(date +%s) - t0 ))s,"
  # Count a result only right after its "[ RUN ]" line: cmocka repeats the
  # failed and skipped names in its closing summary.
  read -r p f s < <(awk '
    /^\[ RUN      \]/ { pending = 1; next }
    pending && /^\[       OK \]/ { p++; pending = 0 }
    pending && /^\[  FAILED  \]/ { f++; pending = 0 }
    pending && /^\[  SKIPPED \]/ { s++; pending = 0 }
    END { print p + 0, f + 0, s + 0 }' "$log")
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
    echo "FAIL $(basename "$t"): exited with status $rc"
    f=1
  fi
  pass=$((pass + p)) fail=$((fail + f)) skip=$((skip + s))
done
echo "tests took $(( $(date +%s) - start ))s ($build):${times%,}"
echo "$pass passed, $fail failed, $skip skipped"
[ "$fail" -eq 0 ]
