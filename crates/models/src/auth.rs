//! [`AuthSession`]: a login as a refresh-token family, with rotation and reuse detection after
//! RFC 9700 (OAuth 2.0 Security BCP) §4.14.
//!
//! # The rules, precisely
//! - **One family per login** ([`AuthSessions::login`]): a fixed absolute expiry
//!   (`auth.absolute_ttl` from the login) and a sliding idle expiry (`auth.idle_ttl` from the
//!   last refresh, never past the absolute one). Time is the store's injected clock.
//! - **Tokens** are `stw1.<tenant>.<family>.<generation>.<secret>` with a 32-byte secret from the
//!   OS CSPRNG. Only `HMAC-SHA-256(auth.token_key, tenant ‖ family ‖ generation ‖ secret)` is
//!   stored, with the generation and its parent; the secret exists only in the client's hands.
//! - **Rotation**: presenting the current, unused token marks it used and issues generation
//!   `n + 1` (parent `n`).
//! - **Grace**: within `auth.grace` (default 10 s) after a token was rotated, that token (the
//!   *immediately previous* one: its child is still the current token, unused) is accepted
//!   **once** more, for a client whose refresh response was lost. It issues a new current token
//!   (parent: the replayed token) and marks the token it replaces as *superseded*.
//! - **Reuse**: any other presentation of a genuine token (the HMAC matches) that is used,
//!   superseded, older than the previous one, replayed a second time or outside the grace
//!   window revokes the whole family ([`RefreshRejection::ReuseDetected`]), so the attacker's
//!   and the victim's tokens die together. A token whose HMAC does not match is refused as
//!   [`RefreshRejection::Invalid`] and revokes nothing (it proves nothing about the family).
//! - Expired or revoked families refuse every token ([`RefreshRejection::Expired`],
//!   [`RefreshRejection::Revoked`]). A password change, disabling or deleting the user revokes
//!   all of the user's families in the same transaction.
//! - Two refreshes racing on one family conflict on the family record: the loser's retry sees
//!   the rotation and follows the grace or reuse rule.
//!
//! # Expiry and deletion ([`AuthSessions::expire`], the `expire_auth_tokens` job)
//! - A family past its absolute or idle expiry is **marked** expired (`expired_at` = the
//!   moment it expired: a state change, nothing deleted), so lists and audits show it ended.
//! - A family that is expired or revoked is **deleted** (record, tokens, indexes) once
//!   `auth.retention_tail` (default 30 days) has passed since it ended. Until then a late token
//!   of it is still answered `Expired` or `Revoked`.
//! - An active family is never touched: the used tokens it keeps are what reuse detection
//!   compares against, so deleting them would let a stolen old token pass as merely invalid.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use steward_store::{key_after, RangeOption, Transaction};
use uuid::Uuid;

use crate::audit::NewAuditEvent;
use crate::codec::{check_len, decode, encode, hex, os_random, unhex, MAX_INLINE_VALUE};
use crate::error::{Error, RefreshRejection, Result};
use crate::keys::TenantKeys;
use crate::user::require_active_user;
use crate::{check_limit, Models, MAX_PAGE};

/// The version prefix of refresh tokens.
pub const TOKEN_PREFIX: &str = "stw1";
/// Longest client label (device, user agent), in bytes.
pub const MAX_CLIENT_BYTES: usize = 256;
/// The action of the audit event one [`AuthSessions::expire`] run appends.
pub const TOKENS_EXPIRED_ACTION: &str = "auth.tokens_expired";
const SECRET_BYTES: usize = 32;
const MAC_DOMAIN: &[u8] = b"steward.refresh.v1\0";

type HmacSha256 = Hmac<Sha256>;

/// Why a family was revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RevokeReason {
    /// The user logged out.
    Logout,
    /// A used token was presented again.
    ReuseDetected,
    /// The user's password changed.
    PasswordChanged,
    /// The user was disabled.
    UserDisabled,
    /// The user was deleted.
    UserDeleted,
    /// An administrator revoked it.
    Admin,
}

