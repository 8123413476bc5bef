//! [`User`]: a member of one tenant, with an email unique in that tenant (an index key read
//! serializably), roles, and an Argon2id password re-hashed on login when the policy changed.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use steward_store::Transaction;
use uuid::Uuid;

use crate::auth::{revoke_user_families_in, RevokeReason};
use crate::codec::{check_len, decode, encode, MAX_INLINE_VALUE};
use crate::error::{Error, Result};
use crate::keys::TenantKeys;
use crate::tenant::require_tenant;
use crate::{check_limit, Models, Page};

/// Longest email address, in bytes (RFC 5321's path limit).
pub const MAX_EMAIL_BYTES: usize = 254;
/// Longest display name, in bytes.
pub const MAX_DISPLAY_NAME_BYTES: usize = 256;

/// What a user may do in its tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Owns the tenant: billing, deletion.
    Owner,
    /// Manages users and settings.
    Admin,
    /// A human member.
    Member,
    /// An automated agent acting in the tenant.
    Agent,
}

/// A user. The password hash is kept out of this type: it never leaves the repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// UUIDv7.
    pub id: Uuid,
    /// The tenant it belongs to.
    pub tenant_id: Uuid,
    /// Normalized (trimmed, lowercase) email, unique in the tenant.
    pub email: String,
    /// Display name.
    pub display_name: String,
    /// Roles (at least one).
    pub roles: BTreeSet<Role>,
    /// A disabled user cannot log in.
    pub disabled: bool,
    /// Whether a password is set (agents and SSO users may have none).
    pub has_password: bool,
    /// µs since the epoch.
    pub created_at: i64,
    /// µs since the epoch.
    pub updated_at: i64,
    /// Last successful password login, µs since the epoch.
    pub last_login_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredUser {
    #[serde(flatten)]
    user: User,
    /// Argon2id PHC string.
    password_hash: Option<String>,
}

/// What [`Users::create`] needs.
#[derive(Clone, PartialEq, Eq)]
pub struct NewUser {
    /// A chosen id, or `None` for a new UUIDv7.
    pub id: Option<Uuid>,
    /// Email (normalized on create).
    pub email: String,
    /// Display name.
    pub display_name: String,
    /// Roles (at least one).
    pub roles: BTreeSet<Role>,
    /// Initial password, if any.
    pub password: Option<String>,
}

impl std::fmt::Debug for NewUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewUser")
            .field("id", &self.id)
            .field("email", &self.email)
            .field("display_name", &self.display_name)
            .field("roles", &self.roles)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl NewUser {
    /// A user with these roles, no display name and no password.
    #[must_use]
    pub fn new(email: impl Into<String>, roles: impl IntoIterator<Item = Role>) -> Self {
        NewUser {
            id: None,
            email: email.into(),
            display_name: String::new(),
            roles: roles.into_iter().collect(),
            password: None,
        }
    }

    /// Sets the initial password.
    #[must_use]
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Sets the display name.
    #[must_use]
    pub fn display_name(mut self, name: impl Into<String>) -> Self {
        self.display_name = name.into();
        self
    }
}

/// A change of a user's profile; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserUpdate {
    /// New display name.
    pub display_name: Option<String>,
    /// New roles.
    pub roles: Option<BTreeSet<Role>>,
    /// Disable or enable (disabling also revokes every login).
    pub disabled: Option<bool>,
}

/// Normalizes an email: trimmed, lowercase, and plausibly an address.
fn normalize_email(email: &str) -> Result<String> {
    let e = email.trim().to_lowercase();
    check_len("email", &e, MAX_EMAIL_BYTES, true)?;
    let valid = match e.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && !e.chars().any(|c| c.is_whitespace() || c.is_control())
        }
        None => false,
    };
    if !valid {
        return Err(Error::invalid("email", "must look like local@domain"));
    }
    Ok(e)
}

fn validate_user(u: &User) -> Result<()> {
    check_len(
        "display_name",
        &u.display_name,
        MAX_DISPLAY_NAME_BYTES,
        false,
    )?;
    if u.roles.is_empty() {
        return Err(Error::invalid("roles", "at least one role"));
    }
    Ok(())
}

/// The users repository.
#[derive(Debug, Clone, Copy)]
pub struct Users<'a> {
    m: &'a Models,
}

