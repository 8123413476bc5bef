//! Bearer tokens: compact JWS (RFC 7515) with EdDSA (Ed25519), or HS256 with a >= 256-bit
//! secret in a key set marked development.
//!
//! The verifier picks the key by the header's `kid` and takes the algorithm **from that key**:
//! a token whose header names another algorithm (`none`, `HS256` for an Ed25519 key, ...) is
//! refused before any signature check. Required claims: `exp`, `iss`, `aud`, `sub`, `tid`; the
//! tenant comes from `tid` only; roles from `roles` (a list of strings).
//!
//! Written by hand over `ed25519-dalek` and `hmac` instead of `jsonwebtoken`: its only
//! pure-Rust backend pulls in RSA and NIST curves we never use (and `rsa`'s open timing
//! advisory), and the other needs a C build (aws-lc). Two algorithms, fixed per key, are a
//! few dozen lines that can be read in one sitting.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::Signer as _;
use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use uuid::Uuid;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Shortest HS256 secret (256 bits).
pub const MIN_HS256_SECRET_BYTES: usize = 32;
/// Longest token accepted (bytes); anything longer is refused before parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// A key or key-file problem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// A key file could not be read.
    #[error("cannot read key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A key file is not a PKCS#8 / SPKI Ed25519 PEM.
    #[error("key file {path} is not an Ed25519 PKCS#8 or public-key PEM: {message}")]
    Pem {
        /// The file (empty when parsing a string).
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// A key that is not allowed here (an HS256 secret outside development, too short, ...).
    #[error("{0}")]
    Refused(String),
    /// The OS random source failed.
    #[error("OS random source failed: {0}")]
    Random(String),
}

/// Why a bearer token was refused. Every variant answers 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not three base64url parts, or a part that does not decode.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The header has no `kid`, or names a key not in the key set.
    #[error("unknown signing key")]
    UnknownKey,
    /// The header's `alg` is not the algorithm of the key it names.
    #[error("algorithm {0:?} is not the key's algorithm")]
    WrongAlgorithm(String),
    /// The header lists critical extensions, which are not supported.
    #[error("unsupported critical header")]
    Critical,
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// A required claim is missing or has the wrong type.
    #[error("missing or invalid claim `{0}`")]
    Claim(&'static str),
    /// `exp` has passed.
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token not valid yet")]
    NotYetValid,
    /// `iss` is not the configured issuer.
    #[error("wrong issuer")]
    WrongIssuer,
    /// `aud` does not contain the configured audience.
    #[error("wrong audience")]
    WrongAudience,
}

/// The algorithm of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Ed25519 (RFC 8037).
    EdDSA,
    /// HMAC-SHA-256, development only.
    HS256,
}

impl Algorithm {
    /// The JOSE name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::EdDSA => "EdDSA",
            Algorithm::HS256 => "HS256",
        }
    }
}

fn random_bytes<const N: usize>() -> Result<[u8; N], KeyError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(b)
}

fn kid_of(public: &ed25519_dalek::VerifyingKey) -> String {
    let digest = sha2::Sha256::digest(public.as_bytes());
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("ed25519-{hex}")
}

/// An Ed25519 private key that signs access tokens. Its `kid` is derived from the public key
/// (`ed25519-` and 16 hex digits of its SHA-256), so the same key always has the same `kid`.
#[derive(Clone)]
pub struct SigningKey {
    key: ed25519_dalek::SigningKey,
    kid: String,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A new key from the OS random source.
    ///
    /// # Errors
    /// [`KeyError::Random`] if the OS random source fails.
    pub fn generate() -> Result<SigningKey, KeyError> {
        let seed = random_bytes::<32>()?;
        Ok(SigningKey::from_seed(&seed))
    }

    /// The key with this 32-byte seed (tests, and keys kept elsewhere).
    #[must_use]
    pub fn from_seed(seed: &[u8; 32]) -> SigningKey {
        let key = ed25519_dalek::SigningKey::from_bytes(seed);
        let kid = kid_of(&key.verifying_key());
        SigningKey { key, kid }
    }