/// A login: one refresh-token family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthSession {
    /// The family id (UUIDv7).
    pub id: Uuid,
    /// The tenant.
    pub tenant_id: Uuid,
    /// The user who logged in.
    pub user_id: Uuid,
    /// The client's label (device, user agent).
    pub client: String,
    /// µs since the epoch.
    pub created_at: i64,
    /// Fixed at login: no refresh extends it.
    pub absolute_expires_at: i64,
    /// Slides with each refresh, never past `absolute_expires_at`.
    pub idle_expires_at: i64,
    /// Last login or refresh.
    pub last_used_at: i64,
    /// The generation of the one token that may be rotated now.
    pub current_generation: u32,
    /// When it was revoked, if it was.
    pub revoked_at: Option<i64>,
    /// Why it was revoked.
    pub revoke_reason: Option<RevokeReason>,
    /// When it expired (the earlier of its two expiries), once the expiry job marked it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expired_at: Option<i64>,
}

/// Where a family is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthSessionState {
    /// Its current token can be refreshed.
    Active,
    /// Past its absolute or idle expiry (marked or not yet).
    Expired,
    /// Revoked (logout, reuse, password change, ...).
    Revoked,
}

impl AuthSession {
    /// The earlier of the absolute and the idle expiry.
    #[must_use]
    pub fn expires_at(&self) -> i64 {
        self.absolute_expires_at.min(self.idle_expires_at)
    }

    /// Not revoked, not marked expired, and neither expiry passed at `now`.
    #[must_use]
    pub fn is_active(&self, now: i64) -> bool {
        self.state(now) == AuthSessionState::Active
    }

    /// The state at `now` (revoked wins over expired).
    #[must_use]
    pub fn state(&self, now: i64) -> AuthSessionState {
        if self.revoked_at.is_some() {
            AuthSessionState::Revoked
        } else if self.expired_at.is_some() || now >= self.expires_at() {
            AuthSessionState::Expired
        } else {
            AuthSessionState::Active
        }
    }

    /// When it stopped being active (revoked or expired, whichever came first), if it has by
    /// `now`.
    #[must_use]
    pub fn ended_at(&self, now: i64) -> Option<i64> {
        let expired = self
            .expired_at
            .or_else(|| (now >= self.expires_at()).then(|| self.expires_at()));
        match (self.revoked_at, expired) {
            (Some(r), Some(e)) => Some(r.min(e)),
            (r, e) => r.or(e),
        }
    }
}

/// What one [`AuthSessions::expire_batch`] transaction did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExpireBatch {
    /// Families looked at.
    pub scanned: usize,
    /// Families marked expired.
    pub marked_expired: usize,
    /// Families deleted (expired or revoked, past the retention tail).
    pub deleted: usize,
    /// Pass as `after` to go on; `None`: every family was looked at.
    pub next: Option<Uuid>,
}

/// What a whole expiry run over a tenant did ([`AuthSessions::expire`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExpireStats {
    /// Transactions it took.
    pub batches: usize,
    /// Families looked at.
    pub scanned: usize,
    /// Families marked expired.
    pub marked_expired: usize,
    /// Families deleted.
    pub deleted: usize,
    /// The `auth.tokens_expired` audit event recording the run, once appended.
    pub audit_event: Option<Uuid>,
}

impl ExpireStats {
    /// Adds one batch's counts.
    pub fn add(&mut self, batch: &ExpireBatch) {
        self.batches += 1;
        self.scanned += batch.scanned;
        self.marked_expired += batch.marked_expired;
        self.deleted += batch.deleted;
    }
}

/// What the expiry job does to one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExpiryAction {
    Keep,
    MarkExpired,
    Delete,
}

fn expiry_action(fam: &AuthSession, now: i64, tail: i64) -> ExpiryAction {
    match fam.ended_at(now) {
        None => ExpiryAction::Keep,
        Some(ended) if now.saturating_sub(ended) >= tail => ExpiryAction::Delete,
        Some(_) if fam.revoked_at.is_none() && fam.expired_at.is_none() => {
            ExpiryAction::MarkExpired
        }
        Some(_) => ExpiryAction::Keep,
    }
}

