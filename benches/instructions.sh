#!/usr/bin/env bash
# Instructions per task of the executor, counted by valgrind's callgrind: a figure that does not
# drift with the machine's phases (wall-clock figures on the shared CI machines move by 2x
# within minutes), for comparing two versions of the hot path. Not a time: a cache miss or a
# contended line costs more than an instruction, so confirm a gain with interleaved timed runs.
#
#   benches/instructions.sh                       # the four shapes, bare
#   benches/instructions.sh --observed            # with the event bus, a counter and the projector
#   SHAPES="chain tree" TASKS=100000 benches/instructions.sh
#   BIN=/tmp/old-shapes benches/instructions.sh   # another build of the shapes example
#
# One worker, one run of TASKS tasks (default 10^5); counted: every thread of the process except
# the main one (the graph is built on the main thread), so the figure includes the workers'
# own loop, stealing and sleeping, and with --observed the projector's folds.
set -euo pipefail
cd "$(dirname "$0")/.."
TASKS="${TASKS:-100000}"
SHAPES="${SHAPES:-chain fanout tree wavefront}"
if [ -z "${BIN:-}" ]; then
    cargo build --release -q -p nerv --example shapes
    BIN=target/release/examples/shapes
fi
command -v valgrind > /dev/null || { echo "valgrind is not installed" >&2; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for shape in $SHAPES; do
    valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$out/cg" \
        "$BIN" --json --shape "$shape" --tasks "$TASKS" --runs 1 --workers 1 "$@" \
        > "$out/json" 2> "$out/err"
    # Thread 1 is the main thread; the others are the pool's worker (and, if any, its helpers).
    total=0
    for f in "$out"/cg-*; do
        [ "$f" = "$out/cg-01" ] && continue
        n=$(grep -m1 '^totals:\|^summary:' "$f" | awk '{print $2}')
        total=$((total + ${n:-0}))
    done
    # The shape's own task count (a wavefront is a square grid of about TASKS cells).
    n=$(grep -o '"tasks": [0-9]*' "$out/json" | head -1 | grep -o '[0-9]*$')
    awk -v s="$shape" -v t="$total" -v n="$n" \
        'BEGIN { printf "{\"shape\": \"%s\", \"tasks\": %d, \"workers\": 1, \"instructions_per_task\": %.1f}\n", s, n, t / n }'
    rm -f "$out"/cg-*
done
