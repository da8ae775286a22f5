//! Tracing spans of runs, tasks and attempts. In its own test binary: it installs a global
//! tracing subscriber (worker threads do not see a thread-local one).

use nerv::{Executor, Graph, RetryPolicy, TaskError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

#[derive(Debug, Clone)]
struct SpanRec {
    name: &'static str,
    fields: HashMap<String, String>,
    parent: Option<u64>,
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<HashMap<u64, SpanRec>>>);

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_string(),
            format!("{value:?}").trim_matches('"').to_string(),
        );
    }
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Recorder {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = HashMap::new();
        attrs.record(&mut Fields(&mut fields));
        let parent = ctx
            .span(id)
            .and_then(|s| s.parent())
            .map(|p| p.id().into_u64());
        self.0.lock().unwrap().insert(
            id.into_u64(),
            SpanRec {
                name: attrs.metadata().name(),
                fields,
                parent,
            },
        );
    }
}

#[test]
fn runs_tasks_and_attempts_are_spans() {
    let rec = Recorder::default();
    let subscriber = tracing_subscriber::registry().with(rec.clone());
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let tries = Arc::new(AtomicUsize::new(0));
    let t = tries.clone();
    let mut g = Graph::builder();
    let a = g.task("a").run((), |_, ()| Ok::<_, TaskError>(1));
    g.task("flaky")
        .retry(RetryPolicy::attempts(2).backoff(Duration::from_millis(1)))
        .run(a, move |_, x| {
            if t.fetch_add(1, SeqCst) == 0 {
                Err(TaskError::msg("once"))
            } else {
                Ok(*x)
            }
        });
    g.task("io")
        .run_async((), |_, ()| async { Ok::<_, TaskError>(2) });
    let report = Executor::builder()
        .workers(2)
        .build()
        .run(&g.build().unwrap());
    assert_eq!(report.counts().completed, 3);

    let spans = rec.0.lock().unwrap().clone();
    let run_id = report.run_id().to_string();
    let (run_span, _) = spans
        .iter()
        .find(|(_, s)| s.name == "run" && s.fields.get("run") == Some(&run_id))
        .expect("a run span");
    let tasks: Vec<&SpanRec> = spans
        .values()
        .filter(|s| s.name == "task" && s.parent == Some(*run_span))
        .collect();
    let mut seen: Vec<(String, String)> = tasks
        .iter()
        .map(|s| (s.fields["task"].clone(), s.fields["attempt"].clone()))
        .collect();
    seen.sort();
    let want: Vec<(String, String)> = [("a", "1"), ("flaky", "1"), ("flaky", "2"), ("io", "1")]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(seen, want);
}
