//! [`Journal`]: the writer front end. Callers submit records without touching the disk; one
//! thread commits them in batches (group commit).
//!
//! Invariants:
//! - Every submitted record gets a sequence number, 1, 2, 3, ... in the order it entered the
//!   channel (numbering and sending happen under one mutex), and the writer receives them in
//!   that order.
//! - `committed()` is a durable prefix: every record numbered `<= committed()` is committed
//!   (to the store's durability level); none after it is known to be. It only grows.
//! - The channel is unbounded: `submit` never blocks on the disk (it takes one uncontended
//!   mutex and allocates one channel slot). Submitters that outrun the disk grow the queue;
//!   `pending()` shows by how much. A bounded channel would stall the engine's workers on the
//!   disk, which is what group commit is there to avoid.
//! - A failed batch is not dropped: the writer keeps it and retries it (with whatever arrived
//!   since) after a backoff of 10 ms doubling to 1 s, so a transient failure (a full disk that
//!   gets space back) loses nothing. Its error is kept until a `flush` returns it: no error of
//!   the writer is silently dropped.
//! - Dropping a journal (or `close`) flushes and joins the thread; at close a batch that still
//!   fails after three tries is lost, and `close` returns the error.
//!
//! The writer thread, repeatedly:
//! 1. wait for a record (or, while a failed batch waits, for a record or the backoff);
//! 2. drain everything queued, up to `max_batch` records, and (unless a `flush` waits) keep
//!    taking records until none has arrived for `linger` (default 5 ms) or it has gathered
//!    the batch for `max_linger` (default 500 ms). While it lingers the writer sleeps on
//!    a condition variable that `flush` signals, looking at the queue every millisecond:
//!    submitters never have to wake it (a system call per record), and a flush never waits
//!    out the linger;
//! 3. append the batch in ONE transaction ([`JournalStore::append`]);
//! 4. on success: advance `committed` to the batch's last number, wake the flushers, call
//!    `on_commit`, then the store's upkeep ([`JournalStore::after_commit`]: a checkpoint);
//!    on failure: keep the error and the batch, wake the flushers waiting on it;
//! 5. stop when the channel is closed and nothing is left.

use crate::error::{JournalError, Result};
use crate::record::{Record, RunId, RunStart};
use crate::sqlite::SqliteStore;
use crate::store::JournalStore;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// Called on the writer thread after each commit with the new `committed()`.
pub type OnCommit = Box<dyn Fn(u64) + Send + 'static>;

/// What the writer and the flushers share.
#[derive(Default)]
struct State {
    /// The durable prefix.
    committed: u64,
    /// The last number the writer tried to commit (successfully or not).
    attempted: u64,
    /// The error kept for the next `flush`.
    error: Option<JournalError>,
    /// The writer thread has exited.
    stopped: bool,
    /// Threads waiting in `wait_for` (the writer does not linger while there are any).
    waiters: usize,
}

struct Shared {
    state: Mutex<State>,
    /// Flushers wait on it for commits.
    cond: Condvar,
    /// The lingering writer waits on it for flushers.
    wake: Condvar,
}

/// How often a lingering writer looks at the queue.
const POLL: Duration = Duration::from_millis(1);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The sending side: the last number handed out and the channel (closed: `None`).
struct Submit {
    last: u64,
    tx: Option<Sender<(u64, Record)>>,
}

/// Builds a [`Journal`].
pub struct JournalBuilder {
    store: Arc<dyn JournalStore>,
    max_batch: usize,
    linger: Duration,
    max_linger: Duration,
    on_commit: Option<OnCommit>,
}

impl fmt::Debug for JournalBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JournalBuilder")
            .field("store", &self.store)
            .field("max_batch", &self.max_batch)
            .finish_non_exhaustive()
    }
}

