//! Multi-agent coordination (the seed's first integration scenario).
//!
//! `cargo run -p nerv --example multi_agent`
//!
//! Four agents write a short brief on a topic:
//!
//! ```text
//!              ┌─> analyst ──┐
//! researcher ──┤             ├─> writer
//!              └─> reviewer ─┘
//! ```
//!
//! - **Agents come from a factory provider.** The container holds a `Factory<Brief, Agent>`
//!   (an agent is made from a role and a topic) and the singletons agents share (a registry
//!   of the agents made, and the transcript below). Each task asks its context for its agent:
//!   `ctx.create::<Brief, Agent>(brief)`.
//! - **Dependencies between agents are the graph's edges**: the analyst and the reviewer both
//!   work on the researcher's facts, in parallel; the writer waits for both.
//! - **Agents talk through events.** An agent sends an [`AgentMessage`] with
//!   `ctx.emit("agent.message", Payload::new(msg))`; a router subscribed to that named signal
//!   appends it to the transcript. An agent reads its inbox (the messages addressed to it)
//!   from the transcript when it starts. A handler runs on the publishing thread before
//!   `emit` returns, and a task's dependents start only after it completed, so every message
//!   an agent's upstream agents sent is in its inbox.
//! - **State history is kept.** The transcript is a [`StateProjector`] of a persistent vector
//!   with `with_history(4)`: each message is one pure transition and one version, and any kept
//!   version can be read back (the transcript as of version 1 holds the researcher's message
//!   only).
//!
//! [`scenario`] runs it and returns the facts to check; `main` prints them and exits with 1 if
//! they are not what the scenario promises (the integration test `tests/scenarios.rs` checks
//! them too).

use nerv::{
    Container, EventBus, EventData, EventFilter, EventKind, Executor, Factory, Graph, Payload,
    RunStatus, Singleton, StateProjector, TaskContext, TaskError,
};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

/// The named signal agents talk on.
pub const MESSAGE_SIGNAL: &str = "agent.message";

/// What an agent does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Collects facts.
    Researcher,
    /// Finds the trend in the facts.
    Analyst,
    /// Checks the facts' sources.
    Reviewer,
    /// Writes the brief from the analysis and the review.
    Writer,
}

impl Role {
    /// The role's name, which is also its agent's name and its task's id.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Researcher => "researcher",
            Role::Analyst => "analyst",
            Role::Reviewer => "reviewer",
            Role::Writer => "writer",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The agent factory's arguments: which agent to make, for which topic.
#[derive(Debug, Clone)]
pub struct Brief {
    /// Its role.
    pub role: Role,
    /// The topic it works on.
    pub topic: String,
}

/// One message between agents, as sent on [`MESSAGE_SIGNAL`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentMessage {
    /// The sender's name.
    pub from: String,
    /// The recipients' names.
    pub to: Vec<String>,
    /// What it says.
    pub body: String,
}

impl fmt::Display for AgentMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} → {}: {}", self.from, self.to.join(", "), self.body)
    }
}

/// The conversation so far: a persistent vector, so that every version shares the messages
/// of the one before.
pub type Transcript = imbl::Vector<AgentMessage>;

/// A singleton of the container: the names of the agents the factory made, in order.
#[derive(Debug, Default)]
pub struct AgentRegistry {
    made: Mutex<Vec<String>>,
}

impl AgentRegistry {
    /// The agents made so far.
    pub fn made(&self) -> Vec<String> {
        self.made.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// An agent, made by the container's `Factory<Brief, Agent>`.
#[derive(Debug)]
pub struct Agent {
    /// Its role (which names it).
    pub role: Role,
    /// The topic it works on.
    pub topic: String,
    transcript: Arc<StateProjector<Transcript>>,
}

impl Agent {
    /// Its name: its role's.
    pub fn name(&self) -> &'static str {
        self.role.as_str()
    }

    /// The messages addressed to this agent, oldest first.
    pub fn inbox(&self) -> Vec<AgentMessage> {
        self.transcript
            .get_state()
            .iter()
            .filter(|m| m.to.iter().any(|t| t == self.name()))
            .cloned()
            .collect()
    }

    /// Sends a message to `to` through the event bus.
    pub fn send(&self, ctx: &TaskContext<'_>, to: &[Role], body: String) {
        let msg = AgentMessage {
            from: self.name().to_string(),
            to: to.iter().map(|r| r.as_str().to_string()).collect(),
            body,
        };
        ctx.emit(MESSAGE_SIGNAL, Payload::new(msg));
    }
}

/// A claim the researcher found, and where it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fact {
    /// The claim.
    pub claim: String,
    /// Its source, if it has one.
    pub source: Option<String>,
}

