//! Errors in workflow files, each naming the file, the line and column, the task at fault
//! and, where one helps, a hint; and the [`Locator`] that finds where a task or key is
//! written, for the errors found after parsing (unknown `needs`, cycles, resources).

use super::Format;
use std::fmt;
use std::path::{Path, PathBuf};

/// A position in a file, 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Line, from 1.
    pub line: usize,
    /// Column (in characters), from 1.
    pub column: usize,
}

/// Why a workflow file is invalid (or could not be read). Boxed: one pointer in a `Result`.
#[derive(Debug, Clone)]
pub struct WorkflowError(Box<Detail>);

#[derive(Debug, Clone)]
struct Detail {
    file: PathBuf,
    location: Option<Location>,
    /// How many characters from `location` are at fault (for the underline; at least 1).
    width: usize,
    task: Option<String>,
    message: String,
    hint: Option<String>,
    source_line: Option<String>,
}

impl WorkflowError {
    /// An error about the file as a whole.
    pub fn new(file: &Path, message: impl Into<String>) -> Self {
        WorkflowError(Box::new(Detail {
            file: file.to_path_buf(),
            location: None,
            width: 1,
            task: None,
            message: message.into(),
            hint: None,
            source_line: None,
        }))
    }

    /// The file.
    pub fn file(&self) -> &Path {
        &self.0.file
    }

    /// Where in the file, when known.
    pub fn location(&self) -> Option<Location> {
        self.0.location
    }

    /// The task at fault, when there is one (its name in the file, or an expanded id).
    pub fn task(&self) -> Option<&str> {
        self.0.task.as_deref()
    }

    /// What is wrong.
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// How to fix it, when there is a hint.
    pub fn hint(&self) -> Option<&str> {
        self.0.hint.as_deref()
    }

    /// Points the error at byte `offset` of `src` (spanning `len` bytes).
    pub(crate) fn at(mut self, src: &str, offset: usize, len: usize) -> Self {
        let offset = offset.min(src.len());
        let line_start = src[..offset].rfind('\n').map_or(0, |i| i + 1);
        let line_end = src[offset..].find('\n').map_or(src.len(), |i| offset + i);
        let line = src[..offset].matches('\n').count() + 1;
        let column = src[line_start..offset].chars().count() + 1;
        let end = (offset + len.max(1)).min(line_end);
        let d = &mut self.0;
        d.width = src.get(offset..end).map_or(1, |s| s.chars().count().max(1));
        d.location = Some(Location { line, column });
        d.source_line = Some(src[line_start..line_end].trim_end_matches('\r').to_owned());
        self
    }

    /// Points the error at a 1-based line and column of `src`.
    pub(crate) fn at_line_col(self, src: &str, line: usize, column: usize) -> Self {
        let mut offset = 0;
        for (i, l) in src.split_inclusive('\n').enumerate() {
            if i + 1 == line {
                let col_bytes: usize = l
                    .chars()
                    .take(column.saturating_sub(1))
                    .map(char::len_utf8)
                    .sum();
                return self.at(src, offset + col_bytes, 1);
            }
            offset += l.len();
        }
        let mut e = self;
        e.0.location = Some(Location { line, column });
        e
    }

    /// Names the task at fault.
    pub(crate) fn with_task(mut self, task: impl Into<String>) -> Self {
        self.0.task = Some(task.into());
        self
    }

