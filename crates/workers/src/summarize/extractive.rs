//! The deterministic summary used without an LLM: the user's requests, the files tool calls
//! changed, failed terminal commands (and those fixed later), decisions and the next step that
//! messages state explicitly (a line starting with "Decision:", "Decided:", "We decided",
//! "Next step:"), and the last state, merged into the previous summary. Same input, same
//! output.

use steward_models::{
    FileChangeItem, MessagePosition, MessageRole, StructuredSummary, SummaryItem, MAX_ITEM_SOURCES,
    MAX_SUMMARY_ITEMS,
};

use crate::summarize::input::{clip, Input};

/// Longest text of one extractive item, in bytes.
const ITEM_BYTES: usize = 300;
/// User requests kept as open todos.
const REQUESTS_KEPT: usize = 5;
/// Prefix of a todo made from a user request.
const REQUESTED: &str = "Requested: ";

/// Words in a tool's name that mean it changes a file.
const EDIT_WORDS: [&str; 11] = [
    "write", "edit", "create", "patch", "apply", "replace", "delete", "remove", "rename", "move",
    "insert",
];

fn first_line(s: &str) -> Option<&str> {
    s.lines().map(str::trim).find(|l| !l.is_empty())
}

fn item(text: &str, sources: Vec<MessagePosition>) -> SummaryItem {
    SummaryItem {
        text: clip(text, ITEM_BYTES),
        sources,
    }
}

fn failing(cmd: &str, code: i32) -> String {
    clip(&format!("`{cmd}` fails (exit {code})"), ITEM_BYTES)
}

fn is_failing_todo(text: &str, cmd: &str) -> bool {
    let prefix = clip(&format!("`{cmd}` fails"), ITEM_BYTES);
    text.starts_with(prefix.trim_end_matches('…'))
}

/// Line starts (lower case) that state a decision outright.
const DECISION_MARKERS: [&str; 4] = ["decision:", "decided:", "decision reversed", "we decided"];
/// Line start (lower case) that states the next step.
const NEXT_STEP_MARKER: &str = "next step:";

/// The lines of `text` that start with one of `markers` (case-insensitive), trimmed.
fn marked_lines<'t>(text: &'t str, markers: &[&str]) -> Vec<&'t str> {
    text.lines()
        .map(str::trim)
        .filter(|l| {
            let lower = l.to_lowercase();
            markers.iter().any(|m| lower.starts_with(m))
        })
        .collect()
}

fn keep_last<T>(v: &mut Vec<T>, n: usize) {
    if v.len() > n {
        v.drain(..v.len() - n);
    }
}

fn merge_sources(into: &mut Vec<MessagePosition>, more: &[MessagePosition]) {
    for p in more {
        if !into.contains(p) {
            into.push(*p);
        }
    }
    keep_last(into, MAX_ITEM_SOURCES);
}

