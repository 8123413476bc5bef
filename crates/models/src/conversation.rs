//! [`Conversation`] and its [`Message`]s. Messages are appended under versionstamped keys, so
//! they are ordered by commit and concurrent appends never conflict; each message is split into
//! chunks of [`crate::CHUNK_BYTES`] (no value nears the store's 100 KB limit) and put back
//! together on read, never truncated. A per-message id marker makes a retried append idempotent
//! and finds a message by id; the count and last-append time are atomic ops, not a hot record.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use steward_store::tuple::Versionstamp;
use steward_store::{decode_counter, KeyValue, MutationType, Transaction, VersionstampFuture};
use uuid::Uuid;

use crate::codec::{check_len, chunks, decode, encode, hex, join_chunks, unhex, MAX_INLINE_VALUE};
use crate::error::{Error, Result};
use crate::keys::TenantKeys;
use crate::tenant::require_tenant;
use crate::{check_limit, Models, Page};

/// Largest message (content, tool calls and results, encoded), in bytes. A larger one is
/// refused; up to this size it is stored in chunks.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// Largest batch of messages appended in one transaction, encoded.
pub const MAX_APPEND_BYTES: usize = 6 * 1024 * 1024;
/// Most messages appended in one transaction.
pub const MAX_APPEND_MESSAGES: usize = 1000;
/// Longest conversation title, in bytes.
pub const MAX_TITLE_BYTES: usize = 512;
/// A page of messages stops after this many bytes (with at least one message).
const PAGE_BYTES: usize = 4 * 1024 * 1024;
/// Chunk pairs read per range request when listing messages.
const READ_BATCH: usize = 256;

/// Where a message sits in its conversation: its commit versionstamp and its order within the
/// transaction. Totally ordered; serialized as 24 hex digits. The watermark of a summary.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessagePosition([u8; 12]);

impl MessagePosition {
    /// The 12 bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; 12] {
        &self.0
    }

    /// From its 24 hex digits.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming `field`.
    pub fn parse(field: &'static str, s: &str) -> Result<Self> {
        unhex(s)
            .and_then(|b| <[u8; 12]>::try_from(b).ok())
            .map(MessagePosition)
            .ok_or_else(|| Error::invalid(field, "must be 24 hex digits"))
    }

    fn versionstamp(self) -> Versionstamp {
        Versionstamp::from(self.0)
    }
}

impl fmt::Debug for MessagePosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessagePosition({})", hex(&self.0))
    }
}

impl fmt::Display for MessagePosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl Serialize for MessagePosition {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&hex(&self.0))
    }
}

impl<'de> Deserialize<'de> for MessagePosition {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        MessagePosition::parse("position", &s).map_err(serde::de::Error::custom)
    }
}

/// A conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversation {
    /// UUIDv7.
    pub id: Uuid,
    /// Title.
    pub title: String,
    /// Who started it.
    pub created_by: Option<Uuid>,
    /// The workspace session it belongs to, if any.
    pub session_id: Option<Uuid>,
    /// µs since the epoch.
    pub created_at: i64,
    /// µs since the epoch (title changes; appends are counted in [`ConversationStats`]).
    pub updated_at: i64,
}

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageRole {
    /// System prompt.
    System,
    /// The user.
    User,
    /// The model.
    Assistant,
    /// A tool's output.
    Tool,
}

/// A tool call the assistant made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The call's id (from the model).
    pub id: String,
    /// The tool.
    pub name: String,
    /// Its arguments.
    pub arguments: serde_json::Value,
}

/// A tool's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolResult {
    /// The call it answers.
    pub call_id: String,
    /// The output.
    pub content: String,
    /// Whether the tool failed.
    #[serde(default)]
    pub is_error: bool,
}

/// A message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// UUIDv7.
    pub id: Uuid,
    /// Who wrote it.
    pub role: MessageRole,
    /// The text.
    pub content: String,
    /// Tool calls (assistant messages).
    #[serde(default)]
    pub tool_calls: Vec<ToolCall>,
    /// Tool results (tool messages).
    #[serde(default)]
    pub tool_results: Vec<ToolResult>,
    /// The user who wrote it, for user messages.
    #[serde(default)]
    pub author_id: Option<Uuid>,
    /// The model that wrote it, for assistant messages.
    #[serde(default)]
    pub model: Option<String>,
    /// µs since the epoch.
    pub created_at: i64,
}