impl<'a> Users<'a> {
    pub(crate) fn new(m: &'a Models) -> Self {
        Users { m }
    }

    /// Creates a user in an existing tenant. The email index is read serializably, so two
    /// concurrent creations with one email cannot both commit.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming a field (email, roles, password); [`Error::NotFound`] for the
    /// tenant; [`Error::AlreadyExists`] (`email`, or `id`); store errors.
    pub async fn create(&self, tenant: Uuid, new: NewUser) -> Result<User> {
        let email = normalize_email(&new.email)?;
        let now = self.m.now();
        let password_hash = match &new.password {
            Some(p) => Some(self.m.hasher().hash(p).await?),
            None => None,
        };
        let stored = StoredUser {
            user: User {
                id: new.id.unwrap_or_else(|| self.m.new_id()),
                tenant_id: tenant,
                email,
                display_name: new.display_name.trim().to_owned(),
                roles: new.roles,
                disabled: false,
                has_password: password_hash.is_some(),
                created_at: now,
                updated_at: now,
                last_login_at: None,
            },
            password_hash,
        };
        validate_user(&stored.user)?;
        let value = encode("user", &stored, MAX_INLINE_VALUE)?;
        let keys = TenantKeys::new(tenant);
        let (keys, stored, value) = (&keys, &stored, &value);
        self.m
            .db()
            .transact(|tx, maybe_committed| async move {
                let id = stored.user.id;
                if let Some(owner) = tx.get(&keys.user_email(&stored.user.email), false).await? {
                    if maybe_committed.0 && owner == id.as_bytes() {
                        return Ok(stored.user.clone());
                    }
                    return Err(Error::AlreadyExists {
                        what: "user",
                        field: "email",
                    });
                }
                if tx.get(&keys.user(id), false).await?.is_some() {
                    return Err(Error::AlreadyExists {
                        what: "user",
                        field: "id",
                    });
                }
                require_tenant(&tx, keys, tenant).await?;
                tx.set(&keys.user(id), value);
                tx.set(&keys.user_email(&stored.user.email), id.as_bytes());
                Ok(stored.user.clone())
            })
            .await
    }

    /// The user, if it exists in this tenant.
    ///
    /// # Errors
    /// [`Error::Corrupt`]; store errors.
    pub async fn get(&self, tenant: Uuid, id: Uuid) -> Result<Option<User>> {
        let keys = TenantKeys::new(tenant);
        let keys = &keys;
        self.m
            .db()
            .transact(|tx, _| async move { Ok(read_user(&tx, keys, id).await?.map(|s| s.user)) })
            .await
    }

    /// The user with this email in this tenant.
    ///
    /// # Errors
    /// [`Error::Corrupt`]; store errors. A malformed email simply finds nobody.
    pub async fn get_by_email(&self, tenant: Uuid, email: &str) -> Result<Option<User>> {
        Ok(self.stored_by_email(tenant, email).await?.map(|s| s.user))
    }

    async fn stored_by_email(&self, tenant: Uuid, email: &str) -> Result<Option<StoredUser>> {
        let Ok(email) = normalize_email(email) else {
            return Ok(None);
        };
        let keys = TenantKeys::new(tenant);
        let (keys, email) = (&keys, &email);
        self.m
            .db()
            .transact(|tx, _| async move {
                let Some(id) = tx.get(&keys.user_email(email), false).await? else {
                    return Ok(None);
                };
                let id =
                    Uuid::from_slice(&id).map_err(|e| Error::corrupt("user email index", e))?;
                read_user(&tx, keys, id).await
            })
            .await
    }