/// What an expiry transaction attempt changed, for a retry after `commit_unknown_result`.
#[derive(Debug, Clone, Default)]
struct ExpiryAttempt {
    /// The last family it looked at.
    last: Option<Uuid>,
    /// It looked at every family up to the end.
    reached_end: bool,
    marked: Vec<Uuid>,
    deleted: Vec<Uuid>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct TokenRecord {
    generation: u32,
    parent: Option<u32>,
    /// Hex HMAC-SHA-256 of the secret; never the secret.
    mac: String,
    issued_at: i64,
    used_at: Option<i64>,
    grace_used: bool,
    superseded: bool,
}

/// A refresh token as handed to a client. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct RefreshToken(String);

impl RefreshToken {
    /// The token string to send to the client (and nowhere else: not to logs).
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The tenant a token string names, so the API can route a refresh without a lookup.
    /// `None` if it is not a token of this format.
    #[must_use]
    pub fn tenant_of(token: &str) -> Option<Uuid> {
        parse_token(token).map(|p| p.tenant)
    }
}

impl fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RefreshToken(<redacted>)")
    }
}

/// A token just issued, with its family as it now is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedToken {
    /// Give this to the client.
    pub token: RefreshToken,
    /// The family.
    pub session: AuthSession,
}

struct ParsedToken {
    tenant: Uuid,
    family: Uuid,
    generation: u32,
    secret: Vec<u8>,
}

fn parse_token(token: &str) -> Option<ParsedToken> {
    let mut parts = token.trim().split('.');
    if parts.next()? != TOKEN_PREFIX {
        return None;
    }
    let tenant = Uuid::try_parse(parts.next()?).ok()?;
    let family = Uuid::try_parse(parts.next()?).ok()?;
    let generation = parts.next()?.parse().ok()?;
    let secret = unhex(parts.next()?)?;
    if parts.next().is_some() || secret.len() != SECRET_BYTES {
        return None;
    }
    Some(ParsedToken {
        tenant,
        family,
        generation,
        secret,
    })
}

fn format_token(tenant: Uuid, family: Uuid, generation: u32, secret: &[u8]) -> RefreshToken {
    RefreshToken(format!(
        "{TOKEN_PREFIX}.{}.{}.{generation}.{}",
        tenant.simple(),
        family.simple(),
        hex(secret)
    ))
}

fn token_mac(
    key: &[u8],
    tenant: Uuid,
    family: Uuid,
    generation: u32,
    secret: &[u8],
) -> Result<HmacSha256> {
    let mut m = <HmacSha256 as KeyInit>::new_from_slice(key)
        .map_err(|e| Error::Crypto(format!("hmac key: {e}")))?;
    m.update(MAC_DOMAIN);
    m.update(tenant.as_bytes());
    m.update(family.as_bytes());
    m.update(&generation.to_be_bytes());
    m.update(secret);
    Ok(m)
}

/// Constant-time check of a secret against a stored hex MAC.
fn mac_matches(
    key: &[u8],
    tenant: Uuid,
    family: Uuid,
    generation: u32,
    secret: &[u8],
    stored_hex: &str,
) -> Result<bool> {
    let Some(stored) = unhex(stored_hex) else {
        return Ok(false);
    };
    Ok(token_mac(key, tenant, family, generation, secret)?
        .verify_slice(&stored)
        .is_ok())
}

fn mac_hex(
    key: &[u8],
    tenant: Uuid,
    family: Uuid,
    generation: u32,
    secret: &[u8],
) -> Result<String> {
    Ok(hex(&token_mac(key, tenant, family, generation, secret)?
        .finalize()
        .into_bytes()))
}

fn micros(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

enum RefreshOutcome {
    Issued(AuthSession),
    Rejected(RefreshRejection),
}

/// The auth sessions repository.
#[derive(Debug, Clone, Copy)]
pub struct AuthSessions<'a> {
    m: &'a Models,
}

impl<'a> AuthSessions<'a> {
    pub(crate) fn new(m: &'a Models) -> Self {
        AuthSessions { m }
    }

    fn key(&self) -> &[u8] {
        self.m.config().auth.token_key.bytes()
    }