/// What an append needs.
#[derive(Debug, Clone, PartialEq)]
pub struct NewMessage {
    /// A chosen id (a client's idempotency key), or `None` for a new UUIDv7.
    pub id: Option<Uuid>,
    /// Who wrote it.
    pub role: MessageRole,
    /// The text.
    pub content: String,
    /// Tool calls.
    pub tool_calls: Vec<ToolCall>,
    /// Tool results.
    pub tool_results: Vec<ToolResult>,
    /// The user who wrote it.
    pub author_id: Option<Uuid>,
    /// The model that wrote it.
    pub model: Option<String>,
}

impl NewMessage {
    /// A plain text message.
    #[must_use]
    pub fn text(role: MessageRole, content: impl Into<String>) -> Self {
        NewMessage {
            id: None,
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_results: Vec::new(),
            author_id: None,
            model: None,
        }
    }
}

/// A message and its position.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    /// Its place in the conversation.
    pub position: MessagePosition,
    /// The message.
    pub message: Message,
}

/// Counters kept without touching the conversation record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConversationStats {
    /// Messages appended and not deleted.
    pub message_count: i64,
    /// Time of the last append (µs), if any.
    pub last_message_at: Option<i64>,
}

/// What [`Conversations::create`] needs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewConversation {
    /// A chosen id, or `None` for a new UUIDv7.
    pub id: Option<Uuid>,
    /// Title.
    pub title: String,
    /// Who started it.
    pub created_by: Option<Uuid>,
    /// Its workspace session.
    pub session_id: Option<Uuid>,
}

enum Appended {
    /// Positions known (an earlier attempt committed).
    Known(Vec<MessagePosition>),
    /// Positions once the commit's versionstamp is known.
    Pending(VersionstampFuture),
}

/// The conversations repository.
#[derive(Debug, Clone, Copy)]
pub struct Conversations<'a> {
    m: &'a Models,
}

impl<'a> Conversations<'a> {
    pub(crate) fn new(m: &'a Models) -> Self {
        Conversations { m }
    }

    /// Creates a conversation in an existing tenant.
    ///
    /// # Errors
    /// [`Error::Invalid`] (`title`); [`Error::NotFound`] for the tenant;
    /// [`Error::AlreadyExists`] for a chosen id in use; store errors.
    pub async fn create(&self, tenant: Uuid, new: NewConversation) -> Result<Conversation> {
        check_len("title", &new.title, MAX_TITLE_BYTES, false)?;
        let now = self.m.now();
        let conv = Conversation {
            id: new.id.unwrap_or_else(|| self.m.new_id()),
            title: new.title,
            created_by: new.created_by,
            session_id: new.session_id,
            created_at: now,
            updated_at: now,
        };
        let value = encode("conversation", &conv, MAX_INLINE_VALUE)?;
        let keys = TenantKeys::new(tenant);
        let (keys, conv, value) = (&keys, &conv, &value);
        self.m
            .db()
            .transact(|tx, maybe_committed| async move {
                if let Some(existing) = tx.get(&keys.conversation(conv.id), false).await? {
                    if maybe_committed.0 && existing == *value {
                        return Ok(conv.clone());
                    }
                    return Err(Error::AlreadyExists {
                        what: "conversation",
                        field: "id",
                    });
                }
                require_tenant(&tx, keys, tenant).await?;
                tx.set(&keys.conversation(conv.id), value);
                Ok(conv.clone())
            })
            .await
    }

    /// The conversation, if it exists in this tenant.
    ///
    /// # Errors
    /// [`Error::Corrupt`]; store errors.
    pub async fn get(&self, tenant: Uuid, id: Uuid) -> Result<Option<Conversation>> {
        let keys = TenantKeys::new(tenant);
        let keys = &keys;
        self.m
            .db()
            .transact(|tx, _| async move { read_conversation(&tx, keys, id).await })
            .await
    }

