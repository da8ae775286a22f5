#!/usr/bin/env bash
# Runs every test binary of nerv-pool (unit tests and integration tests) under valgrind's
# memcheck: any invalid read or write, use of uninitialised memory, invalid free, or
# definitely leaked block makes this script fail.
#
# NERV_SMALL=1 makes the tests shrink their graphs so the whole run takes a few minutes.
# Extra arguments go to each test binary (e.g. a test-name filter).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export NERV_SMALL=1
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-2}"
export RUST_BACKTRACE=0

command -v valgrind >/dev/null || { echo "valgrind: not installed" >&2; exit 1; }

# Build the test binaries and collect their paths from cargo's JSON messages.
json=$(cargo test -p nerv-pool --no-run --message-format=json)
if command -v jq >/dev/null; then
    mapfile -t bins < <(jq -r 'select(.reason == "compiler-artifact" and .profile.test == true
        and .executable != null) | .executable' <<<"$json")
else
    mapfile -t bins < <(python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("profile", {}).get("test") and m.get("executable"):
        print(m["executable"])
' <<<"$json")
fi
[ "${#bins[@]}" -gt 0 ] || { echo "valgrind: no test binary found" >&2; exit 1; }

start=$(date +%s)
for bin in "${bins[@]}"; do
    echo "== valgrind ${bin#"$PWD"/}"
    t0=$(date +%s)
    valgrind --tool=memcheck --error-exitcode=1 --leak-check=full \
        --errors-for-leak-kinds=definite --show-leak-kinds=definite --quiet \
        "$bin" --test-threads="$RUST_TEST_THREADS" "$@"
    echo "   ok in $(($(date +%s) - t0)) s"
done
echo "valgrind: ${#bins[@]} test binaries clean in $(($(date +%s) - start)) s"
