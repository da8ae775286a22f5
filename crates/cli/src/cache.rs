//! Cache keys of cached tasks (`cache = true` in a workflow file).
//!
//! Invariants:
//! 1. A key is the MessagePack bytes (as nerv's own memo keys) of, in this order: the key
//!    format's version ([`KEY_VERSION`]), the task's id, its command after `{item}`
//!    substitution (shell line or program and arguments), its `env` entries (sorted; the
//!    environment nerv itself inherits is not part of the key), its working directory
//!    (canonical), and for each of its `inputs` the path relative to that directory and the
//!    SHA-256 of the file's contents (or nothing, for a file that does not exist).
//! 2. So equal keys mean: same task, same command, same declared environment, same folder,
//!    same input contents. Anything else the command reads (files not listed, the time, the
//!    network) is not part of the key: list it in `inputs`, or do not cache the task.
//! 3. Keys are stable across processes, machines and builds (no `std::hash::Hasher`, whose
//!    output may change between Rust releases).
//! 4. The key is computed before the command runs: a command that rewrites its own inputs
//!    stores the entry under the inputs it started from.
//! 5. The recipe itself lives in nerv-postgres ([`nerv_postgres::CommandKey`]): a workflow
//!    file's task run with `nerv run --db` is keyed by the worker that claims it (where its
//!    inputs are, possibly produced by upstream tasks on that machine or a shared file system),
//!    and the worker must compute the very bytes a local run computes. nerv-postgres cannot
//!    depend on this crate, and a hook passed by `nerv worker` would leave plain
//!    `nerv-pg-worker`s (and library workers) unable to run cached tasks correctly; so the
//!    recipe moved there, described by data ([`command_key`]) that travels with the task.

use crate::workflow::{Command, TaskSpec};
use nerv_postgres::{CommandKey, KeyCommand};

pub use nerv_postgres::{file_digest, short_hex, KEY_VERSION};

/// What `spec`'s key is made of: its id, command, `env`, working directory and `inputs`
/// (relative to the working directory when they are inside it, as written in the file).
pub fn command_key(spec: &TaskSpec) -> CommandKey {
    CommandKey {
        task: spec.id.clone(),
        command: match &spec.command {
            Command::Shell(s) => KeyCommand::Shell(s.clone()),
            Command::Exec(argv) => KeyCommand::Exec(argv.clone()),
        },
        env: spec.env.clone(),
        cwd: spec.cwd.clone(),
        inputs: spec
            .inputs
            .iter()
            .map(|p| p.strip_prefix(&spec.cwd).unwrap_or(p).to_path_buf())
            .collect(),
    }
}

/// The cache key of `spec` (see the module's invariants). Fails, naming the file, when an
/// input exists but cannot be read.
pub fn key(spec: &TaskSpec) -> Result<Vec<u8>, String> {
    command_key(spec).compute()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::{Format, Workflow};
    use std::path::Path;

    /// The bytes the recipe produced before it moved to nerv-postgres: entries stored by
    /// earlier runs must stay hits.
    #[test]
    fn keys_are_unchanged_by_the_move() {
        #[derive(serde::Serialize)]
        struct Key<'a> {
            version: u32,
            task: &'a str,
            command: (&'static str, Vec<&'a str>),
            env: Vec<(&'a str, &'a str)>,
            cwd: String,
            inputs: Vec<(String, Option<Vec<u8>>)>,
        }
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("in.txt"), "x").unwrap();
        let s = spec(
            d.path(),
            "[tasks.t]\ncache = true\ninputs = [\"in.txt\", \"gone\"]\nrun = \"cat in.txt\"\nenv = { B = \"2\", A = \"1\" }\n",
        );
        let old = Key {
            version: 1,
            task: "t",
            command: ("shell", vec!["cat in.txt"]),
            env: vec![("A", "1"), ("B", "2")],
            cwd: s.cwd.canonicalize().unwrap().display().to_string(),
            inputs: vec![
                (
                    "in.txt".into(),
                    file_digest(&d.path().join("in.txt")).unwrap(),
                ),
                ("gone".into(), None),
            ],
        };
        assert_eq!(key(&s).unwrap(), rmp_serde::to_vec(&old).unwrap());
    }

    fn spec(dir: &Path, toml: &str) -> TaskSpec {
        let path = dir.join("w.toml");
        Workflow::parse(&path, toml, Format::Toml).unwrap().tasks[0].clone()
    }

    #[test]
    fn key_follows_command_env_and_input_contents() {
        let d = tempfile::tempdir().unwrap();
        let base = "[tasks.t]\ncache = true\ninputs = [\"in.txt\"]\nrun = \"cat in.txt\"\n";
        let s = spec(d.path(), base);
        assert!(s.cache.is_some());
        let missing = key(&s).unwrap();
        std::fs::write(d.path().join("in.txt"), "a").unwrap();
        let a = key(&s).unwrap();
        assert_ne!(missing, a);
        assert_eq!(a, key(&s).unwrap(), "stable");
        std::fs::write(d.path().join("in.txt"), "b").unwrap();
        let b = key(&s).unwrap();
        assert_ne!(a, b);
        let other_cmd = spec(d.path(), &base.replace("cat in.txt", "wc in.txt"));
        assert_ne!(key(&other_cmd).unwrap(), b);
        let with_env = spec(d.path(), &format!("{base}env = {{ X = \"1\" }}\n"));
        assert_ne!(key(&with_env).unwrap(), b);
        assert_eq!(short_hex(&b).len(), 12);
    }

    #[test]
    fn cache_keys_parse_and_inputs_need_cache() {
        let d = tempfile::tempdir().unwrap();
        let s = spec(
            d.path(),
            "[tasks.t]\ncache = { ttl = \"1d\" }\nrun = \"true\"\n",
        );
        assert_eq!(
            s.cache.unwrap().ttl,
            Some(std::time::Duration::from_secs(86_400))
        );
        let s = spec(d.path(), "[tasks.t]\ncache = false\nrun = \"true\"\n");
        assert!(s.cache.is_none());
        let path = d.path().join("w.toml");
        let e = Workflow::parse(
            &path,
            "[tasks.t]\ninputs = [\"x\"]\nrun = \"true\"\n",
            Format::Toml,
        )
        .unwrap_err();
        assert!(e.to_string().contains("not cached"), "{e}");
        let e = Workflow::parse(
            &path,
            "[tasks.t]\ncache = { tll = \"1d\" }\nrun = \"true\"\n",
            Format::Toml,
        )
        .unwrap_err();
        assert!(e.to_string().contains("tll"), "{e}");
    }
}