    /// Adds a hint.
    pub(crate) fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.0.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for WorkflowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "error: {}", self.0.message)?;
        match self.0.location {
            Some(l) => writeln!(f, "  --> {}:{}:{}", self.0.file.display(), l.line, l.column)?,
            None => writeln!(f, "  --> {}", self.0.file.display())?,
        }
        if let (Some(l), Some(src)) = (self.0.location, &self.0.source_line) {
            let n = l.line.to_string();
            let pad = " ".repeat(n.len());
            writeln!(f, "{pad} |")?;
            writeln!(f, "{n} | {src}")?;
            let lead: String = src
                .chars()
                .take(l.column - 1)
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            writeln!(f, "{pad} | {lead}{}", "^".repeat(self.0.width))?;
        }
        if let Some(t) = &self.0.task {
            writeln!(f, "  = task: {t}")?;
        }
        if let Some(h) = &self.0.hint {
            writeln!(f, "  = hint: {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for WorkflowError {}

/// Finds where tasks and keys are written in a workflow's text. The parsers' spans cover
/// syntax and type errors; errors found later (a `needs` naming no task, a cycle) are placed
/// by looking for the task's header and the key under it. A heuristic over the text, never
/// wrong about what the error is, at worst less precise about where.
pub(crate) struct Locator<'a> {
    src: &'a str,
    format: Format,
}

/// A byte range of the source: a task's or section's lines.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Region {
    pub start: usize,
    pub end: usize,
}

impl<'a> Locator<'a> {
    pub(crate) fn new(src: &'a str, format: Format) -> Self {
        Locator { src, format }
    }

