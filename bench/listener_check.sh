#!/usr/bin/env bash
# Instructions per request of the code the listener check touches (bench/listener_check.py), counted by
# callgrind over N requests only (instrumentation on after the imports and set-up, off after the loop).
# Env: SIDES ("NAME:ROOT[:named] ..."; default: this checkout unnamed and named), N (default 20000).
# A side on a checkout from before named listeners: its unnamed path, with no check at all.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
N=${N:-20000}
SIDES=${SIDES:-"unnamed:$root named:$root:named"}
printf "%-10s %12s\n" side "instr/req"
for side in $SIDES; do
  IFS=: read -r name side_root arg <<<"$side"
  log=$(mktemp) fifo=$(mktemp -u) out=$(mktemp -u)
  mkfifo "$fifo"
  PYTHONHASHSEED=0 PYTHONPATH="$side_root" valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=/dev/null \
    python "$root/bench/listener_check.py" "$N" ${arg:-} < "$fifo" > "$out.txt" 2> "$log" &
  pid=$!
  exec 3> "$fifo"
  until grep -q ready "$out.txt" 2>/dev/null; do sleep 0.2; done
  callgrind_control -i on "$pid" > /dev/null
  echo go >&3
  until grep -q done "$out.txt" 2>/dev/null; do sleep 0.2; done
  callgrind_control -i off "$pid" > /dev/null
  echo end >&3
  exec 3>&-
  wait "$pid"
  printf "%-10s %12s\n" "$name" "$(awk -v n="$N" '/refs:/ {gsub(",", "", $4); printf "%.0f", $4 / n}' "$log")"
  rm -f "$log" "$fifo" "$out.txt"
done
