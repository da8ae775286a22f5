//! Knowledge pipeline (the seed's third integration scenario): fan-out over documents found
//! at run time, fan-in to an index, progress reported through events.
//!
//! `cargo run -p nerv --example knowledge_pipeline`
//!
//! ```text
//! discover ──> index (dynamic) ──> summary
//!                │
//!                ├─ index/<doc 1> ─┐
//!                ├─ index/<doc 2> ─┼─> index/merge
//!                └─ index/<doc n> ─┘
//! ```
//!
//! - **Discovery at run time.** `discover` scans a library (a singleton of the container,
//!   standing for a directory) and keeps the documents of a known content type; how many
//!   there are is known only when it has run.
//! - **Fan-out.** `index` is a dynamic task (`TaskBuilder::run_dynamic`): it returns a
//!   [`Subgraph`] with one task per document, run in the same run on the same workers. Each
//!   document task gets a processor for its content type from the container's
//!   `Factory<ContentType, Processor>` (`ctx.create`), and extracts the document's terms.
//! - **Fan-in.** The subgraph's `merge` task takes every document's terms and builds the
//!   inverted index (term → documents); its value becomes the `index` task's output, which
//!   `summary` reads.
//! - **Progress through events.** Each document task reports a `TaskProgress` event per line
//!   (`ctx.progress(line, Some(lines), Some(path))`), `merge` one per document merged; a
//!   subscriber prints and counts them, and counts the documents indexed from their
//!   `TaskCompleted` events.
//!
//! [`scenario`] runs it and returns the facts to check; `main` prints them and exits with 1 if
//! they are not what the scenario promises (the integration test `tests/scenarios.rs` checks
//! them too).

use nerv::{
    Container, EventBus, EventData, EventFilter, EventKind, Executor, Factory, Graph, Handle,
    RunStatus, Singleton, Subgraph, TaskError, TaskStatus,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

/// The inverted index: each term, and the documents it occurs in.
pub type Index = BTreeMap<String, BTreeSet<String>>;

/// The content types the pipeline knows how to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentType {
    /// `.md`: headings and list markers are dropped.
    Markdown,
    /// `.txt`: read as it is.
    Text,
    /// `.csv`: commas separate words.
    Csv,
}

impl ContentType {
    /// The type of a file, from its extension (`None`: not a document the pipeline reads).
    pub fn of(path: &str) -> Option<Self> {
        match path.rsplit_once('.')?.1 {
            "md" => Some(ContentType::Markdown),
            "txt" => Some(ContentType::Text),
            "csv" => Some(ContentType::Csv),
            _ => None,
        }
    }
}

/// Words too common to index: a singleton every processor shares.
#[derive(Debug)]
pub struct Stopwords(BTreeSet<&'static str>);

impl Default for Stopwords {
    fn default() -> Self {
        Stopwords(
            ["a", "and", "for", "in", "is", "of", "the"]
                .into_iter()
                .collect(),
        )
    }
}

/// A document processor, made by the container's factory for one content type.
#[derive(Debug)]
pub struct Processor {
    /// The type it reads.
    pub kind: ContentType,
    stopwords: Arc<Stopwords>,
}

impl Processor {
    /// The terms of one line.
    pub fn terms(&self, line: &str) -> Vec<String> {
        let line = match self.kind {
            ContentType::Markdown => line.trim_start_matches(['#', '-', '*', ' ']).to_string(),
            ContentType::Csv => line.replace(',', " "),
            ContentType::Text => line.to_string(),
        };
        line.split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .filter(|w| !self.stopwords.0.contains(w.as_str()))
            .collect()
    }
}

/// The files the pipeline scans (a singleton of the container, standing for a directory).
#[derive(Debug)]
pub struct Library {
    /// Each file's path and contents.
    pub files: Vec<(String, String)>,
}

impl Default for Library {
    fn default() -> Self {
        let files = [
            (
                "notes/rust.md",
                "# Rust\nRust makes parallel code safe.\n- ownership prevents data races",
            ),
            (
                "notes/python.txt",
                "Python is popular for data work.\nThe GIL limits parallel threads.",
            ),
            ("img/logo.png", "\u{89}PNG"),
            (
                "data/langs.csv",
                "name,paradigm\nrust,systems\npython,scripting",
            ),
            (
                "notes/graphs.md",
                "# Task graphs\nA graph of tasks runs in parallel.\nDependencies order the tasks.",
            ),
        ];
        Library {
            files: files
                .into_iter()
                .map(|(p, t)| (p.to_string(), t.to_string()))
                .collect(),
        }
    }
}

/// A document found by `discover`.
#[derive(Debug, Clone)]
pub struct Document {
    /// Its path.
    pub path: String,
    /// Its content type.
    pub kind: ContentType,
    /// Its text.
    pub text: String,
}

impl Document {
    /// The id of the task that processes it (a path without its separators).
    pub fn task_id(&self) -> String {
        self.path.replace(['/', '.'], "-")
    }
}

/// What `discover` found.
#[derive(Debug, Clone)]
pub struct Discovery {
    /// The documents to index.
    pub documents: Vec<Document>,
    /// The files passed over (unknown content type).
    pub skipped: Vec<String>,
}

/// One document's terms.
#[derive(Debug, Clone)]
pub struct DocTerms {
    /// The document.
    pub path: String,
    /// Its distinct terms.
    pub terms: BTreeSet<String>,
}

/// One `TaskProgress` event, as the subscriber saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgressSeen {
    /// The task that reported it.
    pub task: String,
    /// Units done.
    pub done: u64,
    /// Units in all.
    pub total: Option<u64>,
}