    /// Lines with their byte offsets.
    fn lines(&self) -> impl Iterator<Item = (usize, &'a str)> + 'a {
        let mut off = 0;
        self.src.split_inclusive('\n').map(move |l| {
            let start = off;
            off += l.len();
            (start, l)
        })
    }

    /// The task whose `[tasks.NAME]` table contains byte `offset` (TOML only: YAML errors
    /// already name their path).
    pub(crate) fn task_at(&self, offset: usize) -> Option<String> {
        if self.format != Format::Toml {
            return None;
        }
        let mut current = None;
        for (start, l) in self.lines() {
            if start > offset {
                break;
            }
            let t = l.trim();
            if t.starts_with('[') {
                current = t
                    .trim_start_matches('[')
                    .split(']')
                    .next()
                    .and_then(|h| h.trim().strip_prefix("tasks."))
                    .map(|n| n.trim().trim_matches(|c| c == '"' || c == '\'').to_owned());
            }
        }
        current
    }

    /// Where key `name` is written a second time at the indentation of its first occurrence
    /// (YAML duplicate keys).
    pub(crate) fn second_key(&self, name: &str) -> Option<usize> {
        let mut indent = None;
        for (start, l) in self.lines() {
            let t = l.trim_start();
            let i = l.len() - t.len();
            let is_key = t
                .strip_prefix(name)
                .is_some_and(|r| r.trim_start().starts_with(':'));
            if is_key {
                match indent {
                    None => indent = Some(i),
                    Some(first) if first == i => return Some(start + i),
                    _ => {}
                }
            }
        }
        None
    }

    /// The lines of task `name` (its header included).
    pub(crate) fn task(&self, name: &str) -> Option<Region> {
        match self.format {
            Format::Toml => self.toml_table(&["tasks", name]),
            Format::Yaml => self.yaml_key(&["tasks", name]),
        }
    }

    /// The lines of the `[defaults]` / `defaults:` section.
    pub(crate) fn section(&self, name: &str) -> Option<Region> {
        match self.format {
            Format::Toml => self.toml_table(&[name]),
            Format::Yaml => self.yaml_key(&[name]),
        }
    }

    fn toml_table(&self, path: &[&str]) -> Option<Region> {
        let quoted = |s: &str| format!("\"{s}\"");
        let headers: Vec<String> = match path {
            [a] => vec![format!("[{a}]")],
            [a, b] => vec![
                format!("[{a}.{b}]"),
                format!("[{a}.{}]", quoted(b)),
                format!("[{a}.'{b}']"),
            ],
            _ => return None,
        };
        let mut lines = self.lines().peekable();
        while let Some((start, l)) = lines.next() {
            let t: String = l.chars().filter(|c| !c.is_whitespace()).collect();
            let t = t.split('#').next().unwrap_or("");
            if headers.iter().any(|h| h.replace(' ', "") == t) {
                let mut end = start + l.len();
                while let Some(&(s, next)) = lines.peek() {
                    if next.trim_start().starts_with('[') && !next.trim_start().starts_with("[[") {
                        break;
                    }
                    end = s + next.len();
                    lines.next();
                }
                return Some(Region { start, end });
            }
        }
        // Inline: `[tasks]` then `name = { ... }`, or dotted `tasks.name = { ... }`.
        if let [a, b] = path {
            let parent = self.toml_table(&[a]);
            let scope = parent.unwrap_or(Region {
                start: 0,
                end: self.src.len(),
            });
            for (start, l) in self.lines() {
                if start < scope.start || start >= scope.end {
                    continue;
                }
                let t = l.trim_start();
                for key in [b.to_string(), quoted(b), format!("{a}.{b}")] {
                    if let Some(rest) = t.strip_prefix(&key) {
                        if rest.trim_start().starts_with('=') {
                            return Some(Region {
                                start,
                                end: start + l.len(),
                            });
                        }
                    }
                }
            }
        }
        None
    }

    fn yaml_key(&self, path: &[&str]) -> Option<Region> {
        let mut scope = Region {
            start: 0,
            end: self.src.len(),
        };
        let mut min_indent: Option<usize> = None;
        for key in path {
            let mut found = None;
            let mut lines = self
                .lines()
                .filter(|(s, _)| *s >= scope.start && *s < scope.end)
                .peekable();
            while let Some((start, l)) = lines.next() {
                let indent = l.len() - l.trim_start().len();
                if min_indent.is_some_and(|m| indent <= m) {
                    continue;
                }
                let t = l.trim_start();
                let is_key = [key.to_string(), format!("\"{key}\""), format!("'{key}'")]
                    .iter()
                    .any(|k| {
                        t.strip_prefix(k.as_str())
                            .is_some_and(|r| r.trim_start().starts_with(':'))
                    });
                if is_key {
                    let mut end = start + l.len();
                    while let Some(&(s, next)) = lines.peek() {
                        let ni = next.len() - next.trim_start().len();
                        if !next.trim().is_empty()
                            && !next.trim_start().starts_with('#')
                            && ni <= indent
                        {
                            break;
                        }
                        end = s + next.len();
                        lines.next();
                    }
                    found = Some((Region { start, end }, indent));
                    break;
                }
            }
            let (r, indent) = found?;
            scope = r;
            min_indent = Some(indent);
        }
        Some(scope)
    }

    /// Where `key` is set inside `region` (the offset of the key), if it is.
    pub(crate) fn key(&self, region: Region, key: &str) -> Option<usize> {
        let sep = match self.format {
            Format::Toml => '=',
            Format::Yaml => ':',
        };
        let text = &self.src[region.start..region.end];
        let mut off = region.start;
        for l in text.split_inclusive('\n') {
            let t = l.trim_start();
            let lead = l.len() - t.len();
            if let Some(rest) = t.strip_prefix(key) {
                if rest.trim_start().starts_with(sep) {
                    return Some(off + lead);
                }
            }
            // Inline tables: `name = { run = "x", needs = ["y"] }`.
            for pat in [
                format!("{{ {key} "),
                format!(", {key} "),
                format!("{{{key}"),
                format!(",{key}"),
            ] {
                if let Some(i) = l.find(&pat) {
                    let k = l[i..].find(key).unwrap_or(0);
                    return Some(off + i + k);
                }
            }
            off += l.len();
        }
        None
    }

    /// Where `value` is written (quoted or bare) inside `region`, at or after the offset `from`.
    pub(crate) fn value(&self, region: Region, from: usize, value: &str) -> Option<(usize, usize)> {
        let from = from.clamp(region.start, region.end);
        let text = &self.src[from..region.end];
        for q in ["\"", "'", ""] {
            let pat = format!("{q}{value}{q}");
            let mut base = 0;
            while let Some(i) = text[base..].find(&pat) {
                let at = base + i;
                let before = text[..at].chars().next_back();
                let after = text[at + pat.len()..].chars().next();
                let word = |c: Option<char>| {
                    c.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '-')
                };
                if !q.is_empty() || (!word(before) && !word(after)) {
                    return Some((from + at, pat.len()));
                }
                base = at + pat.len();
            }
        }
        None
    }

