//! Secret redaction, applied to every text before it leaves the process (and before it is
//! hashed or stored in a summary): API keys, tokens, passwords and private keys become
//! `[REDACTED:<kind>]`.
//!
//! What is caught:
//! - private key blocks (`-----BEGIN ... PRIVATE KEY-----` to its end, or to the end of the
//!   text if the block is cut);
//! - provider keys by shape: Anthropic `sk-ant-...`, OpenAI `sk-...`/`sk-proj-...`, AWS access
//!   key ids `AKIA...`/`ASIA...`, GitHub `ghp_`/`gho_`/`ghu_`/`ghs_`/`ghr_` and
//!   `github_pat_...`, Slack `xoxb-`/`xoxa-`/`xoxp-`/`xoxr-`/`xoxs-`, Google `AIza...`,
//!   Stripe `sk_live_`/`rk_live_`, JWTs (`eyJ...`.`eyJ...`.`...`);
//! - `Authorization: Bearer <token>` / `Basic <token>` and any `Bearer <token>`;
//! - credentials in URLs (`scheme://user:password@host` keeps the user, drops the password);
//! - assignments to password-like names (`password=...`, `PASSWORD: ...`, `DB_PASS=...`,
//!   `"client_secret": "..."`): any value;
//! - assignments to key-like names (`token`, `api_key`, `access_key`, `auth`, `credential`,
//!   ...) whose value is a long high-entropy run (≥ 16 characters of hex or base64 alphabet
//!   with at least 3 bits of entropy per character), so `tokens: 5` and `key = "name"` survive.

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::{Captures, Regex};

struct Rule {
    kind: &'static str,
    re: Regex,
}

fn rule(kind: &'static str, pattern: &str) -> Option<Rule> {
    // The patterns are constants covered by the tests; a bad one is dropped (and its tests
    // fail) rather than panicking in production.
    Regex::new(pattern).ok().map(|re| Rule { kind, re })
}

static SHAPES: LazyLock<Vec<Rule>> = LazyLock::new(|| {
    [
        rule(
            "private_key",
            r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY( BLOCK)?-----(?s:.*?)(-----END [A-Z0-9 ]*PRIVATE KEY( BLOCK)?-----|\z)",
        ),
        rule("anthropic_key", r"\bsk-ant-[A-Za-z0-9_\-]{16,}"),
        rule(
            "openai_key",
            r"\bsk-(?:proj-|svcacct-|admin-|None-)?[A-Za-z0-9_\-]{20,}",
        ),
        rule("aws_access_key", r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA)[0-9A-Z]{16}\b"),
        rule("github_token", r"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{30,}\b"),
        rule("github_token", r"\bgithub_pat_[A-Za-z0-9_]{22,}"),
        rule("slack_token", r"\bxox[abprs]-[A-Za-z0-9\-]{10,}"),
        rule("google_api_key", r"\bAIza[0-9A-Za-z_\-]{35}"),
        rule("stripe_key", r"\b[rs]k_(?:live|test)_[0-9A-Za-z]{16,}"),
        rule(
            "jwt",
            r"\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}",
        ),
    ]
    .into_iter()
    .flatten()
    .collect()
});

/// `Bearer <token>` / `Basic <token>` after `Authorization`, or `Bearer <token>` anywhere.
static AUTH_HEADER: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(
        r"(?i)(\bauthorization\s*[:=]\s*(?:bearer|basic|token)\s+|\bbearer\s+)([A-Za-z0-9._~+/\-]{8,}=*)",
    )
    .ok()
});

/// `scheme://user:password@` (database URLs, git remotes, proxies).
static URL_CREDENTIALS: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"\b([A-Za-z][A-Za-z0-9+.\-]*://)([^\s:/@]*):([^\s@/]+)@").ok());

/// `name = value`, `name: value`, `"name": "value"`, `--name value`-less forms of
/// password-like names: any value.
static PASSWORD_ASSIGN: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(
        r#"(?i)(\b[A-Za-z0-9_.\-]*(?:password|passwd|passphrase|pwd|_pass|secret)[A-Za-z0-9_.\-]*["']?\s*(?:[:=]|:=|=>)\s*)("[^"\n]*"|'[^'\n]*'|[^\s"',;]+)"#,
    )
    .ok()
});

