//! The prompt sent to the model and the strict check of what it answers: exactly the schema's
//! fields, the right types, and citations only of labels the input contains.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};
use steward_models::{
    FileChangeItem, MessagePosition, StructuredSummary, SummaryItem, MAX_ITEM_SOURCES,
};

use crate::llm::ChatRequest;
use crate::summarize::input::Input;

const SYSTEM: &str = r#"You maintain the running summary of a coding session between a user and an AI assistant in an IDE.
You get the previous summary (JSON, may be null) and the NEW messages and terminal commands since it was written.
Update the summary so it covers everything: keep items that are still true, add new ones, drop todos that are done (move fixed errors to errors_fixed).
Messages are labelled [m1], [m2], ...; every item cites the labels of the messages it rests on in "sources" (only labels that appear in the input or in the previous summary; an empty list only for items that rest on terminal commands alone).
Answer with ONE JSON object and nothing else (no prose, no code fence), with exactly these fields:
{
  "intent":        {"text": string, "sources": [label]} or null,   // what the user is trying to achieve
  "decisions":     [{"text": string, "sources": [label]}],         // decisions taken and why
  "changes":       [{"file": string, "what": string, "sources": [label]}],  // files changed and how
  "errors_fixed":  [{"text": string, "sources": [label]}],         // errors met and how they were fixed
  "open_todos":    [{"text": string, "sources": [label]}],         // what is still to do
  "current_state": {"text": string, "sources": [label]} or null,   // where the work stands
  "next_step":     {"text": string, "sources": [label]} or null    // the next concrete step
}
Be concise: one sentence per item, at most 20 items per list. Text marked [REDACTED:...] is a removed secret: never guess it."#;

/// The request for `input` on top of `prev`; `complaint` is the reason the previous answer was
/// refused, for the one retry.
pub(crate) fn request(
    prev: Option<&StructuredSummary>,
    input: &Input,
    complaint: Option<&str>,
) -> ChatRequest {
    let prev_json = prev.map_or(Value::Null, |p| to_labelled_json(p, input));
    let mut user = format!(
        "Previous summary:\n{}\n\nNew messages:\n{}",
        serde_json::to_string_pretty(&prev_json).unwrap_or_else(|_| "null".into()),
        input.render()
    );
    if let Some(c) = complaint {
        user.push_str(&format!(
            "\n\nYour previous answer was refused: {c}. Answer again with only the JSON object."
        ));
    }
    ChatRequest {
        system: SYSTEM.to_owned(),
        user,
        json: true,
    }
}

fn labels(sources: &[MessagePosition], input: &Input) -> Value {
    Value::Array(
        sources
            .iter()
            .filter_map(|p| input.label_of.get(p))
            .map(|l| Value::String(l.clone()))
            .collect(),
    )
}

fn item_json(i: &SummaryItem, input: &Input) -> Value {
    json!({"text": i.text, "sources": labels(&i.sources, input)})
}

/// The previous summary with its citations as labels.
fn to_labelled_json(p: &StructuredSummary, input: &Input) -> Value {
    let list = |v: &[SummaryItem]| Value::Array(v.iter().map(|i| item_json(i, input)).collect());
    json!({
        "intent": p.intent.as_ref().map(|i| item_json(i, input)),
        "decisions": list(&p.decisions),
        "changes": p.changes.iter().map(|c| json!({
            "file": c.file, "what": c.what, "sources": labels(&c.sources, input)
        })).collect::<Vec<_>>(),
        "errors_fixed": list(&p.errors_fixed),
        "open_todos": list(&p.open_todos),
        "current_state": p.current_state.as_ref().map(|i| item_json(i, input)),
        "next_step": p.next_step.as_ref().map(|i| item_json(i, input)),
    })
}

const FIELDS: [&str; 7] = [
    "intent",
    "decisions",
    "changes",
    "errors_fixed",
    "open_todos",
    "current_state",
    "next_step",
];

fn exact_keys(obj: &Map<String, Value>, keys: &[&str], at: &str) -> Result<(), String> {
    for k in keys {
        if !obj.contains_key(*k) {
            return Err(format!("{at}: missing field {k:?}"));
        }
    }
    if let Some(extra) = obj.keys().find(|k| !keys.contains(&k.as_str())) {
        return Err(format!("{at}: unexpected field {extra:?}"));
    }
    Ok(())
}

