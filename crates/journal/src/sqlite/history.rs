//! The `history` table's rows: one blob per run per batch holding that batch's transitions of
//! the run, in the order recorded.
//!
//! Two formats, told apart by the first byte:
//! - **legacy** (written by schema versions 1 and 2): a MessagePack array of
//!   `(task, status, attempt, at, error)` tuples; it starts with an array marker
//!   (`0x90..=0x9f`, `0xdc` or `0xdd`). Still read, never written.
//! - **compact** (schema version 3 on): the byte [`COMPACT`] (`0xc1`, the one marker
//!   MessagePack never uses), then one entry per transition:
//!   1. the task's number in its run (`tasks.seq`), a varint;
//!   2. one byte: the status's code ([`code`], part of the format) in bits 0-6, bit 7 set if an
//!      error follows;
//!   3. the attempt, a varint;
//!   4. the time, as a zigzag varint of its difference from the previous entry's time (the
//!      first entry's is its difference from 0);
//!   5. if bit 7 was set: the error's length in bytes (a varint), then its UTF-8 bytes.
//!
//!   Varints are LEB128 (7 bits a byte, low bits first). An entry of a task that started or
//!   completed in the same second as the previous entry takes 6 to 8 bytes, against 30 and
//!   more in MessagePack with the task's name and the status's name; the blob is written in
//!   one pass, without allocating per entry.

use crate::record::TaskStatus;

/// The first byte of a compact history blob.
pub(crate) const COMPACT: u8 = 0xc1;

/// A transition as decoded from a compact blob: task number, status, attempt, time (ns), error.
pub(crate) type Entry = (u32, TaskStatus, u32, i64, Option<String>);

/// The status's code in a compact blob (part of the file format: never renumber).
pub(crate) fn code(s: TaskStatus) -> u8 {
    match s {
        TaskStatus::Pending => 0,
        TaskStatus::Running => 1,
        TaskStatus::Completed => 2,
        TaskStatus::Failed => 3,
        TaskStatus::Skipped => 4,
        TaskStatus::Cancelled => 5,
        TaskStatus::Retrying => 6,
    }
}

fn status_of(code: u8) -> Option<TaskStatus> {
    Some(match code {
        0 => TaskStatus::Pending,
        1 => TaskStatus::Running,
        2 => TaskStatus::Completed,
        3 => TaskStatus::Failed,
        4 => TaskStatus::Skipped,
        5 => TaskStatus::Cancelled,
        6 => TaskStatus::Retrying,
        _ => return None,
    })
}

/// Appends compact entries to a blob that starts with [`COMPACT`].
pub(crate) struct Encoder {
    buf: Vec<u8>,
    prev_at: i64,
}

impl Encoder {
    pub(crate) fn new() -> Encoder {
        Encoder {
            buf: vec![COMPACT],
            prev_at: 0,
        }
    }

    pub(crate) fn push(
        &mut self,
        seq: u32,
        status: TaskStatus,
        attempt: u32,
        at: i64,
        error: Option<&str>,
    ) {
        varint(&mut self.buf, u64::from(seq));
        self.buf
            .push(code(status) | if error.is_some() { 0x80 } else { 0 });
        varint(&mut self.buf, u64::from(attempt));
        let delta = at.wrapping_sub(self.prev_at);
        self.prev_at = at;
        varint(&mut self.buf, ((delta << 1) ^ (delta >> 63)) as u64);
        if let Some(e) = error {
            varint(&mut self.buf, e.len() as u64);
            self.buf.extend_from_slice(e.as_bytes());
        }
    }

    /// Whether no entry was pushed.
    pub(crate) fn is_empty(&self) -> bool {
        self.buf.len() == 1
    }

    pub(crate) fn finish(self) -> Vec<u8> {
        self.buf
    }
}

fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Decodes a compact blob (its first byte included); `Err` says what is wrong.
pub(crate) fn decode(blob: &[u8]) -> Result<Vec<Entry>, String> {
    let mut r = Reader { blob, at: 1 };
    if blob.first() != Some(&COMPACT) {
        return Err("not a compact history blob".into());
    }
    let mut out = Vec::new();
    let mut prev_at = 0i64;
    while r.at < blob.len() {
        let seq = u32::try_from(r.varint()?).map_err(|_| "task number out of range")?;
        let byte = r.byte()?;
        let status = status_of(byte & 0x7f).ok_or_else(|| format!("status code {byte}"))?;
        let attempt = u32::try_from(r.varint()?).map_err(|_| "attempt out of range")?;
        let z = r.varint()?;
        let delta = ((z >> 1) as i64) ^ -((z & 1) as i64);
        prev_at = prev_at.wrapping_add(delta);
        let error = if byte & 0x80 != 0 {
            let len = usize::try_from(r.varint()?).map_err(|_| "error length out of range")?;
            let bytes = r.take(len)?;
            Some(
                String::from_utf8(bytes.to_vec())
                    .map_err(|_| "an error message is not UTF-8".to_string())?,
            )
        } else {
            None
        };
        out.push((seq, status, attempt, prev_at, error));
    }
    Ok(out)
}

struct Reader<'a> {
    blob: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, String> {
        let b = *self.blob.get(self.at).ok_or("truncated")?;
        self.at += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).ok_or("truncated")?;
        let s = self.blob.get(self.at..end).ok_or("truncated")?;
        self.at = end;
        Ok(s)
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint too long".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_entries_round_trip() {
        let entries: Vec<Entry> = vec![
            (0, TaskStatus::Running, 1, 1_700_000_000_000_000_000, None),
            (0, TaskStatus::Completed, 1, 1_700_000_000_000_000_100, None),
            (
                300,
                TaskStatus::Retrying,
                2,
                1_699_999_999_000_000_000,
                Some("é boom".into()),
            ),
            (
                u32::MAX,
                TaskStatus::Failed,
                u32::MAX,
                i64::MIN,
                Some(String::new()),
            ),
            (7, TaskStatus::Skipped, 0, i64::MAX, None),
            (8, TaskStatus::Cancelled, 3, -5, None),
            (9, TaskStatus::Pending, 0, 0, None),
        ];
        let mut enc = Encoder::new();
        assert!(enc.is_empty());
        for (seq, status, attempt, at, error) in &entries {
            enc.push(*seq, *status, *attempt, *at, error.as_deref());
        }
        let blob = enc.finish();
        assert_eq!(blob[0], COMPACT);
        assert_eq!(decode(&blob).unwrap(), entries);
        assert!(decode(&blob[..blob.len() - 1]).is_err(), "truncated");
        assert!(decode(&[0x91]).is_err(), "MessagePack");
    }

    #[test]
    fn every_status_has_a_code() {
        for s in TaskStatus::ALL {
            assert_eq!(status_of(code(*s)), Some(*s));
        }
    }
}