/// Key-like names followed by a value; redacted only when the value looks random.
static KEYISH_ASSIGN: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(
        r#"(?i)(\b[A-Za-z0-9_.\-]*(?:token|api[_\-]?key|apikey|access[_\-]?key|private[_\-]?key|auth|credential|key)[A-Za-z0-9_.\-]*["']?\s*(?:[:=]|:=|=>|\s)\s*)(["']?)([A-Za-z0-9+/_\-]{16,}={0,2})"#,
    )
    .ok()
});

/// A placeholder for a redacted value of `kind`.
fn placeholder(kind: &str) -> String {
    format!("[REDACTED:{kind}]")
}

/// Shannon entropy in bits per character.
fn entropy(s: &str) -> f64 {
    let mut counts = [0u32; 256];
    for b in s.bytes() {
        counts[usize::from(b)] += 1;
    }
    #[allow(clippy::cast_precision_loss)] // lengths far below 2^52
    let n = s.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

/// Whether a value looks like a random secret rather than a word or a number.
fn looks_random(v: &str) -> bool {
    let hex = v.bytes().all(|b| b.is_ascii_hexdigit());
    let has_digit = v.bytes().any(|b| b.is_ascii_digit());
    let has_alpha = v.bytes().any(|b| b.is_ascii_alphabetic());
    if hex {
        return v.len() >= 16 && has_digit && has_alpha && entropy(v) >= 3.0;
    }
    has_digit && has_alpha && entropy(v) >= 3.5
}

fn apply<'a>(
    text: Cow<'a, str>,
    re: &Regex,
    rep: impl Fn(&Captures<'_>) -> String,
) -> Cow<'a, str> {
    if !re.is_match(&text) {
        return text;
    }
    Cow::Owned(
        re.replace_all(&text, |c: &Captures<'_>| rep(c))
            .into_owned(),
    )
}

/// `text` with every secret it recognises replaced by `[REDACTED:<kind>]`. Borrowed back
/// unchanged when nothing matched.
#[must_use]
pub fn redact(text: &str) -> Cow<'_, str> {
    let mut out = Cow::Borrowed(text);
    for r in SHAPES.iter() {
        out = apply(out, &r.re, |_| placeholder(r.kind));
    }
    if let Some(re) = AUTH_HEADER.as_ref() {
        out = apply(out, re, |c| format!("{}{}", &c[1], placeholder("token")));
    }
    if let Some(re) = URL_CREDENTIALS.as_ref() {
        out = apply(out, re, |c| {
            format!("{}{}:{}@", &c[1], &c[2], placeholder("password"))
        });
    }
    if let Some(re) = PASSWORD_ASSIGN.as_ref() {
        out = apply(out, re, |c| {
            let value = &c[2];
            let quote = &value[..usize::from(value.starts_with(['"', '\'']))];
            if value.trim_matches(['"', '\'']).starts_with("[REDACTED") {
                c[0].to_owned()
            } else {
                format!("{}{quote}{}{quote}", &c[1], placeholder("password"))
            }
        });
    }
    if let Some(re) = KEYISH_ASSIGN.as_ref() {
        out = apply(out, re, |c| {
            if looks_random(&c[3]) {
                format!("{}{}{}", &c[1], &c[2], placeholder("secret"))
            } else {
                c[0].to_owned()
            }
        });
    }
    out
}