/// The extractive summary of `input` on top of `prev`.
pub(crate) fn summarize(prev: Option<&StructuredSummary>, input: &Input) -> StructuredSummary {
    let mut s = prev.cloned().unwrap_or_default();
    // An LLM's next step may be stale by now; an extractive one cannot be inferred.
    s.next_step = None;

    // User requests: the first is the intent (unless known); the latest are open.
    let requests: Vec<_> = input
        .messages
        .iter()
        .filter(|m| m.role == MessageRole::User)
        .filter_map(|m| first_line(&m.text).map(|l| (l, m.position)))
        .collect();
    if s.intent.is_none() {
        if let Some((text, pos)) = requests.first() {
            s.intent = Some(item(text, vec![*pos]));
        }
    }
    for (text, pos) in &requests {
        s.open_todos
            .push(item(&format!("{REQUESTED}{text}"), vec![*pos]));
    }
    let request_todos = s
        .open_todos
        .iter()
        .filter(|t| t.text.starts_with(REQUESTED))
        .count();
    if request_todos > REQUESTS_KEPT {
        let mut drop = request_todos - REQUESTS_KEPT;
        s.open_todos.retain(|t| {
            if drop > 0 && t.text.starts_with(REQUESTED) {
                drop -= 1;
                false
            } else {
                true
            }
        });
    }

    // Files changed by tool calls (one entry per file, the latest change described).
    for m in &input.messages {
        let failed = m.tool_results.iter().any(|(_, e)| *e);
        for (name, _, path) in &m.tool_calls {
            let lname = name.to_ascii_lowercase();
            let Some(file) = path else { continue };
            if !EDIT_WORDS.iter().any(|w| lname.contains(w)) {
                continue;
            }
            let what = if failed {
                format!("{name} (reported an error)")
            } else {
                name.clone()
            };
            let file = clip(file, 4096);
            match s.changes.iter_mut().find(|c| c.file == file) {
                Some(c) => {
                    c.what = clip(&what, ITEM_BYTES);
                    merge_sources(&mut c.sources, &[m.position]);
                }
                None => s.changes.push(FileChangeItem {
                    file,
                    what: clip(&what, ITEM_BYTES),
                    sources: vec![m.position],
                }),
            }
        }
    }

    // Failed commands: fixed if the same command later exited 0, else open.
    for (i, c) in input.commands.iter().enumerate() {
        if c.exit_code == 0 {
            // A command that passes now fixes an earlier open failure of it.
            let before = s.open_todos.len();
            s.open_todos
                .retain(|t| !is_failing_todo(&t.text, &c.command));
            if s.open_todos.len() < before {
                s.errors_fixed.push(item(
                    &format!("`{}` failed, then passed", c.command),
                    Vec::new(),
                ));
            }
            continue;
        }
        let fixed_later = input.commands[i + 1..]
            .iter()
            .any(|l| l.command == c.command && l.exit_code == 0);
        let todo = failing(&c.command, c.exit_code);
        if !fixed_later && !s.open_todos.iter().any(|t| t.text == todo) {
            s.open_todos
                .retain(|t| !is_failing_todo(&t.text, &c.command));
            s.open_todos.push(item(&todo, Vec::new()));
        }
    }

    // Decisions and the next step, where a message states them outright.
    for m in &input.messages {
        for line in marked_lines(&m.text, &DECISION_MARKERS) {
            if !s.decisions.iter().any(|d| d.text == clip(line, ITEM_BYTES)) {
                s.decisions.push(item(line, vec![m.position]));
            }
        }
        if let Some(line) = marked_lines(&m.text, &[NEXT_STEP_MARKER]).last() {
            s.next_step = Some(item(line, vec![m.position]));
        }
    }

    // The last state: the last assistant message's first line, or the last command.
    if let Some(m) = input
        .messages
        .iter()
        .rev()
        .find(|m| m.role == MessageRole::Assistant && first_line(&m.text).is_some())
    {
        if let Some(l) = first_line(&m.text) {
            s.current_state = Some(item(l, vec![m.position]));
        }
    }
    if let Some(c) = input.commands.last() {
        if c.exit_code != 0 {
            let text = format!("last command `{}` failed (exit {})", c.command, c.exit_code);
            s.current_state = Some(item(&text, Vec::new()));
        }
    }

    for l in [&mut s.decisions, &mut s.errors_fixed, &mut s.open_todos] {
        keep_last(l, MAX_SUMMARY_ITEMS);
    }
    keep_last(&mut s.changes, MAX_SUMMARY_ITEMS);
    s
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::summarize::input::InputMessage;

    fn message(n: u8, role: MessageRole, text: &str) -> InputMessage {
        let mut pos = [0u8; 12];
        pos[11] = n;
        let hex: String = pos.iter().map(|b| format!("{b:02x}")).collect();
        InputMessage {
            label: format!("m{n}"),
            position: MessagePosition::parse("position", &hex).unwrap(),
            role,
            text: text.into(),
            tool_calls: Vec::new(),
            tool_results: Vec::new(),
        }
    }

    #[test]
    fn stated_decisions_and_the_next_step_are_kept_with_their_message() {
        let input = Input {
            messages: vec![
                message(1, MessageRole::User, "Which database?"),
                message(
                    2,
                    MessageRole::Assistant,
                    "Looked at options.\nDecision: use PostgreSQL for the ledger.\nNext step: write migrations.",
                ),
                message(3, MessageRole::Assistant, "We decided against Redis here."),
                message(4, MessageRole::Assistant, "Our decision process was slow."),
            ],
            commands: Vec::new(),
            labels: BTreeMap::new(),
            label_of: BTreeMap::new(),
            bytes: 0,
        };
        let s = summarize(None, &input);
        let texts: Vec<&str> = s.decisions.iter().map(|d| d.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "Decision: use PostgreSQL for the ledger.",
                "We decided against Redis here."
            ]
        );
        assert_eq!(s.decisions[0].sources, vec![input.messages[1].position]);
        assert_eq!(
            s.next_step.as_ref().map(|n| n.text.as_str()),
            Some("Next step: write migrations.")
        );
        // Summarizing the same input on top of itself adds no duplicate decision.
        let again = summarize(Some(&s), &input);
        assert_eq!(again.decisions.len(), 2);
    }
}
