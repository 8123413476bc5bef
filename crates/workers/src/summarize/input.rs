//! What one summary run reads: the messages after the watermark and the terminal commands
//! after the terminal watermark, redacted, excerpted and bounded by a byte budget.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use sha2::{Digest, Sha256};
use steward_models::{
    MessagePosition, MessageRole, StoredMessage, StructuredSummary, TerminalCommand,
};

use crate::summarize::redact::redact;

/// One message as the summarizer sees it (redacted, excerpted).
#[derive(Debug, Clone)]
pub(crate) struct InputMessage {
    pub(crate) label: String,
    pub(crate) position: MessagePosition,
    pub(crate) role: MessageRole,
    pub(crate) text: String,
    /// `(tool name, redacted arguments JSON, file path if the arguments name one)`.
    pub(crate) tool_calls: Vec<(String, String, Option<String>)>,
    /// `(redacted output excerpt, is_error)`.
    pub(crate) tool_results: Vec<(String, bool)>,
}

/// One finished terminal command (redacted).
#[derive(Debug, Clone)]
pub(crate) struct InputCommand {
    pub(crate) command: String,
    pub(crate) exit_code: i32,
    pub(crate) started_at: i64,
}

/// Everything a run summarizes.
#[derive(Debug, Clone, Default)]
pub(crate) struct Input {
    pub(crate) messages: Vec<InputMessage>,
    pub(crate) commands: Vec<InputCommand>,
    /// Label (`m1`, ...) -> position, for the previous summary's citations and the new
    /// messages.
    pub(crate) labels: BTreeMap<String, MessagePosition>,
    /// Position -> label.
    pub(crate) label_of: BTreeMap<MessagePosition, String>,
    /// Rendered size so far.
    pub(crate) bytes: usize,
}

/// Cuts `s` to at most `max` bytes (keeping its head and tail, marking the cut).
pub(crate) fn excerpt(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let head_len = floor_char(s, max * 3 / 4);
    let tail_start = ceil_char(s, s.len() - max / 4);
    format!(
        "{} …[{} bytes cut]… {}",
        &s[..head_len],
        tail_start - head_len,
        &s[tail_start..]
    )
}

/// `s` cut to at most `max` bytes at a character boundary, with `…` if cut.
pub(crate) fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let end = floor_char(s, max.saturating_sub(3));
    format!("{}…", &s[..end])
}