/// Whether [`redact`] would change `text`.
#[must_use]
pub fn contains_secret(text: &str) -> bool {
    matches!(redact(text), Cow::Owned(ref s) if s != text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each secret must vanish (and a placeholder appear); the text around it stays.
    #[test]
    fn redacts_every_kind_of_secret() {
        let cases = [
            ("key: sk-ant-api03-AbCdEfGhIjKlMnOpQrStUv_wxyz-0123456789", "sk-ant-api03"),
            ("OPENAI=sk-proj-A1b2C3d4E5f6G7h8I9j0K1l2M3n4 done", "A1b2C3d4E5f6G7h8"),
            ("export OPENAI_API_KEY=sk-1234567890abcdefABCDEF12", "sk-1234567890"),
            ("aws id AKIAIOSFODNN7EXAMPLE in config", "AKIAIOSFODNN7EXAMPLE"),
            ("git push https://ghp_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789@github.com", "ghp_AbCd"),
            ("token github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz", "github_pat_11"),
            ("SLACK=xoxb-1234567890-0987654321-AbCdEfGhIjKl", "xoxb-1234567890"),
            ("curl -H 'Authorization: Bearer abc.DEF-123_456~xyz' url", "abc.DEF-123_456"),
            ("sent Bearer Zm9vYmFyYmF6cXV1eDEyMw== ok", "Zm9vYmFyYmF6cXV1eDEyMw"),
            (
                "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
                "dozjgNryP4J3",
            ),
            (
                "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7\nabc\n-----END RSA PRIVATE KEY-----\nafter",
                "MIIEowIBAAKCAQEA7",
            ),
            ("cut -----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk", "b3BlbnNzaC1rZXk"),
            ("DATABASE_URL=postgres://app:hunter2@db:5432/app", "hunter2"),
            ("password=hunter2", "hunter2"),
            ("PASSWORD: correct-horse-battery", "correct-horse-battery"),
            ("DB_PASS=s3cr3t!", "s3cr3t!"),
            (r#"{"client_secret": "very-secret-value"}"#, "very-secret-value"),
            ("mysql --password='pa ss' db", "pa ss"),
            ("X-Api-Key: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b", "9f86d081884c7d65"),
            ("auth_token = Qm9yZWRUb2tlbjEyMzQ1Njc4OTBhYmNkZWY", "Qm9yZWRUb2tlbjEy"),
            ("AIzaSyA1234567890abcdefghijklmnopqrstuv here", "AIzaSyA1234567890"),
            ("stripe sk_live_4eC39HqLyjWDarjtT1zdp7dc", "sk_live_4eC39"),
        ];
        for (text, secret) in cases {
            let out = redact(text);
            assert!(!out.contains(secret), "{text:?} -> {out:?}");
            assert!(out.contains("[REDACTED:"), "{text:?} -> {out:?}");
        }
        // What surrounds a secret survives.
        assert_eq!(
            redact("DATABASE_URL=postgres://app:hunter2@db:5432/app"),
            "DATABASE_URL=postgres://app:[REDACTED:password]@db:5432/app"
        );
        assert_eq!(
            redact("-----BEGIN PRIVATE KEY-----\nAAA\n-----END PRIVATE KEY-----\nafter"),
            "[REDACTED:private_key]\nafter"
        );
        assert_eq!(
            redact("password=hunter2 next"),
            "password=[REDACTED:password] next"
        );
    }

    /// Ordinary development text passes through untouched (borrowed, not copied).
    #[test]
    fn leaves_ordinary_text_alone() {
        let cases = [
            "fix the task-list rendering in src/sk-widget.rs",
            "commit 3f786850e387550fdab836ed7e6dc881de23001b merged",
            "the password field is required; show an error",
            "tokens: 512, max_tokens = 2048",
            "key = \"editor.fontSize\"",
            "uuid 0190a5b2-7c3e-7d4e-8f00-123456789abc",
            "Bearer of bad news",
            "cargo test -p steward-models --test records",
            "https://github.com/rust-lang/rust/issues/12345",
            "let auth = AuthConfig::default();",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 (no key word)",
            "AKIA is a prefix, not a key",
            "The primary_key column and the sort key",
        ];
        for text in cases {
            assert!(
                matches!(redact(text), Cow::Borrowed(_)),
                "{text:?} -> {:?}",
                redact(text)
            );
            assert!(!contains_secret(text));
        }
    }

    #[test]
    fn redaction_is_idempotent() {
        let text = "password=hunter2 Bearer abcdefgh12345678 sk-ant-api03-AbCdEfGhIjKlMnOpQrStUv";
        let once = redact(text).into_owned();
        assert_eq!(redact(&once), once);
    }
}