    /// Reads a PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    ///
    /// # Errors
    /// [`KeyError::Pem`] if it is not an Ed25519 PKCS#8 PEM.
    pub fn from_pem(pem: &str) -> Result<SigningKey, KeyError> {
        let key = ed25519_dalek::SigningKey::from_pkcs8_pem(pem).map_err(|e| KeyError::Pem {
            path: PathBuf::new(),
            message: e.to_string(),
        })?;
        let kid = kid_of(&key.verifying_key());
        Ok(SigningKey { key, kid })
    }

    /// The key as a PKCS#8 PEM (keep it secret: write it with mode 0600).
    ///
    /// # Errors
    /// [`KeyError::Pem`] if encoding fails.
    pub fn to_pem(&self) -> Result<String, KeyError> {
        self.key
            .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .map(|z| z.to_string())
            .map_err(|e| KeyError::Pem {
                path: PathBuf::new(),
                message: e.to_string(),
            })
    }

    /// The public key as an SPKI PEM (`-----BEGIN PUBLIC KEY-----`), for `<kid>.pem` in a key
    /// directory.
    ///
    /// # Errors
    /// [`KeyError::Pem`] if encoding fails.
    pub fn public_pem(&self) -> Result<String, KeyError> {
        self.key
            .verifying_key()
            .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .map_err(|e| KeyError::Pem {
                path: PathBuf::new(),
                message: e.to_string(),
            })
    }

    /// The key id put in every token's header.
    #[must_use]
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The key that verifies this key's signatures.
    #[must_use]
    pub fn verification_key(&self) -> VerificationKey {
        VerificationKey::Ed25519(self.key.verifying_key())
    }
}

/// An HS256 secret (development only), at least [`MIN_HS256_SECRET_BYTES`] bytes.
#[derive(Clone)]
pub struct Hs256Secret {
    kid: String,
    secret: Vec<u8>,
}

impl fmt::Debug for Hs256Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hs256Secret")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl Hs256Secret {
    /// A secret under `kid`.
    ///
    /// # Errors
    /// [`KeyError::Refused`] if it is shorter than 256 bits or `kid` is empty.
    pub fn new(kid: impl Into<String>, secret: impl Into<Vec<u8>>) -> Result<Self, KeyError> {
        let (kid, secret) = (kid.into(), secret.into());
        if secret.len() < MIN_HS256_SECRET_BYTES {
            return Err(KeyError::Refused(format!(
                "an HS256 secret must be at least {MIN_HS256_SECRET_BYTES} bytes (got {})",
                secret.len()
            )));
        }
        if kid.is_empty() {
            return Err(KeyError::Refused("a key id must not be empty".into()));
        }
        Ok(Hs256Secret { kid, secret })
    }

    /// The key id.
    #[must_use]
    pub fn kid(&self) -> &str {
        &self.kid
    }
}

/// A key that verifies tokens; its algorithm is fixed by its type.
#[derive(Clone, PartialEq, Eq)]
pub enum VerificationKey {
    /// An Ed25519 public key (EdDSA).
    Ed25519(ed25519_dalek::VerifyingKey),
    /// An HS256 secret (only in a development key set).
    Hs256(Vec<u8>),
}

impl fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VerificationKey::Ed25519(k) => write!(f, "Ed25519({})", kid_of(k)),
            VerificationKey::Hs256(_) => f.write_str("Hs256(<redacted>)"),
        }
    }
}

impl VerificationKey {
    /// The only algorithm this key verifies.
    #[must_use]
    pub fn algorithm(&self) -> Algorithm {
        match self {
            VerificationKey::Ed25519(_) => Algorithm::EdDSA,
            VerificationKey::Hs256(_) => Algorithm::HS256,
        }
    }

    /// Reads an SPKI public-key PEM, or the public half of a PKCS#8 private-key PEM.
    ///
    /// # Errors
    /// [`KeyError::Pem`].
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        if let Ok(k) = ed25519_dalek::VerifyingKey::from_public_key_pem(pem) {
            return Ok(VerificationKey::Ed25519(k));
        }
        SigningKey::from_pem(pem).map(|k| k.verification_key())
    }
}

/// The keys tokens are verified with, by `kid`. Two (or more) may be valid at once, so a key can
/// be rotated: add the new key, start signing with it, remove the old one after the longest
/// token lifetime.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: BTreeMap<String, VerificationKey>,
    development: bool,
}

