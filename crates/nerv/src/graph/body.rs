//! The type-erased work of a task: one virtual call per attempt, monomorphized inside.

use super::{Inputs, TaskId};
use crate::context::TaskContext;
use crate::dynamic::{ChildGraph, Subgraph};
use crate::exec::runner::Runner;
use crate::task::{ErrorKind, TaskError};
use nerv_pool::{Inline, SlotKey};
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;

/// What starting an attempt produced.
pub(crate) enum Started {
    /// Sync work finished and its output is stored.
    Done,
    /// Async work: the future stores the output when it completes.
    Future(Pin<Box<dyn Future<Output = Result<(), TaskError>> + Send>>),
    /// A subgraph to run; the task finishes with it.
    Graph(Box<ChildGraph>),
}

/// A task's work.
pub(crate) trait Body: Send + Sync + 'static {
    /// Starts one attempt: reads the inputs and runs (sync) or creates (async, dynamic) the
    /// work.
    fn start(&self, cx: &TaskContext<'_>) -> Result<Started, TaskError>;

    /// Runs the task's fallback, if it has one (after its work failed for good).
    fn fallback(&self, _cx: &TaskContext<'_>) -> Option<Result<Started, TaskError>> {
        None
    }
}

/// The bodies of one type, stored densely: a graph keeps one chunk per body type (tasks made
/// by the same closure share a type), so a task costs its body's own size, with no allocation
/// and no pointer of its own. One virtual call per attempt, as with `Box<dyn Body>`.
pub(crate) trait BodyChunk: Send + Sync + 'static {
    /// Starts an attempt of the `i`-th body of the chunk.
    fn start(&self, i: u32, cx: &TaskContext<'_>) -> Result<Started, TaskError>;
    /// Runs the fallback of the `i`-th body, if it has one.
    fn fallback(&self, i: u32, cx: &TaskContext<'_>) -> Option<Result<Started, TaskError>>;
    /// For adding bodies of the chunk's concrete type.
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any;
    /// Bytes held.
    fn heap_bytes(&self) -> usize;
    /// Gives back unused capacity.
    fn shrink(&mut self);
    /// Runs the inline loop of a lean run of a plain graph, whose bodies are exactly this
    /// chunk's: the loop and every task's path through the runner are compiled for the body
    /// type, so that the body's code runs inline (see `Runner::run_plain_inline`).
    fn run_inline(&self, runner: &Runner, lp: Inline<'_, '_, Runner>);
    /// [`run_inline`](Self::run_inline) for a direct run (`Runner::direct`): each task between
    /// its events. A function of its own, so that the lean loop is compiled as before (with
    /// both loops in one function, the lean one took 20 more instructions a task).
    fn run_direct_inline(&self, runner: &Runner, lp: Inline<'_, '_, Runner>);
}

/// Where an attempt finds its task's body: through the graph's chunks (one call through a
/// pointer per attempt), or in one chunk whose body type is known (the body inline).
pub(crate) trait Bodies {
    /// Starts an attempt of body `i` of chunk `chunk`.
    fn start(&self, chunk: u32, i: u32, cx: &TaskContext<'_>) -> Result<Started, TaskError>;
}

impl Bodies for [Box<dyn BodyChunk>] {
    #[inline(always)]
    fn start(&self, chunk: u32, i: u32, cx: &TaskContext<'_>) -> Result<Started, TaskError> {
        self[chunk as usize].start(i, cx)
    }
}

impl<B: Body> Bodies for Chunk<B> {
    #[inline(always)]
    fn start(&self, _chunk: u32, i: u32, cx: &TaskContext<'_>) -> Result<Started, TaskError> {
        self.0[i as usize].start(cx)
    }
}

/// A chunk of bodies of type `B`.
pub(crate) struct Chunk<B>(pub(crate) Vec<B>);

impl<B: Body> BodyChunk for Chunk<B> {
    #[inline]
    fn start(&self, i: u32, cx: &TaskContext<'_>) -> Result<Started, TaskError> {
        self.0[i as usize].start(cx)
    }
    fn fallback(&self, i: u32, cx: &TaskContext<'_>) -> Option<Result<Started, TaskError>> {
        self.0[i as usize].fallback(cx)
    }
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
    fn heap_bytes(&self) -> usize {
        self.0.capacity() * std::mem::size_of::<B>()
    }
    fn shrink(&mut self) {
        self.0.shrink_to_fit();
    }
    fn run_inline(&self, runner: &Runner, lp: Inline<'_, '_, Runner>) {
        runner.run_plain_inline(self, lp)
    }
    fn run_direct_inline(&self, runner: &Runner, lp: Inline<'_, '_, Runner>) {
        runner.run_direct_inline(self, lp)
    }
}

pub(crate) fn missing(cx: &TaskContext<'_>, t: TaskId) -> TaskError {
    TaskError::with_kind(
        ErrorKind::MissingInput,
        format!(
            "input `{}` of task `{}` has no value (its task did not complete)",
            cx.graph_id_of(t),
            cx.task_id()
        ),
    )
}

pub(crate) struct SyncBody<I, T, F> {
    pub(crate) inputs: I,
    pub(crate) out: SlotKey<T>,
    pub(crate) f: F,
}

impl<I, T, F> Body for SyncBody<I, T, F>
where
    I: Inputs,
    T: Send + Sync + 'static,
    F: for<'a> Fn(&TaskContext<'_>, I::Refs<'a>) -> Result<T, TaskError> + Send + Sync + 'static,
{
    #[inline]
    fn start(&self, cx: &TaskContext<'_>) -> Result<Started, TaskError> {
        let arena = cx.arena();
        let refs = self
            .inputs
            .fetch(&cx.outputs())
            .map_err(|t| missing(cx, t))?;
        let v = (self.f)(cx, refs)?;
        if let Some(limit) = cx.deadline_passed() {
            return Err(TaskError::timeout(limit));
        }
        super::inputs::set_output(arena, self.out, v)
            .map_err(|_| TaskError::msg("output already set"))?;
        Ok(Started::Done)
    }
}

/// Sync work with a fallback that computes the output another way when the work failed for
/// good (after its retries).
pub(crate) struct FallbackBody<I, T, F, G> {
    pub(crate) inputs: I,
    pub(crate) out: SlotKey<T>,
    pub(crate) f: F,
    pub(crate) g: G,
}

impl<I, T, F, G> FallbackBody<I, T, F, G>
where
    I: Inputs,
    T: Send + Sync + 'static,
{
    #[inline]
    fn call(
        &self,
        cx: &TaskContext<'_>,
        h: impl for<'a> FnOnce(&TaskContext<'_>, I::Refs<'a>) -> Result<T, TaskError>,
    ) -> Result<Started, TaskError> {
        let arena = cx.arena();
        let refs = self
            .inputs
            .fetch(&cx.outputs())
            .map_err(|t| missing(cx, t))?;
        let v = h(cx, refs)?;
        super::inputs::set_output(arena, self.out, v)
            .map_err(|_| TaskError::msg("output already set"))?;
        Ok(Started::Done)
    }
}

impl<I, T, F, G> Body for FallbackBody<I, T, F, G>
where
    I: Inputs,
    T: Send + Sync + 'static,
    F: for<'a> Fn(&TaskContext<'_>, I::Refs<'a>) -> Result<T, TaskError> + Send + Sync + 'static,
    G: for<'a> Fn(&TaskContext<'_>, I::Refs<'a>) -> Result<T, TaskError> + Send + Sync + 'static,
{
    fn start(&self, cx: &TaskContext<'_>) -> Result<Started, TaskError> {
        let r = self.call(cx, |cx, refs| (self.f)(cx, refs))?;
        if let Some(limit) = cx.deadline_passed() {
            return Err(TaskError::timeout(limit));
        }
        Ok(r)
    }

    fn fallback(&self, cx: &TaskContext<'_>) -> Option<Result<Started, TaskError>> {
        Some(self.call(cx, |cx, refs| (self.g)(cx, refs)))
    }
}

/// Sync work whose output is memoized (see `crate::memo`).
pub(crate) struct MemoBody<I, T, F> {
    pub(crate) inputs: I,
    pub(crate) out: SlotKey<T>,
    pub(crate) f: F,
    pub(crate) memo: crate::memo::Memo,
}

impl<I, T, F> Body for MemoBody<I, T, F>
where
    I: Inputs,
    for<'a> I::Refs<'a>: serde::Serialize,
    T: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
    F: for<'a> Fn(&TaskContext<'_>, I::Refs<'a>) -> Result<T, TaskError> + Send + Sync + 'static,
{
    fn start(&self, cx: &TaskContext<'_>) -> Result<Started, TaskError> {
        use crate::memo;
        let arena = cx.arena();
        let refs = self
            .inputs
            .fetch(&cx.outputs())
            .map_err(|t| missing(cx, t))?;
        let id = cx.task_id();
        let key = memo::key(&id, &self.memo.version, &refs);
        let store = cx.memo_store();
        let now = std::time::SystemTime::now();
        if let Ok(key) = &key {
            if let Some(v) = store.get(key, now).and_then(|b| memo::decode::<T>(&b)) {
                cx.memo_looked_up(true);
                super::inputs::set_output(arena, self.out, v)
                    .map_err(|_| TaskError::msg("output already set"))?;
                return Ok(Started::Done);
            }
            cx.memo_looked_up(false);
        }
        let v = (self.f)(cx, refs)?;
        if let Some(limit) = cx.deadline_passed() {
            return Err(TaskError::timeout(limit));
        }
        let stored = key.and_then(|key| {
            let bytes = memo::encode(&v)?;
            store.put(&key, &id, bytes, now, self.memo.ttl.map(|t| now + t));
            Ok(())
        });
        if let Err(e) = stored {
            tracing::warn!(task = %id, error = %e, "not memoized: the inputs or the output do not serialize");
        }
        super::inputs::set_output(arena, self.out, v)
            .map_err(|_| TaskError::msg("output already set"))?;
        Ok(Started::Done)
    }
}

pub(crate) struct AsyncBody<I, T, F, Fut> {
    pub(crate) inputs: I,
    pub(crate) out: SlotKey<T>,
    pub(crate) f: F,
    pub(crate) _fut: PhantomData<fn() -> Fut>,
}

impl<I, T, F, Fut> Body for AsyncBody<I, T, F, Fut>
where
    I: Inputs,
    T: Send + Sync + 'static,
    F: for<'a> Fn(&TaskContext<'_>, I::Refs<'a>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, TaskError>> + Send + 'static,
{
    fn start(&self, cx: &TaskContext<'_>) -> Result<Started, TaskError> {
        let refs = self
            .inputs
            .fetch(&cx.outputs())
            .map_err(|t| missing(cx, t))?;
        let fut = (self.f)(cx, refs);
        let run = cx.run_handle();
        let out = self.out;
        Ok(Started::Future(Box::pin(async move {
            let v = fut.await?;
            super::inputs::set_output(&run.runner().arena, out, v)
                .map_err(|_| TaskError::msg("output already set"))
        })))
    }
}

/// Async work with a sync fallback (see [`FallbackBody`]).
pub(crate) struct AsyncFallbackBody<I, T, F, Fut, G> {
    pub(crate) inner: AsyncBody<I, T, F, Fut>,
    pub(crate) g: G,
}

impl<I, T, F, Fut, G> Body for AsyncFallbackBody<I, T, F, Fut, G>
where
    I: Inputs,
    T: Send + Sync + 'static,
    F: for<'a> Fn(&TaskContext<'_>, I::Refs<'a>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, TaskError>> + Send + 'static,
    G: for<'a> Fn(&TaskContext<'_>, I::Refs<'a>) -> Result<T, TaskError> + Send + Sync + 'static,
{
    fn start(&self, cx: &TaskContext<'_>) -> Result<Started, TaskError> {
        self.inner.start(cx)
    }

    fn fallback(&self, cx: &TaskContext<'_>) -> Option<Result<Started, TaskError>> {
        let run = || {
            let arena = cx.arena();
            let refs = self
                .inner
                .inputs
                .fetch(&cx.outputs())
                .map_err(|t| missing(cx, t))?;
            let v = (self.g)(cx, refs)?;
            super::inputs::set_output(arena, self.inner.out, v)
                .map_err(|_| TaskError::msg("output already set"))?;
            Ok(Started::Done)
        };
        Some(run())
    }
}

pub(crate) struct DynamicBody<I, T, F> {
    pub(crate) inputs: I,
    pub(crate) out: SlotKey<T>,
    pub(crate) f: F,
}

impl<I, T, F> Body for DynamicBody<I, T, F>
where
    I: Inputs,
    T: Clone + Send + Sync + 'static,
    F: for<'a> Fn(&TaskContext<'_>, I::Refs<'a>) -> Result<Subgraph<T>, TaskError>
        + Send
        + Sync
        + 'static,
{
    fn start(&self, cx: &TaskContext<'_>) -> Result<Started, TaskError> {
        let refs = self
            .inputs
            .fetch(&cx.outputs())
            .map_err(|t| missing(cx, t))?;
        let sub = (self.f)(cx, refs)?;
        Ok(Started::Graph(Box::new(sub.into_child(self.out))))
    }
}