    /// Starts a login for an existing, enabled user (whose password, SSO assertion or other
    /// proof the caller has checked): a new family with generation 1.
    ///
    /// # Errors
    /// [`Error::NotFound`] for the user; [`Error::Invalid`] (`client`, or a disabled user);
    /// store and crypto errors.
    pub async fn login(&self, tenant: Uuid, user: Uuid, client: &str) -> Result<IssuedToken> {
        check_len("client", client, MAX_CLIENT_BYTES, false)?;
        let mut secret = [0u8; SECRET_BYTES];
        os_random(&mut secret)?;
        let now = self.m.now();
        let cfg = &self.m.config().auth;
        let family = self.m.new_id();
        let session = AuthSession {
            id: family,
            tenant_id: tenant,
            user_id: user,
            client: client.to_owned(),
            created_at: now,
            absolute_expires_at: now.saturating_add(micros(cfg.absolute_ttl)),
            idle_expires_at: now.saturating_add(micros(cfg.idle_ttl.min(cfg.absolute_ttl))),
            last_used_at: now,
            current_generation: 1,
            revoked_at: None,
            revoke_reason: None,
            expired_at: None,
        };
        let record = TokenRecord {
            generation: 1,
            parent: None,
            mac: mac_hex(self.key(), tenant, family, 1, &secret)?,
            issued_at: now,
            used_at: None,
            grace_used: false,
            superseded: false,
        };
        let keys = TenantKeys::new(tenant);
        let (keys, session, record) = (&keys, &session, &record);
        self.m
            .db()
            .transact(|tx, maybe_committed| async move {
                if maybe_committed.0 && tx.get(&keys.auth_family(family), false).await?.is_some() {
                    return Ok::<_, Error>(());
                }
                require_active_user(&tx, keys, user).await?;
                write_family(&tx, keys, session)?;
                tx.set(
                    &keys.auth_token(family, 1),
                    &encode("auth_token", record, MAX_INLINE_VALUE)?,
                );
                tx.set(&keys.auth_by_user(user, family), b"");
                tx.set(
                    &keys.auth_by_expiry(session.absolute_expires_at, family),
                    b"",
                );
                Ok(())
            })
            .await?;
        Ok(IssuedToken {
            token: format_token(tenant, family, 1, &secret),
            session: session.clone(),
        })
    }

    /// Rotates a refresh token under the rules in the module doc.
    ///
    /// # Errors
    /// [`Error::RefreshRejected`] with the reason (after committing the family's revocation
    /// when reuse was detected); store and crypto errors.
    pub async fn refresh(&self, tenant: Uuid, token: &str) -> Result<IssuedToken> {
        let invalid = Error::RefreshRejected(RefreshRejection::Invalid);
        let Some(parsed) = parse_token(token) else {
            return Err(invalid);
        };
        if parsed.tenant != tenant {
            return Err(invalid);
        }
        let mut new_secret = [0u8; SECRET_BYTES];
        os_random(&mut new_secret)?;
        let now = self.m.now();
        let cfg = &self.m.config().auth;
        let (grace, idle) = (micros(cfg.grace), micros(cfg.idle_ttl));
        let key = self.key();
        let keys = TenantKeys::new(tenant);
        let (keys, parsed, new_secret) = (&keys, &parsed, &new_secret);
        let family = parsed.family;
        let outcome = self
            .m
            .db()
            .transact(|tx, maybe_committed| async move {
                let reject = |r| Ok::<_, Error>(RefreshOutcome::Rejected(r));
                let Some(mut fam) = read_family(&tx, keys, family).await? else {
                    return reject(RefreshRejection::Invalid);
                };
                let Some(mut rec) = read_token(&tx, keys, family, parsed.generation).await? else {
                    return reject(RefreshRejection::Invalid);
                };
                if !mac_matches(
                    key,
                    tenant,
                    family,
                    rec.generation,
                    &parsed.secret,
                    &rec.mac,
                )? {
                    return reject(RefreshRejection::Invalid);
                }
                let current = fam.current_generation;
                if maybe_committed.0 {
                    // Our earlier attempt may have committed: then the current token is ours.
                    if let Some(cur) = read_token(&tx, keys, family, current).await? {
                        if cur.parent == Some(rec.generation)
                            && mac_matches(key, tenant, family, current, new_secret, &cur.mac)?
                        {
                            return Ok(RefreshOutcome::Issued(fam));
                        }
                    }
                }
                if maybe_committed.0
                    && fam.revoked_at == Some(now)
                    && fam.revoke_reason == Some(RevokeReason::ReuseDetected)
                {
                    // Our earlier attempt detected the reuse and revoked the family (`now` is
                    // fixed before the retry loop): give the answer that attempt gave.
                    return reject(RefreshRejection::ReuseDetected);
                }
                if fam.revoked_at.is_some() {
                    return reject(RefreshRejection::Revoked);
                }
                if fam.expired_at.is_some()
                    || now >= fam.absolute_expires_at
                    || now >= fam.idle_expires_at
                {
                    return reject(RefreshRejection::Expired);
                }
                let fresh = rec.generation == current && rec.used_at.is_none() && !rec.superseded;
                let in_grace = grace > 0
                    && rec.generation.checked_add(1) == Some(current)
                    && !rec.grace_used
                    && !rec.superseded
                    && rec
                        .used_at
                        .is_some_and(|used| now.saturating_sub(used) <= grace);
                if fresh {
                    rec.used_at = Some(now);
                } else if in_grace {
                    rec.grace_used = true;
                    if let Some(mut replaced) = read_token(&tx, keys, family, current).await? {
                        replaced.superseded = true;
                        write_token(&tx, keys, family, &replaced)?;
                    }
                } else {
                    tracing::warn!(%tenant, %family, generation = rec.generation, current,
                        "refresh token reuse detected; revoking the family");
                    revoke_family(&mut fam, RevokeReason::ReuseDetected, now);
                    write_family(&tx, keys, &fam)?;
                    return reject(RefreshRejection::ReuseDetected);
                }
                let Some(next) = current.checked_add(1) else {
                    return reject(RefreshRejection::Expired);
                };
                write_token(&tx, keys, family, &rec)?;
                write_token(
                    &tx,
                    keys,
                    family,
                    &TokenRecord {
                        generation: next,
                        parent: Some(rec.generation),
                        mac: mac_hex(key, tenant, family, next, new_secret)?,
                        issued_at: now,
                        used_at: None,
                        grace_used: false,
                        superseded: false,
                    },
                )?;
                fam.current_generation = next;
                fam.last_used_at = now;
                fam.idle_expires_at = now.saturating_add(idle).min(fam.absolute_expires_at);
                write_family(&tx, keys, &fam)?;
                Ok(RefreshOutcome::Issued(fam))
            })
            .await?;
        match outcome {
            RefreshOutcome::Issued(session) => Ok(IssuedToken {
                token: format_token(tenant, family, session.current_generation, new_secret),
                session,
            }),
            RefreshOutcome::Rejected(r) => Err(Error::RefreshRejected(r)),
        }
    }

