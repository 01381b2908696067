#!/usr/bin/env bash
# ckpt.sh: checkpoint write and load throughput of GPT-2 124M (fp32, AdamW:
# 1.49 GB a checkpoint: the weights, exp_avg and exp_avg_sq, whole) on 1 rank
# and on 4 ranks (tp 2 x pp 2), against cp of the same bytes on the same disk
# in the same run.  weft times itself: a save from its first byte to the
# tracker's fsync (every file fsynced, the directory renamed), a load from
# opening the files to every rank's slices read (every header entry checked
# on every rank).  The baseline: `cp -r` of the checkpoint directory to a
# sibling, then `sync`, timed together (cp reads from the page cache, as the
# load does; nothing here can drop the cache as a container); `dd` of as many
# bytes from /dev/zero to a file (bs 9M), then `sync`: write(2) from memory,
# what any program pays that writes what it holds (cp copies inside the
# kernel, copy_file_range); and `cat` of the files to /dev/null, a read
# alone.  Each case RUNS times; the median.
#   bench/ckpt.sh [RUNS]      (default 3; DIR=... for the disk, default build/bench-ckpt)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
make --no-print-directory build/weft >/dev/null
out=${DIR:-build/bench-ckpt}
mkdir -p "$out"
mpi=(mpirun --oversubscribe --bind-to none)
[ "$(id -u)" = 0 ] && mpi+=(--allow-run-as-root)
echo "# $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, $(free -g | awk '/^Mem/ {print $2}') GiB; $(df -h "$out" | awk 'NR == 2 {print $1 " (" $2 ")"}'); $(date -u +%F)"
median() { python3 -c "import statistics, sys; print(statistics.median(float(x) for x in sys.argv[1:]))" "$@"; }
printf '%-28s %6s %10s %8s %8s %9s %8s %8s\n' case GB "weft GB/s" "cp GB/s" "dd GB/s" "cat GB/s" "weft/cp" "weft/dd"
for layout in "1" "4 --tp 2 --pp 2"; do
  set -- $layout
  ranks=$1; shift
  plan="$out/gpt2-$ranks.plan"
  build/weft compile models/gpt2.xml --arch cpu --seq-length 64 --micro-batch-size 1 --world-size "$ranks" "$@" -o "$plan" >/dev/null
  save=() load=() cp=() dd=() cat=()
  for r in $(seq "$runs"); do
    rm -rf "$out/ck" "$out/ck-copy"
    sync
    "${mpi[@]}" -np "$ranks" build/weft run "$plan" --steps 0 --save "$out/ck" > "$out/save.txt"
    save+=("$(sed -n 's/^saved checkpoint .* in \([0-9.]*\) s .*/\1/p' "$out/save.txt")")
    bytes=$(sed -n 's/^saved checkpoint .*: \([0-9.]*\) MB in .*/\1/p' "$out/save.txt")
    sync
    "${mpi[@]}" -np "$ranks" build/weft run "$plan" --steps 0 --load "$out/ck" > "$out/load.txt"
    load+=("$(sed -n 's/^loaded .* in \([0-9.]*\) s .*/\1/p' "$out/load.txt")")
    sync
    t0=$(date +%s.%N); cp -r "$out/ck/iter_0000000" "$out/ck-copy"; sync; t1=$(date +%s.%N)
    cp+=("$(python3 -c "print($t1 - $t0)")")
    t0=$(date +%s.%N); dd if=/dev/zero of="$out/ck-copy/dd" bs=9M count="$(python3 -c "print(round($bytes * 1e6 / (9 << 20)))")" status=none; sync
    t1=$(date +%s.%N)
    dd+=("$(python3 -c "print($t1 - $t0)")")
    t0=$(date +%s.%N); cat "$out/ck/iter_0000000"/* > /dev/null; t1=$(date +%s.%N)
    cat+=("$(python3 -c "print($t1 - $t0)")")
  done
  s=$(median "${save[@]}") l=$(median "${load[@]}") c=$(median "${cp[@]}") w=$(median "${dd[@]}") k=$(median "${cat[@]}")
  name="$ranks rank$([ "$ranks" = 1 ] || echo "s $*")"
  python3 -c "
gb = $bytes / 1e3
print(f'{\"$name save\":<28} {gb:6.2f} {gb / $s:10.2f} {gb / $c:8.2f} {gb / $w:8.2f} {gb / $k:9.2f} {$c / $s:7.2f}x {$w / $s:7.2f}x')
print(f'{\"$name load\":<28} {gb:6.2f} {gb / $l:10.2f} {gb / $c:8.2f} {gb / $w:8.2f} {gb / $k:9.2f} {$c / $l:7.2f}x {$w / $l:7.2f}x')"
  r3() { python3 -c "import sys; print(' '.join(f'{float(x):.2f}' for x in sys.argv[1:]))" "$@"; }
  echo "    seconds, each run: save $(r3 "${save[@]}"); load $(r3 "${load[@]}"); cp + sync $(r3 "${cp[@]}"); dd + sync $(r3 "${dd[@]}"); cat $(r3 "${cat[@]}")"
done
rm -rf "$out/ck" "$out/ck-copy"