    /// Users of the tenant in id order, after `after`.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad limit; [`Error::Corrupt`]; store errors.
    pub async fn list(
        &self,
        tenant: Uuid,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Page<User>> {
        let limit = check_limit(limit)?;
        let keys = TenantKeys::new(tenant);
        let keys = &keys;
        self.m
            .db()
            .transact(|tx, _| async move {
                let page = tx
                    .get_range(&keys.users_after(after).limit(limit).snapshot())
                    .await?;
                let items = page
                    .kvs
                    .iter()
                    .map(|kv| decode::<StoredUser>(|| "user".into(), &kv.value).map(|s| s.user))
                    .collect::<Result<Vec<_>>>()?;
                let next = if page.more {
                    items.last().map(|u| u.id)
                } else {
                    None
                };
                Ok(Page { items, next })
            })
            .await
    }

    /// Changes a user's profile. Disabling a user revokes all its logins in the same
    /// transaction.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::Invalid`]; store errors.
    pub async fn update(&self, tenant: Uuid, id: Uuid, update: UserUpdate) -> Result<User> {
        let keys = TenantKeys::new(tenant);
        let (keys, update) = (&keys, &update);
        let now = self.m.now();
        self.m
            .db()
            .transact(|tx, _| async move {
                let mut s = require_user(&tx, keys, id).await?;
                if let Some(n) = &update.display_name {
                    s.user.display_name = n.trim().to_owned();
                }
                if let Some(r) = &update.roles {
                    s.user.roles = r.clone();
                }
                if let Some(d) = update.disabled {
                    if d && !s.user.disabled {
                        revoke_user_families_in(&tx, keys, id, RevokeReason::UserDisabled, now)
                            .await?;
                    }
                    s.user.disabled = d;
                }
                s.user.updated_at = now.max(s.user.updated_at);
                validate_user(&s.user)?;
                tx.set(&keys.user(id), &encode("user", &s, MAX_INLINE_VALUE)?);
                Ok(s.user)
            })
            .await
    }

    /// Changes a user's email, moving the unique index in the same transaction.
    ///
    /// # Errors
    /// [`Error::Invalid`] (`email`); [`Error::NotFound`]; [`Error::AlreadyExists`] if another
    /// user of the tenant has it; store errors.
    pub async fn change_email(&self, tenant: Uuid, id: Uuid, email: &str) -> Result<User> {
        let email = normalize_email(email)?;
        let keys = TenantKeys::new(tenant);
        let (keys, email) = (&keys, &email);
        let now = self.m.now();
        self.m
            .db()
            .transact(|tx, _| async move {
                let mut s = require_user(&tx, keys, id).await?;
                if s.user.email == *email {
                    return Ok(s.user);
                }
                if tx.get(&keys.user_email(email), false).await?.is_some() {
                    return Err(Error::AlreadyExists {
                        what: "user",
                        field: "email",
                    });
                }
                tx.clear(&keys.user_email(&s.user.email));
                tx.set(&keys.user_email(email), id.as_bytes());
                s.user.email.clone_from(email);
                s.user.updated_at = now.max(s.user.updated_at);
                tx.set(&keys.user(id), &encode("user", &s, MAX_INLINE_VALUE)?);
                Ok(s.user)
            })
            .await
    }

    /// Sets a new password (hashed under the current policy) and revokes every login of the
    /// user in the same transaction.
    ///
    /// # Errors
    /// [`Error::Invalid`] (`password`); [`Error::NotFound`]; store and crypto errors.
    pub async fn set_password(&self, tenant: Uuid, id: Uuid, password: &str) -> Result<()> {
        let hash = self.m.hasher().hash(password).await?;
        let keys = TenantKeys::new(tenant);
        let (keys, hash) = (&keys, &hash);
        let now = self.m.now();
        self.m
            .db()
            .transact(|tx, _| async move {
                let mut s = require_user(&tx, keys, id).await?;
                s.password_hash = Some(hash.clone());
                s.user.has_password = true;
                s.user.updated_at = now.max(s.user.updated_at);
                tx.set(&keys.user(id), &encode("user", &s, MAX_INLINE_VALUE)?);
                revoke_user_families_in(&tx, keys, id, RevokeReason::PasswordChanged, now).await
            })
            .await
    }

    /// Checks an email and password. On success records the login time and, if the stored
    /// hash's parameters differ from the policy's, stores a new hash of the same password
    /// (only if the stored hash did not change meanwhile). Unknown emails cost as much as
    /// wrong passwords.
    ///
    /// # Errors
    /// [`Error::InvalidCredentials`] for an unknown email, a wrong password, a user without a
    /// password or a disabled user; store and crypto errors.
    pub async fn login(&self, tenant: Uuid, email: &str, password: &str) -> Result<User> {
        let hasher = self.m.hasher();
        let Some(stored) = self.stored_by_email(tenant, email).await? else {
            hasher.verify_dummy(password).await?;
            return Err(Error::InvalidCredentials);
        };
        let Some(old_hash) = stored.password_hash.clone() else {
            hasher.verify_dummy(password).await?;
            return Err(Error::InvalidCredentials);
        };
        let verified = hasher.verify(&old_hash, password).await?;
        if !verified.matches || stored.user.disabled {
            return Err(Error::InvalidCredentials);
        }
        let new_hash = if verified.needs_rehash {
            Some(hasher.hash_for_rehash(password).await?)
        } else {
            None
        };
        let keys = TenantKeys::new(tenant);
        let id = stored.user.id;
        let (keys, old_hash, new_hash) = (&keys, &old_hash, &new_hash);
        let now = self.m.now();
        self.m
            .db()
            .transact(|tx, _| async move {
                let mut s = require_user(&tx, keys, id).await.map_err(|e| match e {
                    Error::NotFound { .. } => Error::InvalidCredentials,
                    e => e,
                })?;
                // The password or the user changed since it was checked: refuse, safely.
                if s.password_hash.as_ref() != Some(old_hash)
                    && new_hash.as_ref() != s.password_hash.as_ref()
                {
                    return Err(Error::InvalidCredentials);
                }
                if s.user.disabled {
                    return Err(Error::InvalidCredentials);
                }
                if let Some(h) = new_hash {
                    s.password_hash = Some(h.clone());
                }
                s.user.last_login_at = Some(now);
                tx.set(&keys.user(id), &encode("user", &s, MAX_INLINE_VALUE)?);
                Ok(s.user)
            })
            .await
    }

    /// The stored PHC string (for audits of the hashing parameters; never send it to a
    /// client).
    ///
    /// # Errors
    /// [`Error::NotFound`]; store errors.
    pub async fn password_hash(&self, tenant: Uuid, id: Uuid) -> Result<Option<String>> {
        let keys = TenantKeys::new(tenant);
        let keys = &keys;
        self.m
            .db()
            .transact(|tx, _| async move { Ok(require_user(&tx, keys, id).await?.password_hash) })
            .await
    }

    /// Deletes a user, its email index entry and its logins. Returns whether it existed.
    ///
    /// # Errors
    /// Store errors.
    pub async fn delete(&self, tenant: Uuid, id: Uuid) -> Result<bool> {
        let keys = TenantKeys::new(tenant);
        let keys = &keys;
        let now = self.m.now();
        self.m
            .db()
            .transact(|tx, _| async move {
                let Some(s) = read_user(&tx, keys, id).await? else {
                    return Ok(false);
                };
                tx.clear(&keys.user(id));
                tx.clear(&keys.user_email(&s.user.email));
                revoke_user_families_in(&tx, keys, id, RevokeReason::UserDeleted, now).await?;
                Ok(true)
            })
            .await
    }
}

async fn read_user(tx: &Transaction, keys: &TenantKeys, id: Uuid) -> Result<Option<StoredUser>> {
    tx.get(&keys.user(id), false)
        .await?
        .map(|v| decode(|| format!("user {id}"), &v))
        .transpose()
}

async fn require_user(tx: &Transaction, keys: &TenantKeys, id: Uuid) -> Result<StoredUser> {
    read_user(tx, keys, id)
        .await?
        .ok_or_else(|| Error::not_found("user", id))
}

/// Whether a user exists and may act (not disabled), read serializably.
pub(crate) async fn require_active_user(
    tx: &Transaction,
    keys: &TenantKeys,
    id: Uuid,
) -> Result<User> {
    let s = require_user(tx, keys, id).await?;
    if s.user.disabled {
        return Err(Error::invalid("user_id", "the user is disabled"));
    }
    Ok(s.user)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalized_and_checked() {
        assert_eq!(
            normalize_email("  Ada@Example.COM ").unwrap(),
            "ada@example.com"
        );
        for bad in ["", "ada", "@x", "a@", "a b@c", "a@b@c"] {
            assert!(normalize_email(bad).is_err(), "{bad}");
        }
        let long = format!("{}@x.io", "a".repeat(MAX_EMAIL_BYTES));
        assert!(matches!(
            normalize_email(&long),
            Err(Error::Invalid { field: "email", .. })
        ));
    }
}