    /// The family, if it exists in this tenant.
    ///
    /// # Errors
    /// [`Error::Corrupt`]; store errors.
    pub async fn get(&self, tenant: Uuid, family: Uuid) -> Result<Option<AuthSession>> {
        let keys = TenantKeys::new(tenant);
        let keys = &keys;
        self.m
            .db()
            .transact(|tx, _| async move { read_family(&tx, keys, family).await })
            .await
    }

    /// The user's families (active or not, until pruned), at most [`MAX_PAGE`].
    ///
    /// # Errors
    /// [`Error::Corrupt`]; store errors.
    pub async fn list_for_user(&self, tenant: Uuid, user: Uuid) -> Result<Vec<AuthSession>> {
        let keys = TenantKeys::new(tenant);
        let keys = &keys;
        self.m
            .db()
            .transact(|tx, _| async move {
                let idx = tx
                    .get_range(&keys.auth_of_user(user).limit(MAX_PAGE).snapshot())
                    .await?;
                let mut out = Vec::new();
                for kv in &idx.kvs {
                    if let Some(f) = keys.parse_auth_by_user(&kv.key) {
                        if let Some(s) = read_family(&tx, keys, f).await? {
                            out.push(s);
                        }
                    }
                }
                Ok(out)
            })
            .await
    }

    /// Revokes one family (logout). Returns false if there is no such family or it was already
    /// revoked.
    ///
    /// # Errors
    /// Store errors.
    pub async fn revoke(&self, tenant: Uuid, family: Uuid, reason: RevokeReason) -> Result<bool> {
        let keys = TenantKeys::new(tenant);
        let keys = &keys;
        let now = self.m.now();
        // Whether an attempt wrote the revocation: after `commit_unknown_result` the retry
        // finds the family revoked, by that attempt if at our `now` for our reason.
        let tried = AtomicBool::new(false);
        let tried = &tried;
        self.m
            .db()
            .transact(|tx, maybe_committed| async move {
                let Some(mut fam) = read_family(&tx, keys, family).await? else {
                    return Ok(false);
                };
                if fam.revoked_at.is_some() {
                    let ours = maybe_committed.0
                        && tried.load(Ordering::Relaxed)
                        && fam.revoked_at == Some(now)
                        && fam.revoke_reason == Some(reason);
                    return Ok(ours);
                }
                tried.store(true, Ordering::Relaxed);
                revoke_family(&mut fam, reason, now);
                write_family(&tx, keys, &fam)?;
                Ok(true)
            })
            .await
    }