    /// Conversations in id order (creation order: ids are UUIDv7), after `after`.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad limit; store errors.
    pub async fn list(
        &self,
        tenant: Uuid,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Page<Conversation>> {
        let limit = check_limit(limit)?;
        let keys = TenantKeys::new(tenant);
        let keys = &keys;
        self.m
            .db()
            .transact(|tx, _| async move {
                let page = tx
                    .get_range(&keys.conversations_after(after).limit(limit).snapshot())
                    .await?;
                let items = page
                    .kvs
                    .iter()
                    .map(|kv| decode::<Conversation>(|| "conversation".into(), &kv.value))
                    .collect::<Result<Vec<_>>>()?;
                let next = if page.more {
                    items.last().map(|c| c.id)
                } else {
                    None
                };
                Ok(Page { items, next })
            })
            .await
    }

    /// Changes the title.
    ///
    /// # Errors
    /// [`Error::Invalid`]; [`Error::NotFound`]; store errors.
    pub async fn rename(&self, tenant: Uuid, id: Uuid, title: &str) -> Result<Conversation> {
        check_len("title", title, MAX_TITLE_BYTES, false)?;
        let keys = TenantKeys::new(tenant);
        let keys = &keys;
        let now = self.m.now();
        self.m
            .db()
            .transact(|tx, _| async move {
                let mut c = read_conversation(&tx, keys, id)
                    .await?
                    .ok_or_else(|| Error::not_found("conversation", id))?;
                title.clone_into(&mut c.title);
                c.updated_at = now.max(c.updated_at);
                tx.set(
                    &keys.conversation(id),
                    &encode("conversation", &c, MAX_INLINE_VALUE)?,
                );
                Ok(c)
            })
            .await
    }

    /// Deletes a conversation and all its messages. Returns whether it existed.
    ///
    /// # Errors
    /// Store errors.
    pub async fn delete(&self, tenant: Uuid, id: Uuid) -> Result<bool> {
        let keys = TenantKeys::new(tenant);
        let keys = &keys;
        self.m
            .db()
            .transact(|tx, _| async move {
                let existed = tx.get(&keys.conversation(id), false).await?.is_some();
                tx.clear(&keys.conversation(id));
                for r in [keys.messages_all(id), keys.message_ids(id)] {
                    tx.clear_range(&r.begin, &r.end);
                }
                tx.clear(&keys.message_count(id));
                tx.clear(&keys.message_last_at(id));
                Ok(existed)
            })
            .await
    }

    /// Appends one message; see [`Conversations::append_batch`].
    ///
    /// # Errors
    /// As [`Conversations::append_batch`].
    pub async fn append(
        &self,
        tenant: Uuid,
        conversation: Uuid,
        message: NewMessage,
    ) -> Result<StoredMessage> {
        let mut v = self
            .append_batch(tenant, conversation, vec![message])
            .await?;
        v.pop()
            .ok_or_else(|| Error::corrupt("append", "no message appended"))
    }

    /// Appends messages in one transaction, in the given order, after every message committed
    /// before. Appends never conflict with each other (versionstamped keys; the conversation
    /// record is only read). A retried append whose first attempt may have committed finds its
    /// own marker and does not append twice. Give messages an `id` to make a client's retries
    /// idempotent too: an id already in the conversation is refused.
    ///
    /// # Errors
    /// [`Error::Invalid`] (`content` or `message` above [`MAX_MESSAGE_BYTES`], `messages` above
    /// [`MAX_APPEND_MESSAGES`] or [`MAX_APPEND_BYTES`]); [`Error::NotFound`] for the
    /// conversation; [`Error::AlreadyExists`] for a message id in use; store errors.
    pub async fn append_batch(
        &self,
        tenant: Uuid,
        conversation: Uuid,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<StoredMessage>> {
        if messages.is_empty() || messages.len() > MAX_APPEND_MESSAGES {
            return Err(Error::invalid(
                "messages",
                format!("between 1 and {MAX_APPEND_MESSAGES} per append"),
            ));
        }
        let now = self.m.now();
        let mut built = Vec::with_capacity(messages.len());
        let mut total = 0;
        for n in messages {
            if n.content.len() > MAX_MESSAGE_BYTES {
                return Err(Error::invalid(
                    "content",
                    format!(
                        "{} bytes; at most {MAX_MESSAGE_BYTES} are accepted (split the message)",
                        n.content.len()
                    ),
                ));
            }
            if let Some(m) = &n.model {
                check_len("model", m, 256, false)?;
            }
            let n_id_chosen = n.id.is_some();
            let msg = Message {
                id: n.id.unwrap_or_else(|| self.m.new_id()),
                role: n.role,
                content: n.content,
                tool_calls: n.tool_calls,
                tool_results: n.tool_results,
                author_id: n.author_id,
                model: n.model,
                created_at: now,
            };
            let bytes = encode("message", &msg, MAX_MESSAGE_BYTES)?;
            total += bytes.len();
            built.push((msg, bytes, n_id_chosen));
        }
        if total > MAX_APPEND_BYTES {
            return Err(Error::invalid(
                "messages",
                format!("{total} bytes in one append; at most {MAX_APPEND_BYTES}"),
            ));
        }
        let keys = TenantKeys::new(tenant);
        let (keys, built) = (&keys, &built);
        let appended = self
            .m
            .db()
            .transact(|tx, maybe_committed| async move {
                if maybe_committed.0 {
                    // The batch is one transaction: if its first message is there, all are,
                    // under one commit stamp. A caller-chosen id may have been taken by
                    // another append meanwhile: ours only if the stored message is the one
                    // we built (its id, content and `now`).
                    if let Some(first) = read_marker(&tx, keys, conversation, built[0].0.id).await?
                    {
                        let vs = first.versionstamp();
                        let kvs = tx
                            .get_range_all(&keys.message_chunks_at(conversation, &vs))
                            .await?;
                        let ours = !kvs.is_empty()
                            && join_chunks(
                                || format!("conversation {conversation} message {vs:?}"),
                                &kvs,
                                |k| keys.parse_message_chunk(k).map(|(_, i, n)| (i, n)),
                            )? == built[0].1;
                        if ours {
                            let mut stamp = [0u8; 10];
                            stamp.copy_from_slice(&first.0[..10]);
                            let known = (0..built.len()).map(|i| position_at(stamp, i)).collect();
                            return Ok(Appended::Known(known));
                        }
                    }
                }
                if read_conversation(&tx, keys, conversation).await?.is_none() {
                    return Err(Error::not_found("conversation", conversation));
                }
                for (i, (msg, bytes, chosen_id)) in built.iter().enumerate() {
                    let uv = u16::try_from(i).unwrap_or(u16::MAX);
                    // Ids this call generated are new; only a caller's ids can collide.
                    if *chosen_id
                        && tx
                            .get(&keys.message_id(conversation, msg.id), false)
                            .await?
                            .is_some()
                    {
                        return Err(Error::AlreadyExists {
                            what: "message",
                            field: "id",
                        });
                    }
                    let parts = chunks(bytes);
                    let count = u32::try_from(parts.len()).unwrap_or(u32::MAX);
                    for (idx, part) in parts.into_iter().enumerate() {
                        let idx = u32::try_from(idx).unwrap_or(u32::MAX);
                        tx.set_versionstamped_key(
                            &keys.message_chunk_stamped(conversation, uv, idx, count),
                            part,
                        );
                    }
                    // The marker's value is the message's position, filled in at commit.
                    let mut marker = vec![0u8; 10];
                    marker.extend_from_slice(&uv.to_be_bytes());
                    marker.extend_from_slice(&0u32.to_le_bytes());
                    tx.set_versionstamped_value(&keys.message_id(conversation, msg.id), &marker);
                }
                tx.add(
                    &keys.message_count(conversation),
                    i64::try_from(built.len()).unwrap_or(i64::MAX),
                );
                tx.atomic_op(
                    &keys.message_last_at(conversation),
                    &u64::try_from(now.max(0)).unwrap_or(0).to_le_bytes(),
                    MutationType::Max,
                );
                Ok(Appended::Pending(tx.versionstamp()))
            })
            .await?;
        let positions = match appended {
            Appended::Known(p) => p,
            Appended::Pending(stamp) => {
                let stamp = stamp.await?;
                (0..built.len()).map(|i| position_at(stamp, i)).collect()
            }
        };
        Ok(positions
            .into_iter()
            .zip(built.iter())
            .map(|(position, (message, _, _))| StoredMessage {
                position,
                message: message.clone(),
            })
            .collect())
    }

    /// Messages in order, after `after` (exclusive; `None` from the start): at most `limit`
    /// messages and about 4 MiB. `next` is the position to pass next time (it may lead to an
    /// empty page).
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad limit; [`Error::Corrupt`] if a message's chunks are
    /// incomplete; store errors.
    pub async fn messages(
        &self,
        tenant: Uuid,
        conversation: Uuid,
        after: Option<MessagePosition>,
        limit: usize,
    ) -> Result<Page<StoredMessage, MessagePosition>> {
        let limit = check_limit(limit)?;
        let keys = TenantKeys::new(tenant);
        let vs = after.map(MessagePosition::versionstamp);
        let range = keys
            .messages_from(conversation, vs.as_ref())
            .limit(READ_BATCH)
            .snapshot();
        let (keys, range) = (&keys, &range);
        self.m
            .db()
            .transact(|tx, _| async move {
                let mut opt = range.clone();
                let mut items: Vec<StoredMessage> = Vec::new();
                let mut group: Vec<KeyValue> = Vec::new();
                let mut bytes = 0;
                loop {
                    let page = tx.get_range(&opt).await?;
                    for kv in &page.kvs {
                        let (vs, index, count) = keys
                            .parse_message_chunk(&kv.key)
                            .ok_or_else(|| Error::corrupt("message key", "undecodable"))?;
                        if let Some(first) = group.first() {
                            if keys.parse_message_chunk(&first.key).map(|p| p.0) != Some(vs.clone())
                            {
                                return Err(Error::corrupt(
                                    format!("conversation {conversation}"),
                                    "a message's chunks are incomplete",
                                ));
                            }
                        }
                        group.push(kv.clone());
                        if index + 1 == count {
                            let m = finish_message(keys, conversation, &vs, &group)?;
                            bytes += group.iter().map(|kv| kv.value.len()).sum::<usize>();
                            group.clear();
                            items.push(m);
                            if items.len() >= limit || bytes >= PAGE_BYTES {
                                let next = items.last().map(|m| m.position);
                                return Ok(Page { items, next });
                            }
                        }
                    }
                    match page.next_page(&opt) {
                        Some(n) => opt = n,
                        None => break,
                    }
                }
                if !group.is_empty() {
                    return Err(Error::corrupt(
                        format!("conversation {conversation}"),
                        "the last message's chunks are incomplete",
                    ));
                }
                Ok(Page { items, next: None })
            })
            .await
    }

    /// One message by id.
    ///
    /// # Errors
    /// [`Error::Corrupt`]; store errors.
    pub async fn get_message(
        &self,
        tenant: Uuid,
        conversation: Uuid,
        message: Uuid,
    ) -> Result<Option<StoredMessage>> {
        let keys = TenantKeys::new(tenant);
        let keys = &keys;
        self.m
            .db()
            .transact(|tx, _| async move {
                let Some(pos) = read_marker(&tx, keys, conversation, message).await? else {
                    return Ok(None);
                };
                let vs = pos.versionstamp();
                let kvs = tx
                    .get_range_all(&keys.message_chunks_at(conversation, &vs))
                    .await?;
                if kvs.is_empty() {
                    return Ok(None);
                }
                finish_message(keys, conversation, &vs, &kvs).map(Some)
            })
            .await
    }

    /// The message count and last append time (atomic counters, no conflicts).
    ///
    /// # Errors
    /// Store errors.
    pub async fn stats(&self, tenant: Uuid, conversation: Uuid) -> Result<ConversationStats> {
        let keys = TenantKeys::new(tenant);
        let keys = &keys;
        self.m
            .db()
            .transact(|tx, _| async move {
                let n = tx.get(&keys.message_count(conversation), true).await?;
                let last = tx.get(&keys.message_last_at(conversation), true).await?;
                Ok(ConversationStats {
                    message_count: decode_counter(n.as_deref()),
                    last_message_at: last.map(|v| decode_counter(Some(&v))),
                })
            })
            .await
    }
}

fn finish_message(
    keys: &TenantKeys,
    conversation: Uuid,
    vs: &Versionstamp,
    group: &[KeyValue],
) -> Result<StoredMessage> {
    let what = || format!("conversation {conversation} message {vs:?}");
    let bytes = join_chunks(what, group, |k| {
        keys.parse_message_chunk(k).map(|(_, i, n)| (i, n))
    })?;
    Ok(StoredMessage {
        position: MessagePosition(*vs.as_bytes()),
        message: decode(what, &bytes)?,
    })
}

async fn read_conversation(
    tx: &Transaction,
    keys: &TenantKeys,
    id: Uuid,
) -> Result<Option<Conversation>> {
    tx.get(&keys.conversation(id), false)
        .await?
        .map(|v| decode(|| format!("conversation {id}"), &v))
        .transpose()
}

async fn read_marker(
    tx: &Transaction,
    keys: &TenantKeys,
    conversation: Uuid,
    message: Uuid,
) -> Result<Option<MessagePosition>> {
    match tx
        .get(&keys.message_id(conversation, message), false)
        .await?
    {
        Some(v) => <[u8; 12]>::try_from(v.as_slice())
            .map(|b| Some(MessagePosition(b)))
            .map_err(|_| Error::corrupt("message id marker", "not 12 bytes")),
        None => Ok(None),
    }
}

/// The position of the `i`-th message of a transaction committed at `stamp`.
fn position_at(stamp: [u8; 10], i: usize) -> MessagePosition {
    let mut b = [0u8; 12];
    b[..10].copy_from_slice(&stamp);
    b[10..].copy_from_slice(&u16::try_from(i).unwrap_or(u16::MAX).to_be_bytes());
    MessagePosition(b)
}
