//! Batching for fine-grained work: a map over many small items, run in chunks whose size is
//! chosen from the measured time per item.
//!
//! Invariants:
//! - The result has one value per item, in the items' order; the first item whose function
//!   fails fails the map (its chunk's task names the item's index).
//! - Each item is computed exactly once: the items measured to choose the chunk size are kept.
//!
//! Protocol, when the map task runs:
//! 1. Measure: compute items inline, from the first, until [`SAMPLE_TIME`] has passed (at least
//!    [`SAMPLE_MIN`] items, at most [`SAMPLE_MAX`]), timed in groups of four; the median
//!    group's time per item is the estimate (a preemption while measuring spoils one group,
//!    not the estimate). So that there is a median to take, measuring goes on to three groups
//!    unless [`SAMPLE_PATIENCE`] has passed: a preempted first group alone used to end the
//!    measuring with an estimate hundreds of times too high (and chunks that small).
//! 2. Choose the chunk size: as many items as fit in [`CHUNK_TIME`] at that estimate, but no
//!    more than an eighth of the rest per worker (so that every worker gets several chunks and a
//!    slow chunk does not leave the others idle), and at least one.
//! 3. Fan out: a subgraph of one task per chunk (each writes its values into its own slot),
//!    then one task that joins the slots in order into the map's output. A million tiny items
//!    thus cost a few hundred scheduling round-trips instead of a million.

use super::{GraphBuilder, Handle, TaskBuilder};
use crate::context::TaskContext;
use crate::dynamic::Subgraph;
use crate::task::TaskError;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long the map measures items inline before it chooses a chunk size.
pub const SAMPLE_TIME: Duration = Duration::from_micros(20);
/// The fewest items measured (unless there are fewer).
pub const SAMPLE_MIN: usize = 4;
/// The most items measured.
pub const SAMPLE_MAX: usize = 4096;
/// How long measuring may go on past [`SAMPLE_TIME`] to get three groups. Past it, one group
/// is enough: its items took so long that a preemption is small beside them.
pub const SAMPLE_PATIENCE: Duration = Duration::from_millis(1);
/// Items per timed group while measuring.
const SAMPLE_GROUP: usize = 4;
/// The time one chunk should take at the measured per-item time: long enough that the cost of
/// scheduling it (well under a microsecond) is lost in it.
pub const CHUNK_TIME: Duration = Duration::from_micros(200);

/// Items a batched map can read: a `Vec<T>` (copied once into shared memory when the map
/// fans out) or an `Arc<Vec<T>>` (shared as is).
pub trait BatchItems: Send + Sync + 'static {
    /// One item.
    type Item: Send + Sync + 'static;
    /// The items, in order.
    fn items(&self) -> &[Self::Item];
    /// The items, shared with the chunk tasks.
    fn share(&self) -> Arc<dyn AsRef<[Self::Item]> + Send + Sync>;
}

impl<T: Clone + Send + Sync + 'static> BatchItems for Vec<T> {
    type Item = T;
    fn items(&self) -> &[T] {
        self
    }
    fn share(&self) -> Arc<dyn AsRef<[T]> + Send + Sync> {
        Arc::new(self.clone())
    }
}

impl<T: Send + Sync + 'static> BatchItems for Arc<Vec<T>> {
    type Item = T;
    fn items(&self) -> &[T] {
        self
    }
    fn share(&self) -> Arc<dyn AsRef<[T]> + Send + Sync> {
        self.clone()
    }
}

/// Whether to measure another item, having measured `measured` in `groups` full groups for
/// `elapsed` (step 1).
fn keep_sampling(measured: usize, groups: usize, elapsed: Duration) -> bool {
    measured < SAMPLE_MIN || elapsed < SAMPLE_TIME || (groups < 3 && elapsed < SAMPLE_PATIENCE)
}

/// The chunk size for `rest` items at `per_item` each on `workers` workers (step 2).
pub(crate) fn chunk_size(per_item: Duration, rest: usize, workers: usize) -> usize {
    let by_time = (CHUNK_TIME.as_nanos() / per_item.as_nanos().max(1)).max(1);
    let by_balance = rest.div_ceil(8 * workers.max(1)).max(1);
    (by_time.min(by_balance as u128) as usize).max(1)
}

impl TaskBuilder<'_> {
    /// Maps `f` over the items of `items` in parallel, in chunks sized from the measured time
    /// per item (see the module's protocol); the output holds one value per item, in order.
    /// Use it for many small items, where a task per item would cost more to schedule than
    /// to run.
    ///
    /// ```
    /// use nerv::{Executor, Graph, TaskError};
    ///
    /// let mut g = Graph::builder();
    /// let nums = g.task("nums").run((), |_, ()| Ok::<_, TaskError>((0..100_000u64).collect::<Vec<_>>()));
    /// let squares = g.task("squares").map_batched(nums, |x: &u64| Ok(x * x));
    /// let report = Executor::builder().workers(2).build().run(&g.build().unwrap());
    /// assert_eq!(report.output(squares).unwrap()[9], 81);
    /// ```
    pub fn map_batched<S, U, F>(self, items: Handle<S>, f: F) -> Handle<Arc<Vec<U>>>
    where
        S: BatchItems,
        U: Send + Sync + 'static,
        F: Fn(&S::Item) -> Result<U, TaskError> + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        self.run_dynamic(items, move |ctx: &TaskContext<'_>, items: &S| {
            fan_out(ctx.workers(), items, &f)
        })
    }
}