/// An agent's output: what it read in its inbox, and what it produced.
#[derive(Debug, Clone)]
pub struct Work<T> {
    /// The messages it found addressed to it when it started.
    pub inbox: Vec<AgentMessage>,
    /// Its result.
    pub result: T,
}

/// What happened, for `main` to print and the test to check.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The run's status.
    pub status: RunStatus,
    /// The agents the factory made, in the order it made them.
    pub created: Vec<String>,
    /// The tasks (agents) in the order their `TaskStarted` events were published.
    pub started: Vec<String>,
    /// The tasks in the order their `TaskCompleted` events were published.
    pub completed: Vec<String>,
    /// Each agent's inbox when it started: the senders of the messages it read, in order.
    pub inboxes: BTreeMap<String, Vec<String>>,
    /// The whole transcript, at the end.
    pub transcript: Vec<AgentMessage>,
    /// The transcript's version at the end (one per message).
    pub version: u64,
    /// The transcript as of version 1, read back from the history.
    pub at_version_1: Vec<AgentMessage>,
    /// The versions the history keeps (the current one excluded).
    pub kept_versions: Vec<u64>,
    /// The number of messages of each kept version and of the current one, by version.
    pub sizes: Vec<(u64, usize)>,
    /// The brief the writer wrote.
    pub brief: String,
}

impl Outcome {
    /// Whether the outcome is what the scenario promises; the first difference otherwise.
    pub fn verify(&self) -> Result<(), String> {
        let check = |ok: bool, what: &str| if ok { Ok(()) } else { Err(what.to_string()) };
        check(
            self.status == RunStatus::Completed,
            "the run did not complete",
        )?;
        let mut made = self.created.clone();
        made.sort();
        check(
            made == ["analyst", "researcher", "reviewer", "writer"],
            "the factory did not make the four agents once each",
        )?;
        check(
            self.completed.first().map(String::as_str) == Some("researcher")
                && self.completed.last().map(String::as_str) == Some("writer")
                && self.completed.len() == 4,
            "the agents did not finish in dependency order",
        )?;
        let inbox = |a: &str| self.inboxes.get(a).cloned().unwrap_or_default();
        check(inbox("researcher").is_empty(), "the researcher had mail")?;
        check(inbox("analyst") == ["researcher"], "the analyst's inbox")?;
        check(inbox("reviewer") == ["researcher"], "the reviewer's inbox")?;
        let mut w = inbox("writer");
        w.sort();
        check(w == ["analyst", "reviewer"], "the writer's inbox")?;
        check(self.version == 4, "not one transcript version per message")?;
        check(
            self.at_version_1.len() == 1 && self.at_version_1[0].from == "researcher",
            "version 1 is not the researcher's message alone",
        )?;
        check(self.kept_versions == [0, 1, 2, 3], "the history kept")?;
        check(
            self.brief.contains("1 claim needs a source"),
            "the brief lacks the review",
        )
    }
}

/// The topic the agents work on.
const TOPIC: &str = "solar power";