impl KeySet {
    /// An empty production key set (Ed25519 only).
    #[must_use]
    pub fn new() -> Self {
        KeySet::default()
    }

    /// An empty development key set: HS256 secrets are allowed too.
    #[must_use]
    pub fn development() -> Self {
        KeySet {
            keys: BTreeMap::new(),
            development: true,
        }
    }

    /// A production key set with this key's public half.
    #[must_use]
    pub fn single(key: &SigningKey) -> Self {
        let mut set = KeySet::new();
        set.keys.insert(key.kid.clone(), key.verification_key());
        set
    }

    /// Every `<kid>.pem` in `dir` (public-key PEMs, or private-key PEMs whose public half is
    /// used); the file stem is the `kid`. Other files are ignored.
    ///
    /// # Errors
    /// [`KeyError::Io`] or [`KeyError::Pem`] naming the file; [`KeyError::Refused`] if the
    /// directory holds no key.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self, KeyError> {
        let dir = dir.as_ref();
        let io = |path: &Path, source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut set = KeySet::new();
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "pem"))
            .collect();
        paths.sort();
        for path in paths {
            let Some(kid) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            let pem = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
            let key = VerificationKey::from_pem(&pem).map_err(|e| KeyError::Pem {
                path: path.clone(),
                message: match e {
                    KeyError::Pem { message, .. } => message,
                    other => other.to_string(),
                },
            })?;
            set.keys.insert(kid.to_string(), key);
        }
        if set.keys.is_empty() {
            return Err(KeyError::Refused(format!(
                "no <kid>.pem key in {}",
                dir.display()
            )));
        }
        Ok(set)
    }

    /// Adds (or replaces) a key under `kid`.
    ///
    /// # Errors
    /// [`KeyError::Refused`] for an HS256 key in a production set, a short secret, or an empty
    /// `kid`.
    pub fn insert(&mut self, kid: impl Into<String>, key: VerificationKey) -> Result<(), KeyError> {
        let kid = kid.into();
        if kid.is_empty() {
            return Err(KeyError::Refused("a key id must not be empty".into()));
        }
        if let VerificationKey::Hs256(secret) = &key {
            if !self.development {
                return Err(KeyError::Refused(
                    "HS256 keys are allowed only in a development key set".into(),
                ));
            }
            if secret.len() < MIN_HS256_SECRET_BYTES {
                return Err(KeyError::Refused(format!(
                    "an HS256 secret must be at least {MIN_HS256_SECRET_BYTES} bytes"
                )));
            }
        }
        self.keys.insert(kid, key);
        Ok(())
    }

    /// Adds an HS256 secret.
    ///
    /// # Errors
    /// As [`KeySet::insert`].
    pub fn insert_hs256(&mut self, secret: &Hs256Secret) -> Result<(), KeyError> {
        self.insert(
            secret.kid.clone(),
            VerificationKey::Hs256(secret.secret.clone()),
        )
    }

    /// Removes a key; true if it was there.
    pub fn remove(&mut self, kid: &str) -> bool {
        self.keys.remove(kid).is_some()
    }

    /// Whether HS256 keys are allowed.
    #[must_use]
    pub fn is_development(&self) -> bool {
        self.development
    }

    /// The key ids.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// Whether there is no key.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Verifies a compact JWS and its claims at `now_secs` (Unix seconds), allowing `leeway`
    /// of clock skew on `exp` and `nbf`.
    ///
    /// # Errors
    /// A [`TokenError`] naming the first problem found.
    pub fn verify(
        &self,
        token: &str,
        now_secs: i64,
        expect: &Expectations<'_>,
    ) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed("too long"));
        }
        let mut parts = token.split('.');
        let (Some(h64), Some(p64), Some(s64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed("not three parts"));
        };
        let header_bytes = b64(h64)?;
        let header: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&header_bytes)
                .map_err(|_| TokenError::Malformed("header is not a JSON object"))?;
        if header.contains_key("crit") {
            return Err(TokenError::Critical);
        }
        let kid = header
            .get("kid")
            .and_then(|v| v.as_str())
            .ok_or(TokenError::UnknownKey)?;
        let key = self.keys.get(kid).ok_or(TokenError::UnknownKey)?;
        let alg = header.get("alg").and_then(|v| v.as_str()).unwrap_or("");
        if alg != key.algorithm().as_str() {
            return Err(TokenError::WrongAlgorithm(alg.to_string()));
        }
        let signature = b64(s64)?;
        let signed = &token.as_bytes()[..h64.len() + 1 + p64.len()];
        match key {
            VerificationKey::Ed25519(k) => {
                let sig = ed25519_dalek::Signature::from_slice(&signature)
                    .map_err(|_| TokenError::BadSignature)?;
                k.verify_strict(signed, &sig)
                    .map_err(|_| TokenError::BadSignature)?;
            }
            VerificationKey::Hs256(secret) => {
                let mut mac = <HmacSha256 as KeyInit>::new_from_slice(secret)
                    .map_err(|_| TokenError::BadSignature)?;
                mac.update(signed);
                mac.verify_slice(&signature)
                    .map_err(|_| TokenError::BadSignature)?;
            }
        }
        let payload = b64(p64)?;
        let claims: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&payload)
                .map_err(|_| TokenError::Malformed("payload is not a JSON object"))?;
        Claims::check(&claims, now_secs, expect)
    }
}

