//! From candidates to the block: copies and superseded items out, scores, abstention, the
//! greedy fill with whole items, and the exact count of the assembled block.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};

use super::gather::{Candidate, Scope};
use super::score::{
    file_overlap, query_terms, recency, relation_weight, terms, Bm25, ScoreBreakdown,
};
use super::tokens::TokenCounter;
use super::{
    ContextRequest, ContextResult, ItemKind, ManifestItem, Reason, Relation, MAX_EXCLUDED_LISTED,
    RELEVANCE_THRESHOLD,
};

/// The line the block opens with.
pub(crate) const HEADER: &str = "Notes from related sessions, most relevant first. A newer \
decision replaces an older one. Cite a note as (session <id>, messages <ids>).\n\n";

/// The longest a token can be in bytes, for a cheap "cannot fit" test before counting.
const MAX_TOKEN_BYTES: u64 = 128;

struct Item<'a> {
    c: &'a Candidate,
    relation: Relation,
    score: ScoreBreakdown,
    reason: Reason,
    tokens: Option<u32>,
}

impl Item<'_> {
    fn manifest(&self) -> ManifestItem {
        ManifestItem {
            item_id: self.c.item_id.clone(),
            session_id: self.c.session_id,
            relation: self.relation,
            kind: self.c.kind,
            messages: self.c.messages.clone(),
            created_at: self.c.created_at,
            score: self.score,
            reason: self.reason.clone(),
            tokens: self.tokens,
        }
    }
}

/// Best first: total score, then newer, then item id (so equal scores keep one order).
fn by_rank(a: &Item<'_>, b: &Item<'_>) -> Ordering {
    b.score
        .total
        .total_cmp(&a.score.total)
        .then(b.c.created_at.cmp(&a.c.created_at))
        .then(a.c.item_id.cmp(&b.c.item_id))
}

fn age(created_at: i64, now: i64) -> String {
    let days = now.saturating_sub(created_at).max(0) / 86_400_000_000;
    match days {
        0 => "today".to_owned(),
        1 => "1 day ago".to_owned(),
        d => format!("{d} days ago"),
    }
}

/// One item's section of the block.
fn section(n: usize, item: &Item<'_>, now: i64) -> String {
    let c = item.c;
    let mut head = format!(
        "[{n}] {} from session {} ({}), {}",
        item.c.kind.label(),
        c.session_id,
        item.relation.label(),
        age(c.created_at, now)
    );
    if !c.messages.is_empty() {
        head.push_str(", messages ");
        head.push_str(&c.messages.join(", "));
    }
    format!("{head}:\n{}\n\n", c.text.trim())
}