/// The container: the agent factory and the singletons agents share.
fn container(
    transcript: &StateProjector<Transcript>,
) -> Result<Container, Box<dyn std::error::Error>> {
    let registry = Singleton::new(|_| Ok(AgentRegistry::default()));
    let board = Singleton::from_value(transcript.clone());
    // A new agent per call; its dependencies come from the container.
    let agents = Factory::new(|r, brief: Brief| {
        r.resolve::<AgentRegistry>()?
            .made
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(brief.role.as_str().to_string());
        Ok(Agent {
            role: brief.role,
            topic: brief.topic,
            transcript: r.resolve::<StateProjector<Transcript>>()?,
        })
    });
    Ok(Container::builder()
        .add(&registry)
        .add(&board)
        .add(&agents)
        .build()?)
}

/// The agent for `role`, from the container's factory.
fn agent(ctx: &TaskContext<'_>, role: Role) -> Result<Agent, TaskError> {
    Ok(ctx.create::<Brief, Agent>(Brief {
        role,
        topic: TOPIC.to_string(),
    })?)
}

/// The senders of `inbox`'s messages.
fn senders(inbox: &[AgentMessage]) -> Vec<String> {
    inbox.iter().map(|m| m.from.clone()).collect()
}

/// Runs the scenario and prints what happens.
pub fn scenario() -> Outcome {
    let transcript = StateProjector::new(Transcript::new()).with_history(4);
    let bus = EventBus::new();

    // The router: every message sent on the signal becomes the transcript's next version.
    let t = transcript.clone();
    let _router = bus.named(MESSAGE_SIGNAL).connect(move |e| {
        if let EventData::Custom { payload, .. } = &e.data {
            if let Some(m) = payload.get::<AgentMessage>() {
                println!("  [message] {m}");
                t.update(|s| {
                    let mut s = s.clone();
                    s.push_back(m.clone());
                    s
                });
            }
        }
    });
    // The agents' lifecycle, as the engine publishes it.
    let lifecycle: Arc<Mutex<Vec<(EventKind, String)>>> = Arc::default();
    let l = lifecycle.clone();
    let _lifecycle = bus.subscribe(
        EventFilter::kinds([EventKind::TaskStarted, EventKind::TaskCompleted]),
        move |e| {
            let id = e.source.task_id().unwrap_or("?").to_string();
            let verb = if e.kind() == EventKind::TaskStarted {
                "starts"
            } else {
                "done"
            };
            println!("  [engine] {id} {verb}");
            l.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((e.kind(), id));
        },
    );

    let container = container(&transcript).expect("the container's providers are valid");
    let exec = Executor::builder()
        .workers(2)
        .container(container.clone())
        .events(bus.clone())
        .build();

    let mut g = Graph::builder();
    let research = g.task(Role::Researcher.as_str()).run((), |ctx, ()| {
        let me = agent(ctx, Role::Researcher)?;
        let inbox = me.inbox();
        let facts = vec![
            Fact {
                claim: "panel efficiency rose from 15% to 22% in ten years".into(),
                source: Some("NREL".into()),
            },
            Fact {
                claim: "battery storage costs fell by 80% in a decade".into(),
                source: Some("BNEF".into()),
            },
            Fact {
                claim: "solar is the cheapest electricity in history".into(),
                source: None,
            },
        ];
        me.send(
            ctx,
            &[Role::Analyst, Role::Reviewer],
            format!("I collected {} facts on {}", facts.len(), me.topic),
        );
        Ok(Work {
            inbox,
            result: facts,
        })
    });
    let analysis = g
        .task(Role::Analyst.as_str())
        .run(research, |ctx, facts: &Work<Vec<Fact>>| {
            let me = agent(ctx, Role::Analyst)?;
            let inbox = me.inbox();
            let falling = facts
                .result
                .iter()
                .filter(|f| f.claim.contains("fell") || f.claim.contains("cheapest"))
                .count();
            let finding = format!(
                "{falling} of {} facts say {} keeps getting cheaper",
                facts.result.len(),
                me.topic
            );
            me.send(ctx, &[Role::Writer], format!("key finding: {finding}"));
            Ok(Work {
                inbox,
                result: finding,
            })
        });
    let review = g
        .task(Role::Reviewer.as_str())
        .run(research, |ctx, facts: &Work<Vec<Fact>>| {
            let me = agent(ctx, Role::Reviewer)?;
            let inbox = me.inbox();
            let unsourced: Vec<String> = facts
                .result
                .iter()
                .filter(|f| f.source.is_none())
                .map(|f| f.claim.clone())
                .collect();
            let verdict = format!(
                "{} claim needs a source: {}",
                unsourced.len(),
                unsourced.join("; ")
            );
            me.send(ctx, &[Role::Writer], verdict.clone());
            Ok(Work {
                inbox,
                result: verdict,
            })
        });
    let brief = g.task(Role::Writer.as_str()).run(
        (analysis, review),
        |ctx, (analysis, review): (&Work<String>, &Work<String>)| {
            let me = agent(ctx, Role::Writer)?;
            let inbox = me.inbox();
            let text = format!(
                "Brief on {}: {}. Caveat: {}. ({} notes from colleagues.)",
                me.topic,
                analysis.result,
                review.result,
                inbox.len()
            );
            me.send(
                ctx,
                &[Role::Researcher, Role::Analyst, Role::Reviewer],
                "the draft is ready".to_string(),
            );
            Ok(Work {
                inbox,
                result: text,
            })
        },
    );
    let graph = g.build().expect("the agents' graph is valid");

    println!("running 4 agents on `{TOPIC}` (2 workers)");
    let report = exec.run(&graph);
    println!("run {}: {}", report.run_id(), report.status());

    let mut inboxes = BTreeMap::new();
    if let Some(w) = report.output(research) {
        inboxes.insert("researcher".to_string(), senders(&w.inbox));
    }
    if let Some(w) = report.output(analysis) {
        inboxes.insert("analyst".to_string(), senders(&w.inbox));
    }
    if let Some(w) = report.output(review) {
        inboxes.insert("reviewer".to_string(), senders(&w.inbox));
    }
    if let Some(w) = report.output(brief) {
        inboxes.insert("writer".to_string(), senders(&w.inbox));
    }
    for (agent, from) in &inboxes {
        println!("  {agent:<10} read messages from {from:?}");
    }

    let created = container
        .resolve::<AgentRegistry>()
        .map(|r| r.made())
        .unwrap_or_default();
    println!("agents made by the factory: {created:?}");
    let lifecycle = lifecycle.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let of = |k: EventKind| -> Vec<String> {
        lifecycle
            .iter()
            .filter(|(kind, _)| *kind == k)
            .map(|(_, id)| id.clone())
            .collect()
    };

    // Time travel: the transcript as it was after each message.
    let now = transcript.get_state();
    let kept = transcript.history();
    println!("transcript history (version: messages):");
    let mut sizes: Vec<(u64, usize)> = kept.iter().map(|s| (s.version(), s.len())).collect();
    sizes.push((now.version(), now.len()));
    for (v, n) in &sizes {
        println!("  v{v}: {n} message(s)");
    }
    let at_version_1: Vec<AgentMessage> = transcript
        .at_version(1)
        .map(|s| s.iter().cloned().collect())
        .unwrap_or_default();
    println!("as of v1:");
    for m in &at_version_1 {
        println!("  {m}");
    }
    let brief_text = report
        .output(brief)
        .map(|w| w.result.clone())
        .unwrap_or_default();
    println!("brief: {brief_text}");

    Outcome {
        status: report.status(),
        created,
        started: of(EventKind::TaskStarted),
        completed: of(EventKind::TaskCompleted),
        inboxes,
        transcript: now.iter().cloned().collect(),
        version: now.version(),
        at_version_1,
        kept_versions: kept.iter().map(|s| s.version()).collect(),
        sizes,
        brief: brief_text,
    }
}

// Unused when `tests/scenarios.rs` includes this file as a module.
#[allow(dead_code)]
fn main() {
    let outcome = scenario();
    match outcome.verify() {
        Ok(()) => println!("ok: agents made by the factory, ran in order, talked, history kept"),
        Err(e) => {
            eprintln!("unexpected outcome: {e}\n{outcome:#?}");
            std::process::exit(1);
        }
    }
}
