#!/usr/bin/env bash
# nerv vs make vs ninja: 1000 `true` tasks in four graph shapes, `-j 2`.
#
#   benches/cli_vs_make.sh              # all four shapes, median of 5 runs each
#   RUNS=9 TASKS=1000 JOBS=2 benches/cli_vs_make.sh
#   SHAPES="chain wavefront" benches/cli_vs_make.sh
#
# Shapes (TASKS tasks each):
#   chain      t_i needs t_{i-1}
#   fanout     t0 -> t1 .. t_{n-2} -> t_{n-1}   (1 -> 998 -> 1)
#   tree       binary tree: t_i needs its parent t_{(i-1)/2}
#   wavefront  a grid 32 wide (31 full rows and 8 cells for 1000 tasks): each cell needs the
#              one above and the one to its left
#
# The same work in all three tools: every task runs `true` and creates nothing (no stamp
# files). One process per task in each:
#   nerv   `run = ["true"]`: executes /bin/true directly (no shell).
#   make   .PHONY targets with the recipe `true`. SHELL = /bin/sh and .SHELLFLAGS = -c (the
#          defaults, set explicitly): for a recipe without shell syntax GNU make skips the
#          shell and executes /bin/true directly (its "fast path"), as nerv does.
#   ninja  `rule run: command = true`, `build tN: run | deps`. Ninja always runs commands
#          through `/bin/sh -c`; `true` is a builtin of sh, so that is one process as well. The
#          outputs tN are never created, so every run runs every edge (no `restat`: with it,
#          ninja could prune the dependents of an edge whose missing output did not change).
# Fresh state before every run: nerv's .nerv/ folder (journal and per-task logs) and
# ninja's .ninja_log/.ninja_deps are deleted; make keeps no state.
#
# nerv is timed twice: `nerv run FILE -j 2 --no-journal` (nerv_s) and with the journal
# (.nerv/nerv.db, every transition recorded; nerv_journal_s).
#
# Output: a table on stderr and one JSON object per shape on stdout:
#   {"shape","tasks","nerv_s","nerv_journal_s","make_s","ninja_s","nerv_over_ninja"}
# Times are medians (seconds) of RUNS runs, measured with bash's $EPOCHREALTIME (the tools
# take turns), or with hyperfine (--runs RUNS, its median) with HYPERFINE=1 if installed.
set -euo pipefail

RUNS=${RUNS:-5}
TASKS=${TASKS:-1000}
JOBS=${JOBS:-2}
SHAPES=${SHAPES:-"chain fanout tree wavefront"}
WIDTH=${WIDTH:-32}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
NERV=${NERV:-$TARGET_DIR/release/nerv}
WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/nerv-bench.XXXXXX")}

log() { printf '%s\n' "$*" >&2; }

if ! command -v ninja >/dev/null; then
    log "ninja not found: installing ninja-build"
    if [ "$(id -u)" = 0 ]; then apt-get install -y ninja-build >&2
    else sudo apt-get install -y ninja-build >&2; fi
fi
command -v make >/dev/null || { log "make not found (apt-get install -y make)"; exit 1; }
use_hyperfine=0
if [ "${HYPERFINE:-0}" = 1 ] && command -v hyperfine >/dev/null; then use_hyperfine=1; fi

if [ -z "${NERV_SKIP_BUILD:-}" ]; then
    log "building the release nerv binary"
    (cd "$ROOT" && cargo build --release -p nerv-cli --quiet)
fi
[ -x "$NERV" ] || { log "no nerv binary at $NERV"; exit 1; }

# deps SHAPE I: the indices task I needs, space-separated.
deps() {
    local shape=$1 i=$2 n=$TASKS
    case $shape in
        chain) [ "$i" -gt 0 ] && echo $((i - 1)) ;;
        fanout)
            if [ "$i" -eq 0 ]; then :
            elif [ "$i" -lt $((n - 1)) ]; then echo 0
            else seq -s ' ' 1 $((n - 2)); fi ;;
        tree) [ "$i" -gt 0 ] && echo $(((i - 1) / 2)) ;;
        wavefront)
            local r=$((i / WIDTH)) c=$((i % WIDTH)) d=""
            [ "$r" -gt 0 ] && d="$((i - WIDTH))"
            [ "$c" -gt 0 ] && d="$d $((i - 1))"
            echo $d ;;
        *) log "unknown shape $shape"; exit 1 ;;
    esac
    return 0
}

