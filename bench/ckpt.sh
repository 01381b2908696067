#!/usr/bin/env bash
# ckpt.sh: checkpoint write and load throughput of GPT-2 124M (fp32, AdamW:
# 1.49 GB a checkpoint: the weights, exp_avg and exp_avg_sq, whole) on 1 rank
# and on 4 ranks (tp 2 x pp 2), against cp of the same bytes on the same disk
# in the same run.  weft times itself: a save from its first byte to the
# tracker's fsync (every file fsynced, the directory renamed), a load from
# opening the files to every rank's slices read (every header entry checked
# on every rank).  The baseline: `cp -r` of the checkpoint directory to a
# sibling, then `sync`, timed together (cp reads from the page cache, as the
# load does; nothing here can drop the cache as a container); and `cat` of the
# files to /dev/null, a read alone.  Each case RUNS times; the median.
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
printf '%-22s %8s %10s %10s %10s %8s %8s\n' case GB "weft GB/s" "cp GB/s" "cat GB/s" "weft/cp" ""
for layout in "1" "4 --tp 2 --pp 2"; do
  set -- $layout
  ranks=$1; shift
  plan="$out/gpt2-$ranks.plan"
  build/weft compile models/gpt2.xml --arch cpu --seq-length 64 --micro-batch-size 1 --world-size "$ranks" "$@" -o "$plan" >/dev/null
  save=() load=() cp=() cat=()
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
    t0=$(date +%s.%N); cat "$out/ck/iter_0000000"/* > /dev/null; t1=$(date +%s.%N)
    cat+=("$(python3 -c "print($t1 - $t0)")")
  done
  s=$(median "${save[@]}") l=$(median "${load[@]}") c=$(median "${cp[@]}") k=$(median "${cat[@]}")
  name="$ranks rank$([ "$ranks" = 1 ] || echo "s $*")"
  python3 -c "
gb = $bytes / 1e3
print(f'{\"$name save\":<22} {gb:8.2f} {gb / $s:10.2f} {gb / $c:10.2f} {gb / $k:10.2f} {$c / $s:8.2f}x')
print(f'{\"$name load\":<22} {gb:8.2f} {gb / $l:10.2f} {gb / $c:10.2f} {gb / $k:10.2f} {$c / $l:8.2f}x')"
  echo "    save, each run (s): ${save[*]}; load: ${load[*]}; cp + sync: ${cp[*]}; cat: ${cat[*]}"
done
rm -rf "$out/ck" "$out/ck-copy"