/// What happened, for `main` to print and the test to check.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The run's status.
    pub status: RunStatus,
    /// The documents `discover` found, in library order.
    pub discovered: Vec<String>,
    /// The files it passed over.
    pub skipped: Vec<String>,
    /// The subgraph's tasks that completed (`index/…`), sorted.
    pub subgraph_completed: Vec<String>,
    /// The index.
    pub index: Index,
    /// Every `TaskProgress` event, in the order received.
    pub progress: Vec<ProgressSeen>,
    /// The lines of all documents (each reports one progress event per line).
    pub lines: u64,
    /// The documents indexed, counted from `TaskCompleted` events of the document tasks.
    pub documents_indexed: usize,
    /// The summary task's output.
    pub summary: String,
}

impl Outcome {
    /// Whether the outcome is what the scenario promises; the first difference otherwise.
    pub fn verify(&self) -> Result<(), String> {
        let check = |ok: bool, what: &str| if ok { Ok(()) } else { Err(what.to_string()) };
        check(
            self.status == RunStatus::Completed,
            "the run did not complete",
        )?;
        check(
            self.discovered
                == [
                    "notes/rust.md",
                    "notes/python.txt",
                    "data/langs.csv",
                    "notes/graphs.md",
                ],
            "the documents discovered",
        )?;
        check(self.skipped == ["img/logo.png"], "the files skipped")?;
        check(
            self.subgraph_completed
                == [
                    "index/data-langs-csv",
                    "index/merge",
                    "index/notes-graphs-md",
                    "index/notes-python-txt",
                    "index/notes-rust-md",
                ],
            "the subgraph's tasks",
        )?;
        let docs = |t: &str| -> Vec<&str> {
            self.index
                .get(t)
                .map(|d| d.iter().map(String::as_str).collect())
                .unwrap_or_default()
        };
        check(
            docs("parallel") == ["notes/graphs.md", "notes/python.txt", "notes/rust.md"],
            "the documents of `parallel`",
        )?;
        check(
            docs("rust") == ["data/langs.csv", "notes/rust.md"],
            "the documents of `rust`",
        )?;
        check(docs("the").is_empty(), "a stopword was indexed")?;
        check(self.lines == 11, "the documents' lines")?;
        check(
            self.progress.len() as u64 == self.lines + 4,
            "not one progress event per line and per document merged",
        )?;
        check(self.documents_indexed == 4, "the documents indexed")?;
        check(
            self.summary.starts_with("4 documents,"),
            "the summary does not count 4 documents",
        )
    }
}

/// The container: the library, the stop words, and the processor factory.
fn container() -> Result<Container, Box<dyn std::error::Error>> {
    let library = Singleton::new(|_| Ok(Library::default()));
    let stopwords = Singleton::new(|_| Ok(Stopwords::default()));
    let processors = Factory::new(|r, kind: ContentType| {
        Ok(Processor {
            kind,
            stopwords: r.resolve::<Stopwords>()?,
        })
    });
    Ok(Container::builder()
        .add(&library)
        .add(&stopwords)
        .add(&processors)
        .build()?)
}

/// The subgraph of `index`: one task per document, then `merge`.
fn fan_out(found: &Discovery) -> Subgraph<Index> {
    let mut sub = Graph::builder();
    let parts: Vec<Handle<DocTerms>> = found
        .documents
        .iter()
        .map(|doc| {
            let doc = doc.clone();
            sub.task(doc.task_id()).run((), move |ctx, ()| {
                let processor = ctx.create::<ContentType, Processor>(doc.kind)?;
                let lines: Vec<&str> = doc.text.lines().collect();
                let mut terms = BTreeSet::new();
                for (i, line) in lines.iter().enumerate() {
                    terms.extend(processor.terms(line));
                    ctx.progress(i as u64 + 1, Some(lines.len() as u64), Some(&doc.path));
                }
                Ok::<_, TaskError>(DocTerms {
                    path: doc.path.clone(),
                    terms,
                })
            })
        })
        .collect();
    let merged = sub.task("merge").run(parts, |ctx, parts| {
        let mut index = Index::new();
        for (i, part) in parts.iter().enumerate() {
            for t in &part.terms {
                index
                    .entry(t.clone())
                    .or_default()
                    .insert(part.path.clone());
            }
            ctx.progress(i as u64 + 1, Some(parts.len() as u64), Some(&part.path));
        }
        Ok(index)
    });
    Subgraph::new(sub, merged)
}

