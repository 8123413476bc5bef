//! Token counting with a real BPE tokenizer (`tiktoken-rs`, whose BPE tables are compiled into
//! the crate with `include_str!`: nothing is fetched at run time).
//!
//! | model | encoding | factor |
//! |---|---|---|
//! | `gpt-4o*`, `gpt-4.1*`, `gpt-4.5*`, `gpt-5*`, `o1*`, `o3*`, `o4*`, `chatgpt-4o*`, `gpt-oss*` | `o200k_base` | 1.0 (exact) |
//! | `gpt-4*` (not the above), `gpt-3.5*`, `text-embedding-*` | `cl100k_base` | 1.0 (exact) |
//! | anything else (`claude-*`, `gemini-*`, `llama-*`, ...) | `o200k_base` | [`APPROX_SAFETY_FACTOR`] |
//!
//! Each BPE is built once per process (building one takes a few hundred milliseconds) and
//! shared. Text is encoded as ordinary text: a `<|endoftext|>` inside a note counts as the
//! characters it is, which is never fewer tokens than the special token would be.

use std::sync::LazyLock;

use serde::{Deserialize, Serialize};
use tiktoken_rs::CoreBPE;

use super::ContextError;

/// The factor applied to `o200k_base` counts for models without a public tokenizer.
///
/// Anthropic's and Google's tokenizers are not public; on English prose and code they produce
/// roughly 0.9 to 1.2 times the tokens `o200k_base` does. 1.25 leaves a margin over that
/// spread, so a block counted this way fits the model's own count in practice; it is an
/// estimate, which is why the result names it.
pub const APPROX_SAFETY_FACTOR: f64 = 1.25;

/// A BPE encoding `tiktoken-rs` ships.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// GPT-4o, GPT-4.1, the o-series.
    O200kBase,
    /// GPT-4, GPT-3.5.
    Cl100kBase,
}

impl Encoding {
    /// Its tiktoken name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Encoding::O200kBase => "o200k_base",
            Encoding::Cl100kBase => "cl100k_base",
        }
    }
}

/// How the result's tokens were counted (part of every result).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenizerInfo {
    /// The model the request named.
    pub model: String,
    /// The encoding used.
    pub encoding: Encoding,
    /// `false`: the model's own tokenizer; `true`: `o200k_base` times `safety_factor`.
    pub approximate: bool,
    /// 1.0 when exact, [`APPROX_SAFETY_FACTOR`] when approximate.
    pub safety_factor: f64,
}

/// Counts tokens for one model.
#[derive(Clone, Copy)]
pub(crate) struct TokenCounter {
    bpe: &'static CoreBPE,
    encoding: Encoding,
    factor: f64,
    approximate: bool,
}

impl std::fmt::Debug for TokenCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCounter")
            .field("encoding", &self.encoding)
            .field("factor", &self.factor)
            .field("approximate", &self.approximate)
            .finish_non_exhaustive()
    }
}

static O200K: LazyLock<Result<CoreBPE, String>> =
    LazyLock::new(|| tiktoken_rs::o200k_base().map_err(|e| e.to_string()));
static CL100K: LazyLock<Result<CoreBPE, String>> =
    LazyLock::new(|| tiktoken_rs::cl100k_base().map_err(|e| e.to_string()));

/// Which encoding a model uses, and whether that is exact.
#[must_use]
pub(crate) fn encoding_for(model: &str) -> (Encoding, bool) {
    let m = model.to_ascii_lowercase();
    let m = m.rsplit('/').next().unwrap_or(&m); // "openai/gpt-4o" -> "gpt-4o"
    const O200K_PREFIXES: [&str; 10] = [
        "gpt-4o",
        "gpt-4.1",
        "gpt-4.5",
        "gpt-5",
        "chatgpt-4o",
        "gpt-oss",
        "o1",
        "o3",
        "o4",
        "codex-",
    ];
    const CL100K_PREFIXES: [&str; 4] = ["gpt-4", "gpt-3.5", "gpt-35", "text-embedding-"];
    if O200K_PREFIXES.iter().any(|p| m.starts_with(p)) {
        (Encoding::O200kBase, true)
    } else if CL100K_PREFIXES.iter().any(|p| m.starts_with(p)) {
        (Encoding::Cl100kBase, true)
    } else {
        (Encoding::O200kBase, false)
    }
}

impl TokenCounter {
    /// The counter for `model`.
    ///
    /// # Errors
    /// [`ContextError::Tokenizer`] if the embedded BPE table fails to load (a broken build).
    pub(crate) fn for_model(model: &str) -> Result<TokenCounter, ContextError> {
        let (encoding, exact) = encoding_for(model);
        let cell = match encoding {
            Encoding::O200kBase => &*O200K,
            Encoding::Cl100kBase => &*CL100K,
        };
        let bpe = cell
            .as_ref()
            .map_err(|e| ContextError::Tokenizer(e.clone()))?;
        Ok(TokenCounter {
            bpe,
            encoding,
            factor: if exact { 1.0 } else { APPROX_SAFETY_FACTOR },
            approximate: !exact,
        })
    }

    /// Tokens of `text` as the budget counts them: the BPE count, times the safety factor and
    /// rounded up when approximate.
    pub(crate) fn count(&self, text: &str) -> u64 {
        let raw = self.bpe.encode_ordinary(text).len() as u64;
        if self.approximate {
            // Exact for any realistic count (< 2^52): f64 holds these integers exactly.
            #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
            #[allow(clippy::cast_sign_loss)]
            let scaled = (raw as f64 * self.factor).ceil() as u64;
            scaled
        } else {
            raw
        }
    }

    /// What the result reports.
    pub(crate) fn info(&self, model: &str) -> TokenizerInfo {
        TokenizerInfo {
            model: model.to_owned(),
            encoding: self.encoding,
            approximate: self.approximate,
            safety_factor: self.factor,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_map_to_their_encodings() {
        assert_eq!(encoding_for("gpt-4o-mini"), (Encoding::O200kBase, true));
        assert_eq!(encoding_for("gpt-4.1"), (Encoding::O200kBase, true));
        assert_eq!(encoding_for("o3-mini"), (Encoding::O200kBase, true));
        assert_eq!(encoding_for("openai/gpt-4o"), (Encoding::O200kBase, true));
        assert_eq!(encoding_for("gpt-4-turbo"), (Encoding::Cl100kBase, true));
        assert_eq!(encoding_for("gpt-3.5-turbo"), (Encoding::Cl100kBase, true));
        assert_eq!(
            encoding_for("claude-sonnet-4"),
            (Encoding::O200kBase, false)
        );
        assert_eq!(encoding_for("llama-3-70b"), (Encoding::O200kBase, false));
    }

    #[test]
    fn counts_are_real_bpe_counts_and_scaled_when_approximate() {
        let exact = TokenCounter::for_model("gpt-4o").expect("o200k");
        // "hello world" is two tokens in both cl100k_base and o200k_base.
        assert_eq!(exact.count("hello world"), 2);
        assert_eq!(exact.count(""), 0);
        let cl = TokenCounter::for_model("gpt-4").expect("cl100k");
        assert_eq!(cl.count("hello world"), 2);
        let approx = TokenCounter::for_model("claude-opus-4").expect("approx");
        assert_eq!(approx.count("hello world"), 3); // ceil(2 * 1.25)
        let text = "fn main() { println!(\"héllo\"); } // ünïcode and <|endoftext|>";
        let raw = exact.count(text);
        assert_eq!(approx.count(text), (raw * 5).div_ceil(4));
        assert!(approx.info("claude-opus-4").approximate);
    }
}