# Writes DIR/wf.toml, DIR/Makefile and DIR/build.ninja for SHAPE.
generate() {
    local shape=$1 dir=$2 i d list
    mkdir -p "$dir"
    {
        echo "name = \"bench-$shape\""
        for ((i = 0; i < TASKS; i++)); do
            d=$(deps "$shape" "$i")
            echo "[tasks.t$i]"
            echo 'run = ["true"]'
            if [ -n "$d" ]; then
                list=$(printf '"t%s", ' $d)
                echo "needs = [${list%, }]"
            fi
        done
    } > "$dir/wf.toml"
    {
        echo "SHELL := /bin/sh"
        echo ".SHELLFLAGS := -c"
        printf 'all:'; for ((i = 0; i < TASKS; i++)); do printf ' t%d' "$i"; done; echo
        printf '.PHONY: all'; for ((i = 0; i < TASKS; i++)); do printf ' t%d' "$i"; done; echo
        for ((i = 0; i < TASKS; i++)); do
            d=$(deps "$shape" "$i")
            printf 't%d:' "$i"; [ -n "$d" ] && printf ' t%s' $d; echo
            printf '\t@true\n'
        done
    } > "$dir/Makefile"
    {
        printf 'rule run\n  command = true\n'
        for ((i = 0; i < TASKS; i++)); do
            d=$(deps "$shape" "$i")
            printf 'build t%d: run' "$i"; [ -n "$d" ] && printf ' | '"$(printf 't%s ' $d)"; echo
        done
        printf 'build all: phony'; for ((i = 0; i < TASKS; i++)); do printf ' t%d' "$i"; done; echo
        echo "default all"
    } > "$dir/build.ninja"
}

# median of the numbers on stdin
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

# once DIR PREPARE CMD: the wall time (s) of one run of CMD in DIR, PREPARE before it.
once() {
    local dir=$1 prep=$2 cmd=$3 t0 t1
    (cd "$dir" && eval "$prep")
    t0=$EPOCHREALTIME
    (cd "$dir" && eval "$cmd") >/dev/null 2>&1 || { log "failed: $cmd (in $dir)"; exit 1; }
    t1=$EPOCHREALTIME
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f\n", b - a }'
}

# hyperfine_median DIR PREPARE CMD: hyperfine's median of RUNS runs.
hyperfine_median() {
    local dir=$1 prep=$2 cmd=$3
    (cd "$dir" && hyperfine --runs "$RUNS" --prepare "$prep" --export-json hf.json \
        --style none "$cmd" >/dev/null 2>&1) || { log "failed: $cmd (in $dir)"; exit 1; }
    awk -F: '/"median"/ { gsub(/[ ,]/, "", $2); print $2; exit }' "$dir/hf.json"
}

# measure DIR: sets nerv_s nerv_j make_s ninja_s (medians). Without hyperfine the four tools
# take turns (run 1 of each, then run 2 of each, ...), so that a change in the machine's
# load during the measurement does not favour one of them.
measure() {
    local dir=$1 k i
    local preps=("rm -rf .nerv" "rm -rf .nerv" "true" "rm -f .ninja_log .ninja_deps")
    local cmds=("$NERV run wf.toml -j $JOBS --no-journal" "$NERV run wf.toml -j $JOBS"
        "make -j$JOBS -f Makefile" "ninja -j$JOBS")
    local -a med
    if [ "$use_hyperfine" = 1 ]; then
        for i in 0 1 2 3; do med[i]=$(hyperfine_median "$dir" "${preps[i]}" "${cmds[i]}"); done
    else
        rm -f "$dir"/times.*
        for ((k = 0; k < RUNS; k++)); do
            for i in 0 1 2 3; do once "$dir" "${preps[i]}" "${cmds[i]}" >> "$dir/times.$i"; done
        done
        for i in 0 1 2 3; do med[i]=$(median < "$dir/times.$i"); done
    fi
    nerv_s=${med[0]} nerv_j=${med[1]} make_s=${med[2]} ninja_s=${med[3]}
}

log "work folder: $WORK; $RUNS runs per measurement; -j $JOBS; $(nproc) CPUs; load:$(uptime | sed 's/.*load average//')"
log "$(make --version | head -1); ninja $(ninja --version); nerv $("$NERV" --version | awk '{ print $2 }')"
printf '%-10s %6s %9s %14s %9s %9s %16s\n' shape tasks nerv_s nerv_journal_s make_s ninja_s nerv_over_ninja >&2
for shape in $SHAPES; do
    dir=$WORK/$shape
    generate "$shape" "$dir"
    "$NERV" validate "$dir/wf.toml" >/dev/null
    measure "$dir"
    ratio=$(awk -v a="$nerv_s" -v b="$ninja_s" 'BEGIN { printf "%.2f", a / b }')
    printf '%-10s %6d %9.3f %14.3f %9.3f %9.3f %16s\n' "$shape" "$TASKS" "$nerv_s" "$nerv_j" "$make_s" "$ninja_s" "$ratio" >&2
    printf '{"shape":"%s","tasks":%d,"nerv_s":%s,"nerv_journal_s":%s,"make_s":%s,"ninja_s":%s,"nerv_over_ninja":%s}\n' \
        "$shape" "$TASKS" "$nerv_s" "$nerv_j" "$make_s" "$ninja_s" "$ratio"
done
log "load after:$(uptime | sed 's/.*load average//')"
