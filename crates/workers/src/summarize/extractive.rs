//! The deterministic summary used without an LLM: the user's requests, the files tool calls
//! changed, failed terminal commands (and those fixed later), and the last state, merged into
//! the previous summary. Same input, same output.

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