fn b64(s: &str) -> Result<Vec<u8>, TokenError> {
    URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| TokenError::Malformed("a part is not base64url"))
}

/// What a token must say besides its signature.
#[derive(Debug, Clone, Copy)]
pub struct Expectations<'a> {
    /// The `iss` it must carry.
    pub issuer: &'a str,
    /// A value its `aud` must be or contain.
    pub audience: &'a str,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
}

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// Subject: the user id (or a service name for tokens minted by `steward token`).
    pub sub: String,
    /// The tenant: the only source of the caller's tenant.
    pub tid: Uuid,
    /// Expiry, Unix seconds.
    pub exp: i64,
    /// Issued at, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    /// Not before, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// Roles (`owner`, `admin`, `member`, `agent`; `operator` in the system tenant).
    #[serde(default)]
    pub roles: Vec<String>,
}

impl Claims {
    /// Claims for `sub` in tenant `tid`, issued at `now_secs` and valid for `ttl`.
    #[must_use]
    pub fn new(
        issuer: &str,
        audience: &str,
        sub: impl Into<String>,
        tid: Uuid,
        roles: Vec<String>,
        now_secs: i64,
        ttl: Duration,
    ) -> Self {
        let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        Claims {
            iss: issuer.to_string(),
            aud: audience.to_string(),
            sub: sub.into(),
            tid,
            exp: now_secs.saturating_add(ttl),
            iat: Some(now_secs),
            nbf: None,
            roles,
        }
    }

    fn check(
        c: &serde_json::Map<String, serde_json::Value>,
        now: i64,
        expect: &Expectations<'_>,
    ) -> Result<Claims, TokenError> {
        let leeway = i64::try_from(expect.leeway.as_secs()).unwrap_or(0);
        let int = |name: &'static str| -> Result<Option<i64>, TokenError> {
            match c.get(name) {
                None => Ok(None),
                Some(v) => v
                    .as_i64()
                    .or_else(|| v.as_f64().map(|f| f as i64))
                    .map(Some)
                    .ok_or(TokenError::Claim(name)),
            }
        };
        let string = |name: &'static str| -> Result<String, TokenError> {
            c.get(name)
                .and_then(|v| v.as_str())
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .ok_or(TokenError::Claim(name))
        };
        let exp = int("exp")?.ok_or(TokenError::Claim("exp"))?;
        if now >= exp.saturating_add(leeway) {
            return Err(TokenError::Expired);
        }
        let nbf = int("nbf")?;
        if nbf.is_some_and(|nbf| now.saturating_add(leeway) < nbf) {
            return Err(TokenError::NotYetValid);
        }
        let iat = int("iat")?;
        let iss = string("iss")?;
        if iss != expect.issuer {
            return Err(TokenError::WrongIssuer);
        }
        let aud_ok = match c.get("aud") {
            Some(serde_json::Value::String(a)) => a == expect.audience,
            Some(serde_json::Value::Array(list)) => {
                list.iter().any(|a| a.as_str() == Some(expect.audience))
            }
            _ => return Err(TokenError::Claim("aud")),
        };
        if !aud_ok {
            return Err(TokenError::WrongAudience);
        }
        let sub = string("sub")?;
        let tid = c
            .get("tid")
            .and_then(|v| v.as_str())
            .and_then(|s| Uuid::try_parse(s).ok())
            .ok_or(TokenError::Claim("tid"))?;
        let roles = match c.get("roles") {
            None => Vec::new(),
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .map(|r| r.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or(TokenError::Claim("roles"))?,
            Some(_) => return Err(TokenError::Claim("roles")),
        };
        Ok(Claims {
            iss,
            aud: expect.audience.to_string(),
            sub,
            tid,
            exp,
            iat,
            nbf,
            roles,
        })
    }
}