/// Steps 1 and 3 of the protocol.
fn fan_out<S, U, F>(
    workers: usize,
    items: &S,
    f: &Arc<F>,
) -> Result<Subgraph<Arc<Vec<U>>>, TaskError>
where
    S: BatchItems,
    U: Send + Sync + 'static,
    F: Fn(&S::Item) -> Result<U, TaskError> + Send + Sync + 'static,
{
    let all = items.items();
    // Items are timed in groups of SAMPLE_GROUP; the estimate is the median group's time per
    // item, so that one preemption of the sampling thread does not make the chunks tiny.
    let t0 = Instant::now();
    let mut head = Vec::new();
    let mut groups: Vec<Duration> = Vec::new();
    let mut g0 = t0;
    while head.len() < all.len()
        && head.len() < SAMPLE_MAX
        && keep_sampling(head.len(), groups.len(), t0.elapsed())
    {
        let i = head.len();
        head.push(f(&all[i]).map_err(|e| item_error(i, e))?);
        if head.len() % SAMPLE_GROUP == 0 {
            let now = Instant::now();
            groups.push(now - g0);
            g0 = now;
        }
    }
    let measured = head.len();
    let rest = all.len() - measured;
    let per_item = if groups.is_empty() {
        t0.elapsed() / measured.max(1) as u32
    } else {
        groups.sort();
        groups[groups.len() / 2] / SAMPLE_GROUP as u32
    };
    let chunk = chunk_size(per_item, rest, workers);
    let chunks = rest.div_ceil(chunk);

    let slots: Arc<[Mutex<Vec<U>>]> = (0..chunks).map(|_| Mutex::new(Vec::new())).collect();
    let mut g = GraphBuilder::new();
    g.reserve(chunks + 1, chunks);
    let shared = (chunks > 0).then(|| items.share());
    let mut parts = Vec::with_capacity(chunks);
    for c in 0..chunks {
        let (items, slots, f) = (shared.clone(), slots.clone(), f.clone());
        let lo = measured + c * chunk;
        let hi = (lo + chunk).min(all.len());
        parts.push(g.task(format!("chunk{c}")).run((), move |_, ()| {
            let items = items.as_ref().map_or(&[][..], |s| (**s).as_ref());
            let mut out = Vec::with_capacity(hi - lo);
            for (i, item) in items[lo..hi].iter().enumerate() {
                out.push(f(item).map_err(|e| item_error(lo + i, e))?);
            }
            *slots[c].lock().unwrap_or_else(PoisonError::into_inner) = out;
            Ok::<_, TaskError>(())
        }));
    }
    let head = Mutex::new(Some(head));
    let total = all.len();
    let join = g.task("join").after_all(parts).run((), move |_, ()| {
        let mut out = head
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .unwrap_or_default();
        out.reserve(total.saturating_sub(out.len()));
        for s in slots.iter() {
            out.append(&mut s.lock().unwrap_or_else(PoisonError::into_inner));
        }
        Ok::<_, TaskError>(Arc::new(out))
    });
    Ok(Subgraph::new(g, join))
}

fn item_error(index: usize, e: TaskError) -> TaskError {
    TaskError::with_kind(e.kind(), format!("item {index}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_fit_the_time_budget_and_leave_work_for_every_worker() {
        // 10 ns items: 20_000 fit in 200 µs, but a million on 2 workers are cut in 16+ chunks.
        assert_eq!(chunk_size(Duration::from_nanos(10), 1_000_000, 2), 20_000);
        assert_eq!(chunk_size(Duration::from_nanos(10), 100_000, 2), 6_250);
        // Slow items run one per task.
        assert_eq!(chunk_size(Duration::from_millis(1), 1_000, 4), 1);
        assert_eq!(chunk_size(Duration::ZERO, 0, 0), 1);
    }

    #[test]
    fn measuring_goes_on_to_three_groups_unless_items_are_slow() {
        let us = Duration::from_micros;
        // Fewer than the minimum: always on.
        assert!(keep_sampling(2, 0, us(5_000)));
        // A first group preempted for 500 µs: on, for a median of three.
        assert!(keep_sampling(4, 1, us(500)));
        assert!(keep_sampling(8, 2, us(510)));
        assert!(!keep_sampling(12, 3, us(520)));
        // Fast items: the time budget, however many groups.
        assert!(keep_sampling(40, 10, us(15)));
        assert!(!keep_sampling(44, 11, us(21)));
        // Slow items (a group takes longer than the patience): one group is enough.
        assert!(!keep_sampling(4, 1, us(1_200)));
    }
}