fn assemble(items: &[&Item<'_>], now: i64) -> String {
    let mut out = String::from(HEADER);
    for (i, item) in items.iter().enumerate() {
        out.push_str(&section(i + 1, item, now));
    }
    out
}

fn to_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Marks copies (same kind, key, text and time: forks copy their parent's memory and summary)
/// as duplicates of the copy from the closest session, then items replaced by a newer one on
/// the same key, or named in another's `supersedes`, as superseded.
fn dedupe_and_supersede(items: &mut [Item<'_>]) {
    // Closest relation first, so the kept copy is the one from the closest session.
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by(|&a, &b| {
        relation_weight(items[b].relation)
            .total_cmp(&relation_weight(items[a].relation))
            .then(items[a].c.item_id.cmp(&items[b].c.item_id))
    });
    let mut kept: HashMap<(ItemKind, Option<String>, &str, i64), usize> = HashMap::new();
    for &i in &order {
        let c = items[i].c;
        let key = (
            c.kind,
            c.supersedes_key.as_ref().map(|k| k.trim().to_lowercase()),
            c.text.trim(),
            c.created_at,
        );
        match kept.get(&key) {
            Some(&k) => {
                items[i].reason = Reason::Duplicate {
                    of: items[k].c.item_id.clone(),
                }
            }
            None => {
                kept.insert(key, i);
            }
        }
    }

    // Newest per key wins; ties go to the closer session, then the item id.
    let mut winner: HashMap<String, usize> = HashMap::new();
    for &i in &order {
        if items[i].reason != Reason::Included {
            continue;
        }
        let Some(key) = items[i].c.supersedes_key.as_ref() else {
            continue;
        };
        let key = key.trim().to_lowercase();
        match winner.get(&key) {
            Some(&w) if items[w].c.created_at >= items[i].c.created_at => {}
            _ => {
                winner.insert(key, i);
            }
        }
    }
    let by_id: HashMap<&str, usize> = items
        .iter()
        .enumerate()
        .map(|(i, it)| (it.c.item_id.as_str(), i))
        .collect();
    let mut replaced: Vec<(usize, String)> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        if item.reason != Reason::Included {
            continue;
        }
        if let Some(key) = item.c.supersedes_key.as_ref() {
            if let Some(&w) = winner.get(&key.trim().to_lowercase()) {
                if w != i {
                    replaced.push((i, items[w].c.item_id.clone()));
                }
            }
        }
        for old in &item.c.supersedes {
            if let Some(&o) = by_id.get(old.as_str()) {
                if o != i {
                    replaced.push((o, item.c.item_id.clone()));
                }
            }
        }
    }
    // Keyless decisions (summarizer items carry no key): a newer decision on the same topic,
    // by term overlap, replaces an older one.
    let decisions: Vec<(usize, HashSet<String>)> = items
        .iter()
        .enumerate()
        .filter(|(_, it)| {
            it.reason == Reason::Included
                && it.c.kind == ItemKind::Decision
                && it.c.supersedes_key.is_none()
        })
        .take(MAX_TOPIC_DECISIONS)
        .map(|(i, it)| (i, terms(&it.c.text).into_iter().collect()))
        .collect();
    for (i, ti) in &decisions {
        let newest = decisions
            .iter()
            .filter(|(j, tj)| {
                items[*j].c.created_at > items[*i].c.created_at
                    && jaccard(ti, tj) >= TOPIC_SIMILARITY
            })
            .max_by(|(a, _), (b, _)| {
                items[*a]
                    .c
                    .created_at
                    .cmp(&items[*b].c.created_at)
                    .then(items[*b].c.item_id.cmp(&items[*a].c.item_id))
            });
        if let Some((j, _)) = newest {
            replaced.push((*i, items[*j].c.item_id.clone()));
        }
    }
    for (i, by) in replaced {
        if matches!(items[i].reason, Reason::Included) {
            items[i].reason = Reason::Superseded { by };
        }
    }
}

/// Two keyless decisions whose term sets overlap at least this much (Jaccard) are on the same
/// topic: the newer replaces the older.
pub(crate) const TOPIC_SIMILARITY: f64 = 0.5;
/// Most keyless decisions compared pairwise.
const MAX_TOPIC_DECISIONS: usize = 1000;

fn jaccard(a: &HashSet<String>, b: &HashSet<String>) -> f64 {
    let union = a.union(b).count();
    if union == 0 {
        return 0.0;
    }
    a.intersection(b).count() as f64 / union as f64
}

/// Scores the scope's candidates and fills the budget.
pub(crate) fn select(
    req: &ContextRequest,
    scope: &Scope,
    counter: &TokenCounter,
    now: i64,
) -> ContextResult {
    let budget = u64::from(req.token_budget);
    let query = query_terms(&req.question);
    let index = Bm25::new(scope.candidates.iter().map(|(c, _)| c.text.as_str()));
    let mut items: Vec<Item<'_>> = scope
        .candidates
        .iter()
        .enumerate()
        .map(|(i, (c, relation))| Item {
            c,
            relation: *relation,
            score: ScoreBreakdown::new(
                index.score(i, &query),
                relation_weight(*relation),
                recency(c.created_at, now),
                file_overlap(&c.files, &scope.requester_files),
            ),
            // "Included" stands for "still a contender" until the fill decides.
            reason: Reason::Included,
            tokens: None,
        })
        .collect();
    dedupe_and_supersede(&mut items);
    for item in &mut items {
        if item.reason == Reason::Included && item.score.relevance < RELEVANCE_THRESHOLD {
            item.reason = Reason::Irrelevant;
        }
    }
    items.sort_by(by_rank);

    let contenders = items
        .iter()
        .filter(|i| i.reason == Reason::Included)
        .count();
    let abstain_reason = if contenders > 0 {
        None
    } else if items.is_empty() {
        Some("the sessions this user may read hold no notes yet".to_owned())
    } else {
        let best = items
            .iter()
            .filter(|i| !matches!(i.reason, Reason::Duplicate { .. }))
            .map(|i| i.score.relevance)
            .fold(0.0f64, f64::max);
        Some(format!(
            "no note is relevant to the question (best relevance {best:.3}, threshold \
             {RELEVANCE_THRESHOLD})"
        ))
    };

    // Greedy fill: each contender's section is counted on its own; the block is then counted
    // exactly, and while it is over (BPE merges across a boundary), the last item goes.
    let header_tokens = counter.count(HEADER);
    let mut used = header_tokens;
    let mut chosen: Vec<usize> = Vec::new();
    for (i, item) in items.iter_mut().enumerate() {
        if item.reason != Reason::Included {
            continue;
        }
        let text = section(chosen.len() + 1, item, now);
        let remaining = budget.saturating_sub(used);
        let tokens = if text.len() as u64 > remaining.saturating_mul(MAX_TOKEN_BYTES) {
            u64::MAX // cannot fit: not worth encoding
        } else {
            counter.count(&text)
        };
        if tokens != u64::MAX {
            item.tokens = Some(to_u32(tokens));
        }
        if used.saturating_add(tokens) <= budget {
            used += tokens;
            chosen.push(i);
        } else {
            item.reason = Reason::OverBudget;
        }
    }
    let (context, tokens_used) = loop {
        if chosen.is_empty() {
            break (String::new(), 0);
        }
        let refs: Vec<&Item<'_>> = chosen.iter().map(|&i| &items[i]).collect();
        let block = assemble(&refs, now);
        let n = counter.count(&block);
        if n <= budget {
            break (block, n);
        }
        if let Some(last) = chosen.pop() {
            items[last].reason = Reason::OverBudget;
        }
    };

    let included: Vec<ManifestItem> = chosen.iter().map(|&i| items[i].manifest()).collect();
    let excluded_all: Vec<&Item<'_>> = items
        .iter()
        .filter(|i| i.reason != Reason::Included)
        .collect();
    let excluded: Vec<ManifestItem> = excluded_all
        .iter()
        .take(MAX_EXCLUDED_LISTED)
        .map(|i| i.manifest())
        .collect();
    ContextResult {
        context,
        tokens_used: to_u32(tokens_used),
        token_budget: req.token_budget,
        tokenizer: counter.info(&req.model),
        abstained: abstain_reason.is_some(),
        abstain_reason,
        included,
        excluded_not_listed: to_u32(excluded_all.len().saturating_sub(MAX_EXCLUDED_LISTED) as u64),
        excluded,
        sessions_considered: to_u32(scope.sessions.len() as u64),
        sessions_not_visible: scope.not_visible,
    }
}