fn floor_char(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_char(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

const PATH_KEYS: [&str; 7] = [
    "path",
    "file",
    "file_path",
    "filepath",
    "filename",
    "target_file",
    "target",
];

fn path_in(arguments: &serde_json::Value) -> Option<String> {
    let obj = arguments.as_object()?;
    PATH_KEYS
        .iter()
        .find_map(|k| obj.get(*k).and_then(|v| v.as_str()))
        .filter(|p| !p.is_empty() && p.len() <= 4096 && !p.contains('\n'))
        .map(str::to_owned)
}

impl Input {
    /// Labels the positions the previous summary cites, so the model can keep citing them.
    pub(crate) fn label_previous(&mut self, prev: &StructuredSummary) {
        let mut cited: Vec<MessagePosition> = Vec::new();
        let mut add = |s: &[MessagePosition]| cited.extend_from_slice(s);
        for i in prev
            .intent
            .iter()
            .chain(&prev.current_state)
            .chain(&prev.next_step)
        {
            add(&i.sources);
        }
        for i in prev
            .decisions
            .iter()
            .chain(&prev.errors_fixed)
            .chain(&prev.open_todos)
        {
            add(&i.sources);
        }
        for c in &prev.changes {
            add(&c.sources);
        }
        cited.sort();
        cited.dedup();
        for p in cited {
            self.label(p);
        }
    }

    fn label(&mut self, p: MessagePosition) -> String {
        if let Some(l) = self.label_of.get(&p) {
            return l.clone();
        }
        let l = format!("m{}", self.labels.len() + 1);
        self.labels.insert(l.clone(), p);
        self.label_of.insert(p, l.clone());
        l
    }

    /// Adds a message if it fits the budget (the first one always does, excerpted). Returns
    /// whether it was added.
    pub(crate) fn push_message(
        &mut self,
        m: &StoredMessage,
        excerpt_bytes: usize,
        budget: usize,
    ) -> bool {
        let msg = &m.message;
        let text = excerpt(&redact(&msg.content), excerpt_bytes);
        let tool_calls: Vec<_> = msg
            .tool_calls
            .iter()
            .map(|c| {
                let args = excerpt(&redact(&c.arguments.to_string()), excerpt_bytes / 4);
                let path = path_in(&c.arguments).map(|p| redact(&p).into_owned());
                (clip(&redact(&c.name), 128), args, path)
            })
            .collect();
        let tool_results: Vec<_> = msg
            .tool_results
            .iter()
            .map(|r| (excerpt(&redact(&r.content), excerpt_bytes / 2), r.is_error))
            .collect();
        let size = text.len()
            + tool_calls
                .iter()
                .map(|(n, a, _)| n.len() + a.len() + 16)
                .sum::<usize>()
            + tool_results
                .iter()
                .map(|(c, _)| c.len() + 24)
                .sum::<usize>()
            + 32;
        if !self.messages.is_empty() && self.bytes + size > budget {
            return false;
        }
        self.bytes += size;
        let label = self.label(m.position);
        self.messages.push(InputMessage {
            label,
            position: m.position,
            role: msg.role,
            text,
            tool_calls,
            tool_results,
        });
        true
    }

    /// Adds a finished command.
    pub(crate) fn push_command(&mut self, c: &TerminalCommand, exit_code: i32) {
        let command = clip(&redact(&c.command), 1024);
        self.bytes += command.len() + 24;
        self.commands.push(InputCommand {
            command,
            exit_code,
            started_at: c.started_at,
        });
    }

    /// The transcript as the model reads it.
    pub(crate) fn render(&self) -> String {
        let mut s = String::with_capacity(self.bytes + 256);
        for m in &self.messages {
            let role = match m.role {
                MessageRole::System => "system",
                MessageRole::User => "user",
                MessageRole::Assistant => "assistant",
                MessageRole::Tool => "tool",
            };
            let _ = writeln!(s, "[{}] {role}: {}", m.label, m.text);
            for (name, args, _) in &m.tool_calls {
                let _ = writeln!(s, "  tool call {name} {args}");
            }
            for (out, is_error) in &m.tool_results {
                let tag = if *is_error { " (error)" } else { "" };
                let _ = writeln!(s, "  tool result{tag}: {out}");
            }
        }
        if !self.commands.is_empty() {
            s.push_str("\nTerminal commands (exit code):\n");
            for c in &self.commands {
                let _ = writeln!(s, "  $ {}  -> {}", c.command, c.exit_code);
            }
        }
        s
    }

    /// A hash of the input (what was read after which watermarks), hex.
    pub(crate) fn hash(
        &self,
        prev_through: Option<MessagePosition>,
        prev_terminal: Option<i64>,
    ) -> String {
        let mut h = Sha256::new();
        h.update(b"steward.summarize.v1\0");
        h.update(prev_through.map(|p| p.to_string()).unwrap_or_default());
        h.update(b"\0");
        h.update(prev_terminal.unwrap_or(i64::MIN).to_le_bytes());
        for m in &self.messages {
            h.update(m.position.as_bytes());
            h.update(m.text.as_bytes());
            for (n, a, _) in &m.tool_calls {
                h.update(n.as_bytes());
                h.update(a.as_bytes());
            }
            for (c, e) in &m.tool_results {
                h.update(c.as_bytes());
                h.update([u8::from(*e)]);
            }
            h.update(b"\0");
        }
        for c in &self.commands {
            h.update(c.command.as_bytes());
            h.update(c.exit_code.to_le_bytes());
            h.update(c.started_at.to_le_bytes());
        }
        let digest = h.finalize();
        digest.iter().fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_keep_head_and_tail_within_bounds() {
        let s = "é".repeat(1000); // 2000 bytes
        let e = excerpt(&s, 400);
        assert!(e.len() < 460, "{}", e.len());
        assert!(e.contains("bytes cut"));
        assert_eq!(excerpt("short", 400), "short");
        let c = clip(&s, 101);
        assert!(c.len() <= 101 && c.ends_with('…'));
    }
}