fn compact(header: &serde_json::Value, claims: &Claims) -> Result<String, KeyError> {
    let h = serde_json::to_vec(header).map_err(|e| KeyError::Refused(e.to_string()))?;
    let p = serde_json::to_vec(claims).map_err(|e| KeyError::Refused(e.to_string()))?;
    Ok(format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(h),
        URL_SAFE_NO_PAD.encode(p)
    ))
}

/// Signs `claims` with an Ed25519 key (`alg: EdDSA`, `kid` of the key).
///
/// # Errors
/// [`KeyError::Refused`] if the claims cannot be encoded (not expected for [`Claims`]).
pub fn mint_token(key: &SigningKey, claims: &Claims) -> Result<String, KeyError> {
    let header = serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": key.kid});
    let signing_input = compact(&header, claims)?;
    let sig = key.key.sign(signing_input.as_bytes());
    Ok(format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(sig.to_bytes())
    ))
}

/// Signs `claims` with an HS256 secret (development key sets only accept it).
///
/// # Errors
/// As [`mint_token`].
pub fn mint_token_hs256(secret: &Hs256Secret, claims: &Claims) -> Result<String, KeyError> {
    let header = serde_json::json!({"alg": "HS256", "typ": "JWT", "kid": secret.kid});
    let signing_input = compact(&header, claims)?;
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(&secret.secret)
        .map_err(|e| KeyError::Refused(e.to_string()))?;
    mac.update(signing_input.as_bytes());
    Ok(format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expect() -> Expectations<'static> {
        Expectations {
            issuer: "steward",
            audience: "steward-api",
            leeway: Duration::from_secs(0),
        }
    }

    #[test]
    fn ed25519_round_trip_and_pem() {
        let key = SigningKey::from_seed(&[7; 32]);
        let again = SigningKey::from_pem(&key.to_pem().unwrap()).unwrap();
        assert_eq!(again.kid(), key.kid());
        let public = VerificationKey::from_pem(&key.public_pem().unwrap()).unwrap();
        assert_eq!(public, key.verification_key());
        let tid = Uuid::now_v7();
        let claims = Claims::new(
            "steward",
            "steward-api",
            "u1",
            tid,
            vec!["admin".into()],
            1000,
            Duration::from_secs(60),
        );
        let token = mint_token(&key, &claims).unwrap();
        let got = KeySet::single(&key)
            .verify(&token, 1001, &expect())
            .unwrap();
        assert_eq!(got.tid, tid);
        assert_eq!(got.roles, vec!["admin".to_string()]);
        assert_eq!(
            KeySet::single(&key).verify(&token, 1060, &expect()),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn hs256_only_in_development() {
        let secret = Hs256Secret::new("dev", vec![1u8; 32]).unwrap();
        assert!(KeySet::new().insert_hs256(&secret).is_err());
        assert!(Hs256Secret::new("dev", vec![1u8; 31]).is_err());
        let mut dev = KeySet::development();
        dev.insert_hs256(&secret).unwrap();
        let claims = Claims::new(
            "steward",
            "steward-api",
            "u",
            Uuid::nil(),
            vec![],
            0,
            Duration::from_secs(60),
        );
        let token = mint_token_hs256(&secret, &claims).unwrap();
        assert!(dev.verify(&token, 1, &expect()).is_ok());
    }
}