    /// Revokes every family of a user ("log out everywhere").
    ///
    /// # Errors
    /// Store errors.
    pub async fn revoke_user(&self, tenant: Uuid, user: Uuid, reason: RevokeReason) -> Result<()> {
        let keys = TenantKeys::new(tenant);
        let keys = &keys;
        let now = self.m.now();
        self.m
            .db()
            .transact(
                |tx, _| async move { revoke_user_families_in(&tx, keys, user, reason, now).await },
            )
            .await
    }

    /// Deletes up to `limit` families whose absolute expiry has passed, with their tokens and
    /// index entries, at once (no retention tail: the periodic job uses
    /// [`AuthSessions::expire`] instead). Returns how many were deleted (call again while it
    /// returns `limit`).
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad limit; store errors.
    pub async fn prune_expired(&self, tenant: Uuid, limit: usize) -> Result<usize> {
        let limit = crate::check_limit(limit)?;
        let keys = TenantKeys::new(tenant);
        let keys = &keys;
        let now = self.m.now();
        // Families an earlier attempt deleted: after `commit_unknown_result` they are gone
        // from the index the retry reads, so the retry counts those whose record is gone.
        let deleted: std::sync::Mutex<Vec<Uuid>> = std::sync::Mutex::new(Vec::new());
        let deleted = &deleted;
        self.m
            .db()
            .transact(|tx, maybe_committed| async move {
                let mut n = 0;
                if maybe_committed.0 {
                    let tried = deleted
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .clone();
                    for family in tried {
                        if read_family(&tx, keys, family).await?.is_none() {
                            n += 1;
                        }
                    }
                }
                let due = tx
                    .get_range(&keys.auth_expired(now).limit(limit.saturating_sub(n)))
                    .await?;
                let mut mine = Vec::new();
                for kv in &due.kvs {
                    let Some((_, family)) = keys.parse_auth_by_expiry(&kv.key) else {
                        continue;
                    };
                    if let Some(fam) = read_family(&tx, keys, family).await? {
                        delete_family_in(&tx, keys, &fam);
                    }
                    tx.clear(&keys.auth_family(family));
                    let toks = keys.auth_tokens(family);
                    tx.clear_range(&toks.begin, &toks.end);
                    tx.clear(&kv.key);
                    n += 1;
                    mine.push(family);
                }
                deleted
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .extend(mine);
                Ok(n)
            })
            .await
    }