    /// An error at task `name`'s `key` (or its header, or nowhere if neither is found).
    pub(crate) fn error_at_key(
        &self,
        file: &Path,
        name: &str,
        key: &str,
        message: impl Into<String>,
    ) -> WorkflowError {
        let e = WorkflowError::new(file, message).with_task(name);
        match self.task(name) {
            Some(r) => match self.key(r, key) {
                Some(o) => e.at(self.src, o, key.len()),
                None => e.at(self.src, r.start + leading_ws(&self.src[r.start..]), 1),
            },
            None => e,
        }
    }

    /// An error at `value` under task `name`'s `key`.
    pub(crate) fn error_at_value(
        &self,
        file: &Path,
        name: &str,
        key: &str,
        value: &str,
        message: impl Into<String>,
    ) -> WorkflowError {
        if let Some(r) = self.task(name) {
            let from = self.key(r, key).unwrap_or(r.start);
            if let Some((o, len)) = self.value(r, from, value) {
                return WorkflowError::new(file, message)
                    .with_task(name)
                    .at(self.src, o, len);
            }
        }
        self.error_at_key(file, name, key, message)
    }

    /// An error at the key `key` of section `section` (e.g. `resources`).
    pub(crate) fn error_in_section(
        &self,
        file: &Path,
        section: &str,
        key: &str,
        message: impl Into<String>,
    ) -> WorkflowError {
        let e = WorkflowError::new(file, message);
        match self.section(section) {
            Some(r) => match self.key(r, key) {
                Some(o) => e.at(self.src, o, key.len()),
                None => e.at(self.src, r.start, section.len()),
            },
            None => e,
        }
    }
}

fn leading_ws(s: &str) -> usize {
    s.len() - s.trim_start().len()
}

/// The name among `candidates` closest to `name` (edit distance at most a third of its
/// length, at least 1), for "did you mean" hints.
pub(crate) fn closest<'c>(
    name: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<&'c str> {
    let limit = (name.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (levenshtein(name, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Optimal string alignment distance: edits and adjacent transpositions cost 1.
fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, v) in d[0].iter_mut().enumerate() {
        *v = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closest_name() {
        assert_eq!(closest("fecth", ["fetch", "parse"]), Some("fetch"));
        assert_eq!(closest("zzz", ["fetch", "parse"]), None);
    }

    #[test]
    fn locates_toml_task_and_key() {
        let src = "name = \"x\"\n[tasks.a]\nrun = \"true\"\n\n[tasks.b]\nrun = \"true\"\nneeds = [\"a\", \"zz\"]\n";
        let l = Locator::new(src, Format::Toml);
        let r = l.task("b").unwrap();
        let e = l.error_at_value(Path::new("f.toml"), "b", "needs", "zz", "bad");
        assert_eq!(
            e.location(),
            Some(Location {
                line: 7,
                column: 15
            })
        );
        assert!(l.key(r, "needs").is_some());
        assert!(l.task("c").is_none());
    }

    #[test]
    fn locates_yaml_task_and_key() {
        let src = "tasks:\n  a:\n    run: \"true\"\n  b:\n    run: \"true\"\n    needs: [a, zz]\n";
        let l = Locator::new(src, Format::Yaml);
        let e = l.error_at_value(Path::new("f.yaml"), "b", "needs", "zz", "bad");
        assert_eq!(
            e.location(),
            Some(Location {
                line: 6,
                column: 16
            })
        );
        let e = l.error_at_key(Path::new("f.yaml"), "a", "run", "bad");
        assert_eq!(e.location(), Some(Location { line: 3, column: 5 }));
    }
}