impl JournalBuilder {
    /// At most `n` records per transaction (default 1 048 576; at least 1). Large, so that a
    /// burst of short tasks (a wide fan-out) is one transaction in which each task costs one
    /// row write; the records are in memory (queued) either way, and `max_linger` bounds how
    /// long a batch is gathered.
    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = n.max(1);
        self
    }

    /// How long the writer waits for more records once the queue is empty before it commits
    /// a batch, unless someone is flushing (default 5 ms: longer than a worker's time slice
    /// on a loaded machine, so that a burst is not cut in two; zero: commit at once). Records of
    /// one task that arrive close together (its start and its end; a run's declaration and
    /// its first tasks) then fold into one row write, and fewer commits mean fewer syncs.
    pub fn linger(mut self, d: Duration) -> Self {
        self.linger = d;
        self
    }

    /// How long the writer may gather one batch in all (default 500 ms): however steadily
    /// records keep arriving, it stops taking more after this long, so that a steady stream
    /// is still committed at least this often.
    pub fn max_linger(mut self, d: Duration) -> Self {
        self.max_linger = d;
        self
    }

    /// Calls `f(committed)` on the writer thread after every commit: everything numbered up to
    /// `committed` is durable. Keep it short, and never call the journal's `flush` or
    /// `wait_for` from it (the writer would wait for itself).
    pub fn on_commit(mut self, f: impl Fn(u64) + Send + 'static) -> Self {
        self.on_commit = Some(Box::new(f));
        self
    }

    /// Starts the writer thread.
    pub fn start(self) -> Result<Journal> {
        let path = self.store.path().to_path_buf();
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            cond: Condvar::new(),
            wake: Condvar::new(),
        });
        let writer = Writer {
            store: Arc::clone(&self.store),
            shared: Arc::clone(&shared),
            rx,
            max_batch: self.max_batch,
            linger: self.linger,
            max_linger: self.max_linger,
            on_commit: self.on_commit,
        };
        let thread = std::thread::Builder::new()
            .name("nerv-journal".into())
            .spawn(move || writer.run())
            .map_err(|e| JournalError::Io {
                path: path.clone(),
                detail: format!("cannot start the journal's writer thread: {e}"),
            })?;
        Ok(Journal {
            store: self.store,
            path,
            shared,
            submit: Mutex::new(Submit {
                last: 0,
                tx: Some(tx),
            }),
            thread: Some(thread),
        })
    }
}

/// A journal: a store and the thread that group-commits to it. See the module's invariants.
pub struct Journal {
    store: Arc<dyn JournalStore>,
    path: PathBuf,
    shared: Arc<Shared>,
    submit: Mutex<Submit>,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for Journal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Journal")
            .field("store", &self.store)
            .field("submitted", &self.submitted())
            .field("committed", &self.committed())
            .finish_non_exhaustive()
    }
}

impl Journal {
    /// Opens the SQLite journal `nerv.db` in `dir` (creating or upgrading it) with default
    /// options, and starts its writer.
    pub fn open_in(dir: impl AsRef<Path>) -> Result<Journal> {
        Journal::builder(Arc::new(SqliteStore::open_in(dir)?)).start()
    }

    /// A journal over `store`, to configure.
    pub fn builder(store: Arc<dyn JournalStore>) -> JournalBuilder {
        JournalBuilder {
            store,
            max_batch: 1 << 20,
            linger: Duration::from_millis(5),
            max_linger: Duration::from_millis(500),
            on_commit: None,
        }
    }

    /// A journal over `store` with default settings.
    pub fn new(store: Arc<dyn JournalStore>) -> Result<Journal> {
        Journal::builder(store).start()
    }

    /// The store, for reads (`runs`, `tasks`, ...) and for [`SqliteStore::memo`].
    pub fn store(&self) -> &Arc<dyn JournalStore> {
        &self.store
    }

    /// Records a new run, synchronously (it returns the run's id); see
    /// [`JournalStore::begin_run`].
    pub fn begin_run(&self, start: &RunStart) -> Result<RunId> {
        self.store.begin_run(start)
    }

    /// Marks a run found dead as interrupted, synchronously; see
    /// [`JournalStore::mark_interrupted`].
    pub fn mark_interrupted(&self, run: RunId, at: SystemTime) -> Result<bool> {
        self.store.mark_interrupted(run, at)
    }

    fn lock_submit(&self) -> MutexGuard<'_, Submit> {
        self.submit.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `record` for the next group commit and returns its sequence number. Never
    /// waits for the disk. If the writer has stopped, the record is dropped and the next
    /// `flush` says so.
    pub fn submit(&self, record: impl Into<Record>) -> u64 {
        let record = record.into();
        let mut s = self.lock_submit();
        s.last += 1;
        let seq = s.last;
        let sent = s.tx.as_ref().map(|tx| tx.send((seq, record)).is_ok());
        drop(s);
        if sent != Some(true) {
            let mut st = self.shared.lock();
            if st.error.is_none() {
                st.error = Some(self.stopped_error());
            }
        }
        seq
    }

    /// The number of the last record submitted.
    pub fn submitted(&self) -> u64 {
        self.lock_submit().last
    }

    /// The durable prefix: every record numbered up to it is committed.
    pub fn committed(&self) -> u64 {
        self.shared.lock().committed
    }

    /// Whether record `seq` is committed.
    pub fn is_durable(&self, seq: u64) -> bool {
        self.committed() >= seq
    }

    /// Records submitted but not yet committed.
    pub fn pending(&self) -> u64 {
        let submitted = self.submitted();
        submitted.saturating_sub(self.committed())
    }

    /// Blocks until everything submitted before this call is committed, and returns `Ok`;
    /// or returns the writer's kept error (taking it) as soon as the batch holding the last of
    /// those records has failed, or if any commit failed since the last `flush` (even one
    /// retried successfully since: [`committed`](Self::committed) tells how far durability
    /// reached).
    pub fn flush(&self) -> Result<()> {
        let target = self.submitted();
        self.wait_for(target)
    }

