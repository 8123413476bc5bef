//! Scoring: a small Okapi BM25 over the candidates' texts (written here: it is forty lines, and
//! the crates that offer it bring an index, persistence or a language-detection stack this does
//! not need), combined with the candidate's relation to the requester, its age and the files it
//! shares with the requesting session. `docs/context.md` has the formula.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::Relation;

/// BM25 term-frequency saturation.
pub const BM25_K1: f64 = 1.2;
/// BM25 length normalization.
pub const BM25_B: f64 = 0.75;
/// Below this normalized relevance an item is "irrelevant"; when no item reaches it the result
/// abstains.
pub const RELEVANCE_THRESHOLD: f64 = 0.12;
/// Half-life of the recency factor, in days.
pub const RECENCY_HALF_LIFE_DAYS: f64 = 30.0;
/// How much a full file overlap multiplies the score by (`1 + FILE_OVERLAP_WEIGHT`).
pub const FILE_OVERLAP_WEIGHT: f64 = 0.5;

/// Words that carry no topic (English function words and question words).
const STOPWORDS: &[&str] = &[
    "a", "about", "after", "all", "also", "am", "an", "and", "any", "are", "as", "at", "be",
    "been", "before", "being", "but", "by", "can", "could", "did", "do", "does", "doing", "for",
    "from", "had", "has", "have", "having", "how", "i", "if", "in", "into", "is", "it", "its",
    "just", "me", "my", "no", "not", "now", "of", "on", "or", "our", "ours", "should", "so",
    "some", "such", "than", "that", "the", "their", "them", "then", "there", "these", "they",
    "this", "those", "to", "too", "us", "use", "used", "using", "was", "we", "were", "what",
    "when", "where", "which", "while", "who", "whom", "why", "will", "with", "would", "you",
    "your",
];

/// The terms of a text: lowercase runs of letters and digits (so `snake_case`, `a.b` and
/// `kebab-case` split into their words), stop words dropped, then a light suffix strip
/// ([`stem`]) so "signed"/"signing"/"signs" and "retries"/"retry" meet.
#[must_use]
pub fn terms(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .filter(|w| !STOPWORDS.contains(&w.as_str()))
        .map(stem)
        .collect()
}

/// A light English suffix strip (not Porter): `-ies` -> `-y`, then `-ing`, `-ed`, `-es` after
/// `s`/`x`/`z`/`ch`/`sh`, and a plural `-s` (not `-ss`), each only when at least three letters
/// remain. Applied alike to notes and questions, so it need only be consistent.
#[must_use]
pub fn stem(word: String) -> String {
    let n = word.chars().count();
    let cut = |suffix: &str| -> Option<String> {
        let rest = word.strip_suffix(suffix)?;
        (rest.chars().count() >= 3).then(|| rest.to_owned())
    };
    if let Some(rest) = cut("ies") {
        return format!("{rest}y");
    }
    if let Some(rest) = cut("ing").or_else(|| cut("ed")) {
        return rest;
    }
    if ["ses", "xes", "zes", "ches", "shes"]
        .iter()
        .any(|s| word.ends_with(s))
    {
        if let Some(rest) = cut("es") {
            return rest;
        }
    }
    if n > 3 && word.ends_with('s') && !word.ends_with("ss") {
        if let Some(rest) = cut("s") {
            return rest;
        }
    }
    word
}

/// A BM25 index over a small set of documents (the candidates of one request).
#[derive(Debug)]
pub(crate) struct Bm25 {
    docs: Vec<HashMap<String, u32>>,
    lens: Vec<f64>,
    avg_len: f64,
    df: HashMap<String, u32>,
}