fn string(v: &Value, at: &str) -> Result<String, String> {
    match v.as_str() {
        Some(s) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
        Some(_) => Err(format!("{at}: empty string")),
        None => Err(format!("{at}: expected a string")),
    }
}

fn sources(
    v: &Value,
    at: &str,
    labels: &BTreeMap<String, MessagePosition>,
) -> Result<Vec<MessagePosition>, String> {
    let arr = v
        .as_array()
        .ok_or_else(|| format!("{at}.sources: expected an array"))?;
    let mut out = Vec::with_capacity(arr.len());
    for s in arr {
        let l = s
            .as_str()
            .ok_or_else(|| format!("{at}.sources: expected labels (strings)"))?;
        let l = l.trim().trim_start_matches('[').trim_end_matches(']');
        let p = labels
            .get(l)
            .ok_or_else(|| format!("{at}.sources: {l:?} is not a message of the input"))?;
        if !out.contains(p) {
            out.push(*p);
        }
    }
    if out.len() > MAX_ITEM_SOURCES {
        return Err(format!(
            "{at}.sources: at most {MAX_ITEM_SOURCES} citations"
        ));
    }
    Ok(out)
}

fn item(
    v: &Value,
    at: &str,
    labels: &BTreeMap<String, MessagePosition>,
) -> Result<SummaryItem, String> {
    let obj = v
        .as_object()
        .ok_or_else(|| format!("{at}: expected an object"))?;
    exact_keys(obj, &["text", "sources"], at)?;
    Ok(SummaryItem {
        text: string(&obj["text"], &format!("{at}.text"))?,
        sources: sources(&obj["sources"], at, labels)?,
    })
}

fn optional_item(
    v: &Value,
    at: &str,
    labels: &BTreeMap<String, MessagePosition>,
) -> Result<Option<SummaryItem>, String> {
    if v.is_null() {
        Ok(None)
    } else {
        item(v, at, labels).map(Some)
    }
}

fn list(
    v: &Value,
    at: &str,
    labels: &BTreeMap<String, MessagePosition>,
) -> Result<Vec<SummaryItem>, String> {
    v.as_array()
        .ok_or_else(|| format!("{at}: expected an array"))?
        .iter()
        .enumerate()
        .map(|(i, x)| item(x, &format!("{at}[{i}]"), labels))
        .collect()
}

/// The model's answer checked against the schema and the input's labels.
///
/// Lenient only about a surrounding code fence; anything else that is not exactly the
/// schema is refused with a reason (sent back to the model on the retry).
pub(crate) fn parse(text: &str, input: &Input) -> Result<StructuredSummary, String> {
    let t = text.trim();
    let t = t
        .strip_prefix("```json")
        .or_else(|| t.strip_prefix("```"))
        .and_then(|r| r.trim_end().strip_suffix("```"))
        .unwrap_or(t)
        .trim();
    let v: Value = serde_json::from_str(t).map_err(|e| format!("not JSON: {e}"))?;
    let obj = v
        .as_object()
        .ok_or("expected a JSON object at the top level")?;
    exact_keys(obj, &FIELDS, "summary")?;
    let labels = &input.labels;
    let changes = obj["changes"]
        .as_array()
        .ok_or("changes: expected an array")?
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let at = format!("changes[{i}]");
            let o = c
                .as_object()
                .ok_or_else(|| format!("{at}: expected an object"))?;
            exact_keys(o, &["file", "what", "sources"], &at)?;
            Ok(FileChangeItem {
                file: string(&o["file"], &format!("{at}.file"))?,
                what: string(&o["what"], &format!("{at}.what"))?,
                sources: sources(&o["sources"], &at, labels)?,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let s = StructuredSummary {
        intent: optional_item(&obj["intent"], "intent", labels)?,
        decisions: list(&obj["decisions"], "decisions", labels)?,
        changes,
        errors_fixed: list(&obj["errors_fixed"], "errors_fixed", labels)?,
        open_todos: list(&obj["open_todos"], "open_todos", labels)?,
        current_state: optional_item(&obj["current_state"], "current_state", labels)?,
        next_step: optional_item(&obj["next_step"], "next_step", labels)?,
    };
    s.validate().map_err(|e| e.to_string())?;
    Ok(s)
}
