#!/usr/bin/env bash
# Model-checks the pool's synchronization with loom: the `loom_*` models of
# crates/pool/tests/loom.rs run the real pool code (join counters, node states, sleeping and
# waking, run completion, shutdown) under every interleaving loom explores, with the deques
# replaced by mutex-protected queues (crates/pool/src/queue.rs).
#
# Each model sets its own preemption bound; LOOM_MAX_PREEMPTIONS overrides it for all of them.
# Extra arguments go to the test binary (e.g. a model's name, or `--ignored` to run the models
# of known bugs).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export RUSTFLAGS="--cfg loom ${RUSTFLAGS:-}"
# A target directory of its own, so that `--cfg loom` does not rebuild the normal one.
export CARGO_TARGET_DIR="${LOOM_TARGET_DIR:-target/loom}"

start=$(date +%s)
# --nocapture: a model that fails on a worker thread (loom's deadlock report) aborts the test
# process, and captured output would be lost with it.
cargo test -p nerv-pool --release --test loom -- --nocapture "$@"
echo "loom: done in $(($(date +%s) - start)) s"