impl Bm25 {
    pub(crate) fn new<'a>(texts: impl IntoIterator<Item = &'a str>) -> Bm25 {
        let mut docs = Vec::new();
        let mut lens = Vec::new();
        let mut df: HashMap<String, u32> = HashMap::new();
        for text in texts {
            let mut tf: HashMap<String, u32> = HashMap::new();
            let ts = terms(text);
            lens.push(ts.len() as f64);
            for t in ts {
                *tf.entry(t).or_default() += 1;
            }
            for t in tf.keys() {
                *df.entry(t.clone()).or_default() += 1;
            }
            docs.push(tf);
        }
        let avg_len = if lens.is_empty() {
            0.0
        } else {
            lens.iter().sum::<f64>() / lens.len() as f64
        };
        Bm25 {
            docs,
            lens,
            avg_len,
            df,
        }
    }

    /// Lucene's IDF, always positive: `ln(1 + (N - df + 0.5) / (df + 0.5))`.
    fn idf(&self, term: &str) -> f64 {
        let n = self.docs.len() as f64;
        let df = f64::from(self.df.get(term).copied().unwrap_or(0));
        (1.0 + (n - df + 0.5) / (df + 0.5)).ln()
    }

    /// [`Self::idf`] with df at least 1.
    fn idf_seen(&self, term: &str) -> f64 {
        let n = self.docs.len() as f64;
        let df = f64::from(self.df.get(term).copied().unwrap_or(0).max(1));
        (1.0 + (n - df + 0.5) / (df + 0.5)).ln()
    }

    /// The BM25 score of document `doc` for `query` (distinct terms), and the same score
    /// divided by the best any document could reach for this query (each term saturating at
    /// `idf * (k1 + 1)`), so in `[0, 1)` and comparable across requests.
    pub(crate) fn score(&self, doc: usize, query: &[String]) -> (f64, f64) {
        let (Some(tf), Some(len)) = (self.docs.get(doc), self.lens.get(doc)) else {
            return (0.0, 0.0);
        };
        let mut score = 0.0;
        let mut best = 0.0;
        for q in query {
            let idf = self.idf(q);
            // A term no note has weighs in the denominator as much as the rarest possible
            // seen term (df = 1): unseen words still lower relevance, but in a handful of
            // notes they do not drown the matched ones.
            best += self.idf_seen(q) * (BM25_K1 + 1.0);
            let f = f64::from(tf.get(q).copied().unwrap_or(0));
            if f > 0.0 {
                let norm = if self.avg_len > 0.0 {
                    1.0 - BM25_B + BM25_B * len / self.avg_len
                } else {
                    1.0
                };
                score += idf * f * (BM25_K1 + 1.0) / (f + BM25_K1 * norm);
            }
        }
        let relevance = if best > 0.0 { score / best } else { 0.0 };
        (score, relevance)
    }
}

/// The distinct terms of a question, in first-seen order.
#[must_use]
pub(crate) fn query_terms(question: &str) -> Vec<String> {
    let mut seen = HashSet::new();
    terms(question)
        .into_iter()
        .filter(|t| seen.insert(t.clone()))
        .collect()
}

/// The weight of a relation: self > parent > ancestor > fork (sibling, child, linked) >
/// same workspace > same user.
#[must_use]
pub fn relation_weight(relation: Relation) -> f64 {
    match relation {
        Relation::Current => 1.0,
        Relation::Parent => 0.9,
        Relation::Ancestor { depth } => {
            // 0.8 at depth 2, decaying by 0.9 per further level, never below the forks' 0.7.
            let extra = depth.saturating_sub(2).min(64);
            (0.8 * 0.9f64.powi(i32::from(extra))).max(0.7)
        }
        Relation::SiblingFork | Relation::ChildFork | Relation::Linked => 0.7,
        Relation::SameWorkspace => 0.5,
        Relation::SameUser => 0.4,
    }
}

/// `0.5 ^ (age / half-life)`, 1.0 for an item from the future (a skewed clock).
#[must_use]
pub fn recency(created_at: i64, now_micros: i64) -> f64 {
    let age_days = (now_micros.saturating_sub(created_at)).max(0) as f64 / 86_400_000_000.0;
    0.5f64.powf(age_days / RECENCY_HALF_LIFE_DAYS)
}