    /// Like [`flush`](Self::flush), for the records numbered up to `seq` only.
    pub fn wait_for(&self, seq: u64) -> Result<()> {
        let mut st = self.shared.lock();
        st.waiters += 1;
        // A writer lingering for more records commits now instead.
        self.shared.wake.notify_one();
        while st.committed < seq && !(st.error.is_some() && st.attempted >= seq) && !st.stopped {
            st = self.shared.cond.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st.waiters -= 1;
        if let Some(e) = st.error.take() {
            return Err(e);
        }
        if st.committed < seq {
            return Err(self.stopped_error());
        }
        Ok(())
    }

    fn stopped_error(&self) -> JournalError {
        JournalError::WriterStopped {
            path: self.path.clone(),
            detail: "it exited early (a panic in the store?); records submitted since are lost"
                .into(),
        }
    }

    /// Flushes, stops the writer and returns the last error, if any (dropping a journal does
    /// the same and drops the error).
    pub fn close(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        let target = {
            let mut s = self.lock_submit();
            s.tx = None;
            s.last
        };
        let joined = self.thread.take().map(|t| t.join());
        let mut st = self.shared.lock();
        if let Some(e) = st.error.take() {
            return Err(e);
        }
        if matches!(joined, Some(Err(_))) || st.committed < target {
            return Err(self.stopped_error());
        }
        Ok(())
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.shutdown();
        }
    }
}

/// The writer thread's side.
struct Writer {
    store: Arc<dyn JournalStore>,
    shared: Arc<Shared>,
    rx: Receiver<(u64, Record)>,
    max_batch: usize,
    linger: Duration,
    max_linger: Duration,
    on_commit: Option<OnCommit>,
}

/// Marks the writer stopped however it exits (a panic in the store included).
struct StopGuard(Arc<Shared>);

impl Drop for StopGuard {
    fn drop(&mut self) {
        self.0.lock().stopped = true;
        self.0.cond.notify_all();
    }
}

impl Writer {
    fn run(self) {
        let _guard = StopGuard(Arc::clone(&self.shared));
        let mut batch: Vec<Record> = Vec::new();
        let mut last = 0u64;
        let mut closed = false;
        let mut backoff = Duration::from_millis(10);
        let mut failures_after_close = 0;
        loop {
            // 1. wait for work.
            if batch.is_empty() {
                if closed {
                    return;
                }
                match self.rx.recv() {
                    Ok((seq, r)) => {
                        batch.push(r);
                        last = seq;
                    }
                    Err(_) => return,
                }
            } else if !closed {
                match self.rx.recv_timeout(backoff) {
                    Ok((seq, r)) => {
                        batch.push(r);
                        last = seq;
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => closed = true,
                }
            }
            // 2. drain; then, unless someone is flushing, linger until no record has arrived
            // for `linger`, or it has gathered this batch for `max_linger`. The writer
            // lingers asleep on `wake` (a flusher wakes it), looking at the queue every
            // `POLL`: blocked on the channel instead, it would be woken by every record, and
            // every submitter would pay that wake-up (a system call) while it lingers.
            let opened = Instant::now();
            let mut quiet_since = opened;
            loop {
                let before = batch.len();
                while batch.len() < self.max_batch {
                    match self.rx.try_recv() {
                        Ok((seq, r)) => {
                            batch.push(r);
                            last = seq;
                        }
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => {
                            closed = true;
                            break;
                        }
                    }
                }
                if closed || batch.len() >= self.max_batch || batch.is_empty() {
                    break;
                }
                let now = Instant::now();
                if batch.len() > before {
                    quiet_since = now;
                }
                let quiet_left = self.linger.saturating_sub(now - quiet_since);
                let age_left = self.max_linger.saturating_sub(now - opened);
                let sleep = quiet_left.min(age_left).min(POLL);
                let st = self.shared.lock();
                if sleep.is_zero() || st.waiters > 0 {
                    break;
                }
                drop(self.shared.wake.wait_timeout(st, sleep));
            }
            if batch.is_empty() {
                continue; // woken by a flusher with nothing to commit
            }
            // 3. commit.
            let result = self.store.append(&batch);
            // 4. publish.
            let mut st = self.shared.lock();
            st.attempted = st.attempted.max(last);
            match result {
                Ok(()) => {
                    st.committed = last;
                    drop(st);
                    self.shared.cond.notify_all();
                    batch.clear();
                    backoff = Duration::from_millis(10);
                    if let Some(f) = &self.on_commit {
                        f(last);
                    }
                    self.store.after_commit();
                }
                Err(e) => {
                    st.error = Some(e);
                    drop(st);
                    self.shared.cond.notify_all();
                    if closed {
                        failures_after_close += 1;
                        if failures_after_close >= 3 {
                            return; // the batch is lost; close() returns the error
                        }
                        std::thread::sleep(backoff);
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}