    /// One transaction of the expiry job: looks at up to `limit` families after `after` (by
    /// id), marks those past their absolute or idle expiry as expired, and deletes those
    /// expired or revoked longer than `auth.retention_tail` ago (record, tokens, indexes).
    /// Active families are left alone, used tokens included (reuse detection needs them).
    /// Time is the store's clock. Idempotent: run it again and nothing changes twice.
    ///
    /// Only the families it changes are guarded against concurrent writes (a refresh racing
    /// with their marking conflicts and retries); after `commit_unknown_result` the retry looks
    /// at the same families and counts what its committed attempt did.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad limit (1 to 1000); [`Error::Corrupt`] for an undecodable
    /// family; store errors.
    pub async fn expire_batch(
        &self,
        tenant: Uuid,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<ExpireBatch> {
        let limit = check_limit(limit)?;
        let keys = TenantKeys::new(tenant);
        let keys = &keys;
        let now = self.m.now();
        let tail = micros(self.m.config().auth.retention_tail);
        let tried: Mutex<Option<ExpiryAttempt>> = Mutex::new(None);
        let tried = &tried;
        self.m
            .db()
            .transact(|tx, maybe_committed| async move {
                let prior = if maybe_committed.0 {
                    tried.lock().unwrap_or_else(PoisonError::into_inner).clone()
                } else {
                    None
                };
                // The same families as the attempt that may have committed: up to its last
                // (at most `limit` of them), or again to the end if it got there.
                let bounded = prior
                    .as_ref()
                    .and_then(|p| p.last.filter(|_| !p.reached_end));
                let range = match bounded {
                    Some(last) => {
                        let mut r = families_after(keys, after);
                        r.end = key_after(&keys.auth_family(last));
                        r
                    }
                    None => families_after(keys, after).limit(limit),
                };
                let page = tx.get_range(&range.snapshot()).await?;
                let mut batch = ExpireBatch::default();
                let mut attempt = ExpiryAttempt {
                    reached_end: bounded.is_none() && page.kvs.len() < limit,
                    ..ExpiryAttempt::default()
                };
                for kv in &page.kvs {
                    let fam: AuthSession = decode(|| "auth session".into(), &kv.value)?;
                    attempt.last = Some(fam.id);
                    batch.scanned += 1;
                    match expiry_action(&fam, now, tail) {
                        ExpiryAction::Keep => {
                            let ours = prior.as_ref().is_some_and(|p| p.marked.contains(&fam.id));
                            if ours && fam.expired_at == Some(fam.expires_at()) {
                                batch.marked_expired += 1;
                                attempt.marked.push(fam.id);
                            }
                        }
                        ExpiryAction::MarkExpired => {
                            tx.add_read_conflict_key(&kv.key);
                            let mut marked = fam.clone();
                            marked.expired_at = Some(fam.expires_at());
                            write_family(&tx, keys, &marked)?;
                            batch.marked_expired += 1;
                            attempt.marked.push(fam.id);
                        }
                        ExpiryAction::Delete => {
                            tx.add_read_conflict_key(&kv.key);
                            delete_family_in(&tx, keys, &fam);
                            batch.deleted += 1;
                            attempt.deleted.push(fam.id);
                        }
                    }
                }
                if let Some(p) = prior {
                    // Families the committed attempt deleted are gone from this scan.
                    for id in p.deleted {
                        if !attempt.deleted.contains(&id)
                            && tx.get(&keys.auth_family(id), true).await?.is_none()
                        {
                            batch.scanned += 1;
                            batch.deleted += 1;
                            attempt.deleted.push(id);
                        }
                    }
                    attempt.last = attempt.last.max(p.last);
                }
                batch.next = if attempt.reached_end {
                    None
                } else {
                    attempt.last.or(after)
                };
                *tried.lock().unwrap_or_else(PoisonError::into_inner) = Some(attempt);
                Ok(batch)
            })
            .await
    }

    /// The `expire_auth_tokens` job for one tenant: [`AuthSessions::expire_batch`] from the
    /// first family to the last, `batch` families per transaction, then one
    /// `auth.tokens_expired` audit event with the run's counts
    /// ([`AuthSessions::record_expiry`]). Re-runnable at any time: a run cut short leaves
    /// whole batches done, and the next run finds nothing left to redo there.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad batch size (1 to 1000); [`Error::NotFound`] if the tenant
    /// does not exist (when appending the event); [`Error::Corrupt`]; store errors.
    pub async fn expire(&self, tenant: Uuid, batch: usize) -> Result<ExpireStats> {
        let mut stats = ExpireStats::default();
        let mut after = None;
        loop {
            let b = self.expire_batch(tenant, after, batch).await?;
            stats.add(&b);
            match b.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        let event = self.record_expiry(tenant, &stats).await?;
        stats.audit_event = Some(event);
        Ok(stats)
    }

    /// Appends the one `auth.tokens_expired` audit event of a run (details: `batches`,
    /// `scanned`, `marked_expired`, `deleted`, `retention_tail_secs`) and returns its id. For
    /// a caller that drives [`AuthSessions::expire_batch`] itself (checkpointing the cursor
    /// between job attempts): call it once, after the last batch.
    ///
    /// # Errors
    /// [`Error::NotFound`] for the tenant; store errors.
    pub async fn record_expiry(&self, tenant: Uuid, stats: &ExpireStats) -> Result<Uuid> {
        let event = self
            .m
            .audit()
            .append(
                tenant,
                NewAuditEvent {
                    details: serde_json::json!({
                        "batches": stats.batches,
                        "scanned": stats.scanned,
                        "marked_expired": stats.marked_expired,
                        "deleted": stats.deleted,
                        "retention_tail_secs": self.m.config().auth.retention_tail.as_secs(),
                    }),
                    ..NewAuditEvent::new(TOKENS_EXPIRED_ACTION)
                },
            )
            .await?;
        Ok(event.id)
    }
}

/// Clears a family: its record, its tokens and its index entries.
fn delete_family_in(tx: &Transaction, keys: &TenantKeys, fam: &AuthSession) {
    tx.clear(&keys.auth_family(fam.id));
    let toks = keys.auth_tokens(fam.id);
    tx.clear_range(&toks.begin, &toks.end);
    tx.clear(&keys.auth_by_user(fam.user_id, fam.id));
    tx.clear(&keys.auth_by_expiry(fam.absolute_expires_at, fam.id));
}

/// The family records after `after` (all of them for `None`), in id order (UUIDv7: about
/// creation order).
fn families_after(keys: &TenantKeys, after: Option<Uuid>) -> RangeOption {
    let begin = match after {
        Some(f) => key_after(&keys.auth_family(f)),
        None => keys.auth_family(Uuid::nil()),
    };
    RangeOption::new(begin, key_after(&keys.auth_family(Uuid::max())))
}

fn revoke_family(fam: &mut AuthSession, reason: RevokeReason, now: i64) {
    fam.revoked_at = Some(now);
    fam.revoke_reason = Some(reason);
}

/// Revokes every not-yet-revoked family of a user inside the caller's transaction.
pub(crate) async fn revoke_user_families_in(
    tx: &Transaction,
    keys: &TenantKeys,
    user: Uuid,
    reason: RevokeReason,
    now: i64,
) -> Result<()> {
    let idx = tx.get_range_all(&keys.auth_of_user(user)).await?;
    for kv in &idx {
        let Some(family) = keys.parse_auth_by_user(&kv.key) else {
            continue;
        };
        if let Some(mut fam) = read_family(tx, keys, family).await? {
            if fam.revoked_at.is_none() {
                revoke_family(&mut fam, reason, now);
                write_family(tx, keys, &fam)?;
            }
        }
    }
    Ok(())
}

async fn read_family(
    tx: &Transaction,
    keys: &TenantKeys,
    family: Uuid,
) -> Result<Option<AuthSession>> {
    tx.get(&keys.auth_family(family), false)
        .await?
        .map(|v| decode(|| format!("auth session {family}"), &v))
        .transpose()
}

fn write_family(tx: &Transaction, keys: &TenantKeys, fam: &AuthSession) -> Result<()> {
    tx.set(
        &keys.auth_family(fam.id),
        &encode("auth_session", fam, MAX_INLINE_VALUE)?,
    );
    Ok(())
}

async fn read_token(
    tx: &Transaction,
    keys: &TenantKeys,
    family: Uuid,
    generation: u32,
) -> Result<Option<TokenRecord>> {
    tx.get(&keys.auth_token(family, generation), false)
        .await?
        .map(|v| decode(|| format!("refresh token {family}/{generation}"), &v))
        .transpose()
}

fn write_token(tx: &Transaction, keys: &TenantKeys, family: Uuid, rec: &TokenRecord) -> Result<()> {
    tx.set(
        &keys.auth_token(family, rec.generation),
        &encode("auth_token", rec, MAX_INLINE_VALUE)?,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_malformed_ones_do_not_parse() {
        let (t, f) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let tok = format_token(t, f, 7, &[9u8; SECRET_BYTES]);
        let p = parse_token(tok.expose()).unwrap();
        assert_eq!((p.tenant, p.family, p.generation), (t, f, 7));
        assert_eq!(p.secret, vec![9u8; SECRET_BYTES]);
        assert_eq!(RefreshToken::tenant_of(tok.expose()), Some(t));
        assert_eq!(format!("{tok:?}"), "RefreshToken(<redacted>)");
        for bad in [
            "",
            "stw1",
            &tok.expose().replace("stw1", "stw2"),
            &format!("{}.x", tok.expose()),
            &tok.expose()[..tok.expose().len() - 2],
        ] {
            assert!(parse_token(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn the_mac_binds_every_field() {
        let key = [3u8; 32];
        let (t, f) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let s = [5u8; SECRET_BYTES];
        let m = mac_hex(&key, t, f, 1, &s).unwrap();
        assert!(mac_matches(&key, t, f, 1, &s, &m).unwrap());
        assert!(!mac_matches(&key, t, f, 2, &s, &m).unwrap());
        assert!(!mac_matches(&key, f, f, 1, &s, &m).unwrap());
        assert!(!mac_matches(&key, t, t, 1, &s, &m).unwrap());
        assert!(!mac_matches(&[4u8; 32], t, f, 1, &s, &m).unwrap());
        assert!(!mac_matches(&key, t, f, 1, &[6u8; SECRET_BYTES], &m).unwrap());
    }
}