/// Runs the scenario and prints what happens.
pub fn scenario() -> Outcome {
    let bus = EventBus::new();
    let progress: Arc<Mutex<Vec<ProgressSeen>>> = Arc::default();
    let indexed: Arc<Mutex<Vec<String>>> = Arc::default();
    let (p, d) = (progress.clone(), indexed.clone());
    let _observer = bus.subscribe(
        EventFilter::kinds([EventKind::TaskProgress, EventKind::TaskCompleted]),
        move |e| {
            let task = e.source.task_id().unwrap_or("?").to_string();
            match &e.data {
                EventData::TaskProgress(pr) => {
                    println!(
                        "  [progress] {task:<24} {}/{} {}",
                        pr.done,
                        pr.total.map_or("?".to_string(), |t| t.to_string()),
                        pr.message.as_deref().unwrap_or("")
                    );
                    p.lock()
                        .unwrap_or_else(|x| x.into_inner())
                        .push(ProgressSeen {
                            task,
                            done: pr.done,
                            total: pr.total,
                        });
                }
                EventData::TaskCompleted { .. }
                    if task.starts_with("index/") && task != "index/merge" =>
                {
                    let mut d = d.lock().unwrap_or_else(|x| x.into_inner());
                    d.push(task);
                    println!("  [indexed]  {} document(s) so far", d.len());
                }
                _ => {}
            }
        },
    );

    let exec = Executor::builder()
        .workers(2)
        .container(container().expect("the container's providers are valid"))
        .events(bus.clone())
        .build();

    let mut g = Graph::builder();
    let found = g.task("discover").run((), |ctx, ()| {
        let library = ctx.resolve::<Library>()?;
        let (mut documents, mut skipped) = (Vec::new(), Vec::new());
        for (path, text) in &library.files {
            match ContentType::of(path) {
                Some(kind) => documents.push(Document {
                    path: path.clone(),
                    kind,
                    text: text.clone(),
                }),
                None => skipped.push(path.clone()),
            }
        }
        Ok::<_, TaskError>(Discovery { documents, skipped })
    });
    let index = g
        .task("index")
        .run_dynamic(found, |_, found| Ok(fan_out(found)));
    let summary = g.task("summary").run((found, index), |_, (found, index)| {
        let widest = index
            .iter()
            .max_by_key(|(t, d)| (d.len(), std::cmp::Reverse(t.as_str())))
            .map(|(t, d)| format!("`{t}` in {}", d.len()))
            .unwrap_or_default();
        Ok(format!(
            "{} documents, {} terms, most shared term: {widest}",
            found.documents.len(),
            index.len()
        ))
    });
    let graph = g.build().expect("the pipeline's graph is valid");

    println!("indexing the library (2 workers)");
    let report = exec.run(&graph);
    println!("run {}: {}", report.run_id(), report.status());

    let found = report.output(found).cloned();
    let index = report.output(index).cloned().unwrap_or_default();
    let summary = report.output(summary).cloned().unwrap_or_default();
    let mut subgraph_completed: Vec<String> = report
        .results()
        .into_iter()
        .filter(|r| r.id.starts_with("index/") && r.status == TaskStatus::Completed)
        .map(|r| r.id)
        .collect();
    subgraph_completed.sort();
    let (discovered, skipped, lines) = match &found {
        Some(f) => (
            f.documents.iter().map(|d| d.path.clone()).collect(),
            f.skipped.clone(),
            f.documents
                .iter()
                .map(|d| d.text.lines().count() as u64)
                .sum(),
        ),
        None => (Vec::new(), Vec::new(), 0),
    };
    println!("discovered {discovered:?}, skipped {skipped:?}");
    println!("subgraph tasks completed: {subgraph_completed:?}");
    for term in ["parallel", "rust", "python", "data"] {
        let docs: Vec<&str> = index
            .get(term)
            .map(|d| d.iter().map(String::as_str).collect())
            .unwrap_or_default();
        println!("  {term:<9} → {docs:?}");
    }
    println!("summary: {summary}");

    let progress = progress.lock().unwrap_or_else(|x| x.into_inner()).clone();
    let documents_indexed = indexed.lock().unwrap_or_else(|x| x.into_inner()).len();
    println!("{} progress events", progress.len());
    Outcome {
        status: report.status(),
        discovered,
        skipped,
        subgraph_completed,
        index,
        progress,
        lines,
        documents_indexed,
        summary,
    }
}

// Unused when `tests/scenarios.rs` includes this file as a module.
#[allow(dead_code)]
fn main() {
    let outcome = scenario();
    match outcome.verify() {
        Ok(()) => println!("ok: documents found at run time, indexed in parallel, merged"),
        Err(e) => {
            eprintln!("unexpected outcome: {e}\n{outcome:#?}");
            std::process::exit(1);
        }
    }
}
