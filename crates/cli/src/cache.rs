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

use crate::workflow::{Command, TaskSpec};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;

/// The version of the key format: bumped when what goes into a key changes, so that old
/// entries are never hits.
pub const KEY_VERSION: u32 = 1;

#[derive(Serialize)]
struct Key<'a> {
    version: u32,
    task: &'a str,
    command: (&'static str, Vec<&'a str>),
    env: Vec<(&'a str, &'a str)>,
    cwd: String,
    inputs: Vec<(String, Option<Vec<u8>>)>,
}

/// The SHA-256 of a file's contents (`None` if it does not exist).
pub fn file_digest(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(Some(h.finalize().to_vec()))
}

/// The cache key of `spec` (see the module's invariants). Fails, naming the file, when an
/// input exists but cannot be read.
pub fn key(spec: &TaskSpec) -> Result<Vec<u8>, String> {
    let command = match &spec.command {
        Command::Shell(s) => ("shell", vec![s.as_str()]),
        Command::Exec(argv) => ("exec", argv.iter().map(String::as_str).collect()),
    };
    let mut inputs = Vec::with_capacity(spec.inputs.len());
    for p in &spec.inputs {
        let digest = file_digest(p)
            .map_err(|e| format!("cannot read input {} of `{}`: {e}", p.display(), spec.id))?;
        // As written (relative to the working directory), so that the key does not depend on
        // how the workflow file was named on the command line.
        let shown = p.strip_prefix(&spec.cwd).unwrap_or(p);
        inputs.push((shown.display().to_string(), digest));
    }
    let k = Key {
        version: KEY_VERSION,
        task: &spec.id,
        command,
        env: spec
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect(),
        cwd: spec
            .cwd
            .canonicalize()
            .unwrap_or_else(|_| spec.cwd.clone())
            .display()
            .to_string(),
        inputs,
    };
    rmp_serde::to_vec(&k).map_err(|e| format!("cannot build the cache key of `{}`: {e}", spec.id))
}

/// A key as short hex, for listings (the first 6 bytes of its SHA-256).
pub fn short_hex(key: &[u8]) -> String {
    Sha256::digest(key)[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::{Format, Workflow};

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