/// The share of an item's files that the requesting session also has (0 when the item names
/// none).
#[must_use]
pub fn file_overlap(item_files: &[String], session_files: &HashSet<String>) -> f64 {
    let distinct: HashSet<&String> = item_files.iter().collect();
    if distinct.is_empty() {
        return 0.0;
    }
    let shared = distinct
        .iter()
        .filter(|f| session_files.contains(f.as_str()))
        .count();
    shared as f64 / distinct.len() as f64
}

/// How an item's score was made (part of every manifest entry).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScoreBreakdown {
    /// Raw BM25 against the question.
    pub bm25: f64,
    /// BM25 divided by the best reachable for this question, in `[0, 1)`.
    pub relevance: f64,
    /// [`relation_weight`] of the item's session.
    pub relation: f64,
    /// [`recency`] of the item.
    pub recency: f64,
    /// [`file_overlap`] with the requesting session.
    pub file_overlap: f64,
    /// `relevance * relation * (0.5 + 0.5 * recency) * (1 + 0.5 * file_overlap)`.
    pub total: f64,
}

impl ScoreBreakdown {
    pub(crate) fn new(
        (bm25, relevance): (f64, f64),
        relation: f64,
        recency: f64,
        file_overlap: f64,
    ) -> Self {
        // Rounded to 1e-9: the platform's `powf` may differ in the last bit between calls
        // (seen with glibc), and results must be reproducible byte for byte.
        let (bm25, relevance, relation, recency, file_overlap) = (
            quantize(bm25),
            quantize(relevance),
            quantize(relation),
            quantize(recency),
            quantize(file_overlap),
        );
        let total = quantize(
            relevance
                * relation
                * (0.5 + 0.5 * recency)
                * (1.0 + FILE_OVERLAP_WEIGHT * file_overlap),
        );
        ScoreBreakdown {
            bm25,
            relevance,
            relation,
            recency,
            file_overlap,
            total,
        }
    }
}

fn quantize(x: f64) -> f64 {
    (x * 1e9).round() / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_split_identifiers_and_drop_stopwords() {
        assert_eq!(
            terms("What is the retry_policy for Webhook-Deliveries?"),
            vec!["retry", "policy", "webhook", "delivery"]
        );
        assert_eq!(terms("tests pass"), vec!["test", "pass"]);
        assert_eq!(terms("signed signing signs sign"), vec!["sign"; 4]);
        assert_eq!(terms("retries retry boxes"), vec!["retry", "retry", "box"]);
        assert_eq!(terms("is ox bus"), vec!["ox", "bus"]);
    }

    #[test]
    fn bm25_prefers_the_matching_document_and_normalizes_below_one() {
        let idx = Bm25::new([
            "webhook retries use exponential backoff",
            "the cache uses redis",
            "deploys go through the staging cluster first",
        ]);
        let q = query_terms("how do webhook retries back off?");
        let (s0, r0) = idx.score(0, &q);
        let (s1, r1) = idx.score(1, &q);
        assert!(s0 > 0.0 && s1 == 0.0 && r1 == 0.0);
        assert!(r0 > 0.0 && r0 < 1.0, "{r0}");
        // Out-of-range documents score zero instead of panicking.
        assert_eq!(idx.score(9, &q), (0.0, 0.0));
    }

    #[test]
    fn relation_weights_are_ordered() {
        let order = [
            Relation::Current,
            Relation::Parent,
            Relation::Ancestor { depth: 2 },
            Relation::SiblingFork,
            Relation::SameWorkspace,
            Relation::SameUser,
        ];
        for w in order.windows(2) {
            assert!(relation_weight(w[0]) > relation_weight(w[1]), "{w:?}");
        }
        assert!(relation_weight(Relation::Ancestor { depth: 200 }) >= 0.7);
    }

    #[test]
    fn recency_halves_every_half_life() {
        let day = 86_400_000_000i64;
        assert!((recency(0, 30 * day) - 0.5).abs() < 1e-9);
        assert!((recency(10 * day, 0) - 1.0).abs() < 1e-9);
    }
}
