//! Tenant separation, proven on the raw keyspace; export and deletion of a whole tenant; the
//! tenant directory; the schema version.

#![allow(clippy::unwrap_used)] // Test helpers fail loudly.

mod support;

use std::collections::BTreeSet;

use steward_models::{
    ensure_schema, Error, FileChange, MessageRole, Models, ModelsConfig, NewAuditEvent,
    NewConversation, NewMessage, NewWorkspaceSession, RefreshRejection, SCHEMA_VERSION,
};
use steward_store::tuple::{pack, unpack, Element};
use steward_store::{Database, KeyValue};
use support::{Backend, Env};
use uuid::Uuid;

/// The ids of one tenant's records of every kind.
#[derive(Debug, Clone)]
struct Populated {
    tenant: Uuid,
    user: Uuid,
    email: String,
    family: Uuid,
    token: String,
    session: Uuid,
    conversation: Uuid,
    message: Uuid,
    audit_sealed: Uuid,
    audit_pending: Uuid,
    file: Uuid,
    workspace: String,
    path: String,
}

/// One record of every kind (and a long, chunked message) in a new tenant.
async fn populate(env: &Env, name: &str) -> Populated {
    let m = &env.models;
    let tenant = env.tenant(name).await.id;
    let email = format!("ada@{name}.example");
    let user = env.user(tenant, &email).await.id;
    let issued = m.auth().login(tenant, user, "laptop").await.unwrap();
    let rotated = m
        .auth()
        .refresh(tenant, issued.token.expose())
        .await
        .unwrap();
    let workspace = "/home/ada/project".to_string();
    let conversation = m
        .conversations()
        .create(
            tenant,
            NewConversation {
                title: format!("{name} chat"),
                created_by: Some(user),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .id;
    let long = "x".repeat(3 * steward_models::CHUNK_BYTES + 17);
    let message = m
        .conversations()
        .append(
            tenant,
            conversation,
            NewMessage::text(MessageRole::User, long),
        )
        .await
        .unwrap()
        .message
        .id;
    let session = m
        .workspace_sessions()
        .create(
            tenant,
            NewWorkspaceSession {
                conversation_id: Some(conversation),
                ..NewWorkspaceSession::new("main", user, workspace.clone())
            },
        )
        .await
        .unwrap()
        .id;
    let audit_sealed = m
        .audit()
        .append(tenant, NewAuditEvent::new("user.login"))
        .await
        .unwrap()
        .id;
    m.audit().seal_all(tenant).await.unwrap();
    let audit_pending = m
        .audit()
        .append(tenant, NewAuditEvent::new("session.create"))
        .await
        .unwrap()
        .id;
    let path = "src/main.rs".to_string();
    let file = m
        .files()
        .record_change(
            tenant,
            FileChange {
                workspace: workspace.clone(),
                path: path.clone(),
                size: 10,
                content_hash: "sha256:aa".into(),
                session_id: Some(session),
                user_id: Some(user),
            },
        )
        .await
        .unwrap()
        .id;
    Populated {
        tenant,
        user,
        email,
        family: rotated.session.id,
        token: rotated.token.expose().to_owned(),
        session,
        conversation,
        message,
        audit_sealed,
        audit_pending,
        file,
        workspace,
        path,
    }
}

/// The tenant a key belongs to: `("t", T, ...)` gives `Some(T)`; the schema key and the
/// directory give `None`; anything else fails the test.
fn owner_of(key: &[u8], tenants: &[Uuid]) -> Option<Uuid> {
    let e: Vec<Element<'_>> = unpack(key).expect("every key is a tuple");
    match (e.first(), e.get(1), e.get(2), e.len()) {
        (Some(Element::String(m)), Some(Element::String(s)), None, 2)
            if m == "meta" && s == "schema" =>
        {
            None
        }
        (Some(Element::String(g)), Some(Element::String(d)), Some(Element::Uuid(t)), 3)
            if g == "g" && d == "tenants" =>
        {
            assert!(tenants.contains(t), "directory entry of an unknown tenant");
            None
        }
        (Some(Element::String(s)), Some(Element::Uuid(t)), _, _) if s == "t" => {
            assert!(tenants.contains(t), "keys of an unknown tenant");
            Some(*t)
        }
        _ => panic!("key outside the tenant, directory and schema areas: {key:?}"),
    }
}

async fn export_all(models: &Models, tenant: Uuid) -> (Vec<KeyValue>, usize) {
    let mut out = Vec::new();
    let mut pages = 0;
    models
        .tenants()
        .export(tenant, |kvs| {
            pages += 1;
            out.extend(kvs);
            Ok(())
        })
        .await
        .unwrap();
    (out, pages)
}

async fn every_tenants_keys_lie_under_its_own_prefix_and_no_call_crosses_it(
    backend: Backend,
    name: &str,
) {
    let env = Env::new(backend, name).await;
    let m = &env.models;
    let a = populate(&env, "alpha").await;
    let b = populate(&env, "beta").await;
    let c = populate(&env, "gamma").await;
    let tenants = [a.tenant, b.tenant, c.tenant];

    // The raw keyspace: every key belongs to one tenant's prefix, or is the schema or the
    // directory; each tenant has keys of every area.
    let all = env.all_pairs().await;
    for t in tenants {
        let areas: BTreeSet<String> = all
            .iter()
            .filter(|kv| owner_of(&kv.key, &tenants) == Some(t))
            .map(|kv| {
                assert!(kv.key.starts_with(&pack(&("t", t))));
                let e: Vec<Element<'_>> = unpack(&kv.key).unwrap();
                match &e[2] {
                    Element::String(s) => s.to_string(),
                    other => panic!("area is not a string: {other:?}"),
                }
            })
            .collect();
        let expected: BTreeSet<String> = ["tenant", "user", "auth", "ws", "conv", "audit", "file"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(areas, expected, "tenant {t}");
    }
    // No record id of one tenant appears in another tenant's keys or values.
    for (mine, others) in [(&a, [&b, &c]), (&b, [&a, &c]), (&c, [&a, &b])] {
        for o in others {
            for id in [
                o.user,
                o.family,
                o.session,
                o.conversation,
                o.message,
                o.file,
            ] {
                for kv in all
                    .iter()
                    .filter(|kv| owner_of(&kv.key, &tenants) == Some(mine.tenant))
                {
                    let needle = id.as_bytes();
                    assert!(
                        !kv.key.windows(16).any(|w| w == needle),
                        "tenant {}'s key holds tenant {}'s id",
                        mine.tenant,
                        o.tenant
                    );
                }
            }
        }
    }

    let (a_before, _) = export_all(m, a.tenant).await;

    // Tenant B's calls with tenant A's ids find nothing and change nothing.
    let bt = b.tenant;
    assert_eq!(m.users().get(bt, a.user).await.unwrap(), None);
    assert_eq!(m.users().get_by_email(bt, &a.email).await.unwrap(), None);
    assert!(matches!(
        m.users().login(bt, &a.email, support::PASSWORD).await,
        Err(Error::InvalidCredentials)
    ));
    assert!(m
        .users()
        .list(bt, None, 100)
        .await
        .unwrap()
        .items
        .iter()
        .all(|u| u.tenant_id == bt && u.id == b.user));
    assert!(matches!(
        m.users()
            .set_password(bt, a.user, "another long password")
            .await,
        Err(Error::NotFound { .. })
    ));
    assert!(!m.users().delete(bt, a.user).await.unwrap());

    assert_eq!(m.auth().get(bt, a.family).await.unwrap(), None);
    assert!(m.auth().list_for_user(bt, a.user).await.unwrap().is_empty());
    assert!(matches!(
        m.auth().refresh(bt, &a.token).await,
        Err(Error::RefreshRejected(RefreshRejection::Invalid))
    ));
    // Even a token string edited to name tenant B finds no family there.
    let forged = a
        .token
        .replace(&a.tenant.simple().to_string(), &bt.simple().to_string());
    assert!(matches!(
        m.auth().refresh(bt, &forged).await,
        Err(Error::RefreshRejected(RefreshRejection::Invalid))
    ));
    assert!(!m
        .auth()
        .revoke(bt, a.family, steward_models::RevokeReason::Admin)
        .await
        .unwrap());
    assert!(matches!(
        m.auth().login(bt, a.user, "x").await,
        Err(Error::NotFound { .. })
    ));

    let ws = m.workspace_sessions();
    assert_eq!(ws.get(bt, a.session).await.unwrap(), None);
    assert!(ws
        .list_by_user(bt, a.user, None, 100)
        .await
        .unwrap()
        .items
        .is_empty());
    let by_ws = ws
        .list_by_workspace(bt, &a.workspace, b.user, None, 100)
        .await
        .unwrap();
    assert_eq!(
        by_ws.items.iter().map(|s| s.id).collect::<Vec<_>>(),
        vec![b.session]
    );
    assert!(ws
        .list_by_activity(bt, None, 100)
        .await
        .unwrap()
        .items
        .iter()
        .all(|s| s.id == b.session));
    assert!(matches!(
        ws.update(bt, a.session, |s| {
            s.name = "stolen".into();
            Ok(())
        })
        .await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        ws.fork(bt, a.session, b.user, "fork").await,
        Err(Error::NotFound { .. })
    ));
    assert!(!ws.delete(bt, a.session).await.unwrap());

    let conv = m.conversations();
    assert_eq!(conv.get(bt, a.conversation).await.unwrap(), None);
    assert!(conv
        .messages(bt, a.conversation, None, 100)
        .await
        .unwrap()
        .items
        .is_empty());
    assert_eq!(
        conv.get_message(bt, a.conversation, a.message)
            .await
            .unwrap(),
        None
    );
    assert!(matches!(
        conv.append(
            bt,
            a.conversation,
            NewMessage::text(MessageRole::User, "hi")
        )
        .await,
        Err(Error::NotFound { .. })
    ));
    assert!(!conv.delete(bt, a.conversation).await.unwrap());

    let audit = m.audit();
    assert_eq!(audit.lookup(bt, a.audit_sealed).await.unwrap(), None);
    assert_eq!(audit.lookup(bt, a.audit_pending).await.unwrap(), None);
    assert!(audit
        .events(bt, 1, 100)
        .await
        .unwrap()
        .iter()
        .all(|e| e.event.id == b.audit_sealed));

    let files = m.files();
    assert_eq!(files.get(bt, a.file).await.unwrap(), None);
    assert!(files
        .history(bt, a.file, None, 100)
        .await
        .unwrap()
        .items
        .is_empty());
    assert!(!files.purge(bt, a.file).await.unwrap());
    assert!(matches!(
        files.rename(bt, a.file, "stolen.rs", None, None).await,
        Err(Error::NotFound { .. })
    ));
    // Same workspace path and file path in B: B's own file, not A's.
    let same_path = files
        .get_by_path(bt, &a.workspace, &a.path)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(same_path.id, b.file);

    // Nothing of tenant A changed, and B's export holds none of A's keys.
    let (a_after, _) = export_all(m, a.tenant).await;
    assert_eq!(a_before, a_after);
    let (b_export, _) = export_all(m, bt).await;
    assert!(!b_export.is_empty());
    assert!(b_export
        .iter()
        .all(|kv| kv.key.starts_with(&pack(&("t", bt)))));
}

async fn export_pages_cover_every_key_and_delete_clears_only_that_tenant(
    backend: Backend,
    name: &str,
) {
    let env = Env::new(backend, name).await;
    let m = &env.models;
    let a = populate(&env, "alpha").await;
    let b = populate(&env, "beta").await;
    // Enough keys for several export pages.
    let many: Vec<NewMessage> = (0..600)
        .map(|i| NewMessage::text(MessageRole::Assistant, format!("message {i}")))
        .collect();
    m.conversations()
        .append_batch(a.tenant, a.conversation, many)
        .await
        .unwrap();

    let raw_a: Vec<KeyValue> = env
        .all_pairs()
        .await
        .into_iter()
        .filter(|kv| kv.key.starts_with(&pack(&("t", a.tenant))))
        .collect();
    let (exported, pages) = export_all(m, a.tenant).await;
    assert!(pages >= 3, "{pages} pages");
    assert_eq!(exported, raw_a);
    assert!(raw_a.len() > 1200);

    let (b_before, _) = export_all(m, b.tenant).await;
    m.tenants().delete(a.tenant).await.unwrap();

    let left = env.all_pairs().await;
    assert!(left
        .iter()
        .all(|kv| !kv.key.starts_with(&pack(&("t", a.tenant)))));
    assert!(!left
        .iter()
        .any(|kv| kv.key == pack(&("g", "tenants", a.tenant))));
    assert_eq!(m.tenants().get(a.tenant).await.unwrap(), None);
    let (b_after, _) = export_all(m, b.tenant).await;
    assert_eq!(b_before, b_after);
    let ids = m.tenants().list_ids(None, 100).await.unwrap();
    assert_eq!(ids.items, vec![b.tenant]);
    // Writes under the deleted tenant are refused rather than resurrecting its prefix.
    assert!(matches!(
        m.audit()
            .append(a.tenant, NewAuditEvent::new("late.event"))
            .await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        m.users()
            .create(
                a.tenant,
                steward_models::NewUser::new("x@y.z", [steward_models::Role::Member])
            )
            .await,
        Err(Error::NotFound { .. })
    ));
}

async fn the_directory_lists_tenants_in_pages(backend: Backend, name: &str) {
    let env = Env::new(backend, name).await;
    let mut made = Vec::new();
    for i in 0..7 {
        made.push(env.tenant(&format!("t{i}")).await.id);
    }
    made.sort();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = env.models.tenants().list_ids(after, 3).await.unwrap();
        assert!(page.items.len() <= 3);
        seen.extend(page.items);
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, made);
}

backend_tests!(
    every_tenants_keys_lie_under_its_own_prefix_and_no_call_crosses_it,
    export_pages_cover_every_key_and_delete_clears_only_that_tenant,
    the_directory_lists_tenants_in_pages,
);

#[tokio::test]
async fn schema_version_is_written_once_and_a_newer_one_is_refused() {
    let db = Database::memory();
    assert_eq!(ensure_schema(&db).await.unwrap(), SCHEMA_VERSION);
    assert_eq!(ensure_schema(&db).await.unwrap(), SCHEMA_VERSION);
    let key = pack(&("meta", "schema"));
    let tx = db.create_transaction().unwrap();
    assert_eq!(
        tx.get(&key, false).await.unwrap(),
        Some(SCHEMA_VERSION.to_string().into_bytes())
    );
    drop(tx);
    db.run(|tx, _| {
        let key = key.clone();
        async move {
            tx.set(&key, (SCHEMA_VERSION + 1).to_string().as_bytes());
            Ok(())
        }
    })
    .await
    .unwrap();
    match Models::open(db.clone(), ModelsConfig::for_tests()).await {
        Err(Error::SchemaTooNew { stored, supported }) => {
            assert_eq!((stored, supported), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
}

#[tokio::test]
async fn production_config_with_the_test_profile_is_refused_at_open() {
    let config = ModelsConfig {
        production: true,
        ..ModelsConfig::for_tests()
    };
    match Models::open(Database::memory(), config).await {
        Err(Error::Invalid { field, .. }) => assert_eq!(field, "password.memory_kib"),
        other => panic!("expected Invalid, got {other:?}"),
    }
}
