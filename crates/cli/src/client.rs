//! Operator and inspection commands: HTTP clients of a running Steward (`--url` /
//! `STEWARD_URL`, `--token` / `STEWARD_TOKEN`), so they work while a server holds the embedded
//! store. Each prints the server's JSON answer. An answer of 4xx exits with code 2 and the
//! server's message (which names the field); 5xx and connection errors exit with 1.
//! `steward audit verify --direct` reads a store instead (no server may hold it).

use std::io::Read;

use clap::{Args, Subcommand};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::config::Settings;
use crate::Failure;

/// Where the server is and who is asking.
#[derive(Debug, Clone, Args)]
pub(crate) struct Remote {
    /// The server's base URL
    #[arg(long, env = "STEWARD_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// An access token (`steward token ...`, or the one `steward dev` prints)
    #[arg(long, env = "STEWARD_TOKEN", hide_env_values = true)]
    token: String,
}

#[derive(Debug, Subcommand)]
pub(crate) enum TenantCmd {
    /// List tenants
    List {
        #[command(flatten)]
        remote: Remote,
        /// Start after this tenant id
        #[arg(long)]
        after: Option<Uuid>,
        /// Page size (1 to 1000)
        #[arg(long, default_value = "100")]
        limit: usize,
    },
    /// Create a tenant
    Create {
        #[command(flatten)]
        remote: Remote,
        /// Display name
        #[arg(long)]
        name: String,
        /// personal or organization
        #[arg(long, default_value = "organization")]
        kind: String,
        /// free, pro or enterprise
        #[arg(long, default_value = "free")]
        plan: String,
        /// Subject to HIPAA
        #[arg(long)]
        hipaa: bool,
    },
    /// Show a tenant
    Show {
        #[command(flatten)]
        remote: Remote,
        id: Uuid,
    },
    /// Set a tenant's plan (its limits become the plan's)
    Plan {
        #[command(flatten)]
        remote: Remote,
        id: Uuid,
        /// free, pro or enterprise
        plan: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum UserCmd {
    /// Create a user in a tenant (the password, if any, is read from stdin)
    Create {
        #[command(flatten)]
        remote: Remote,
        /// The tenant
        #[arg(long)]
        tenant: Uuid,
        /// Email (unique in the tenant)
        #[arg(long)]
        email: String,
        /// A role (repeatable): owner, admin, member, agent
        #[arg(long = "role", default_values_t = vec!["member".to_string()])]
        roles: Vec<String>,
        /// Read an initial password from stdin
        #[arg(long)]
        password_stdin: bool,
        /// Display name
        #[arg(long)]
        display_name: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum JobsCmd {
    /// List jobs (newest first)
    List {
        #[command(flatten)]
        remote: Remote,
        /// Only this state: scheduled, queued, running, completed, cancelled, dead
        #[arg(long)]
        state: Option<String>,
        /// Only this kind
        #[arg(long)]
        kind: Option<String>,
        /// Only this workspace session
        #[arg(long)]
        session: Option<Uuid>,
        /// Page size (1 to 500)
        #[arg(long, default_value = "50")]
        limit: usize,
        /// A previous page's next_cursor
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Show a job
    Show {
        #[command(flatten)]
        remote: Remote,
        id: Uuid,
    },
    /// Enqueue a job
    Enqueue {
        #[command(flatten)]
        remote: Remote,
        /// The kind, e.g. summarize_session
        kind: String,
        /// Arguments as JSON
        #[arg(long, default_value = "{}")]
        args: String,
        /// Idempotency key
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Cancel a job
    Cancel {
        #[command(flatten)]
        remote: Remote,
        id: Uuid,
    },
    /// Retry a dead job
    Retry {
        #[command(flatten)]
        remote: Remote,
        id: Uuid,
    },
    /// Why a job is still waiting
    Why {
        #[command(flatten)]
        remote: Remote,
        id: Uuid,
    },
    /// Job counts by state
    Stats {
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum CronCmd {
    /// List the tenant's schedules, by name
    List {
        #[command(flatten)]
        remote: Remote,
        /// Start after this name
        #[arg(long)]
        after: Option<String>,
        /// Page size (1 to 1000)
        #[arg(long, default_value = "100")]
        limit: usize,
    },
    /// Show a schedule
    Show {
        #[command(flatten)]
        remote: Remote,
        name: String,
    },
    /// Create or replace a schedule
    Set {
        #[command(flatten)]
        remote: Remote,
        name: String,
        /// Cron expression, e.g. "0 */5 * * * *" or "@hourly"
        #[arg(long)]
        expression: String,
        /// IANA time zone
        #[arg(long, default_value = "UTC")]
        time_zone: String,
        /// The job's kind
        #[arg(long)]
        kind: String,
        /// The job's arguments as JSON
        #[arg(long, default_value = "{}")]
        args: String,
    },
    /// Delete a schedule
    Delete {
        #[command(flatten)]
        remote: Remote,
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCmd {
    /// Verify the tenant's audit chain (over HTTP, or --direct on a store)
    Verify {
        /// Read the store named by --store directly (no server may hold it)
        #[arg(long, requires = "tenant")]
        direct: bool,
        /// The tenant (with --direct)
        #[arg(long)]
        tenant: Option<Uuid>,
        /// The server's base URL
        #[arg(long, env = "STEWARD_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
        /// An access token
        #[arg(long, env = "STEWARD_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// List audit events
    Events {
        #[command(flatten)]
        remote: Remote,
        /// From this sequence number
        #[arg(long)]
        from_seq: Option<u64>,
        /// Page size (1 to 1000)
        #[arg(long, default_value = "100")]
        limit: usize,
    },
}

/// `text` as one URL path segment: every byte but `A-Za-z0-9-._~` percent-encoded, so a
/// schedule named `a#b` or `../x` addresses that schedule and nothing else.
fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn parse_json(flag: &str, text: &str) -> Result<Value, Failure> {
    serde_json::from_str(text).map_err(|e| Failure::Usage(format!("{flag}: not JSON: {e}")))
}

async fn call(
    remote: &Remote,
    method: Method,
    path: &str,
    query: &[Option<(&str, String)>],
    body: Option<Value>,
) -> Result<(), Failure> {
    // Unset optional parameters are left out of the query string.
    let query: Vec<&(&str, String)> = query.iter().flatten().collect();
    let url = format!("{}{path}", remote.url.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .map_err(|e| Failure::Runtime(format!("HTTP client: {e}")))?;
    let mut req = client
        .request(method, &url)
        .bearer_auth(&remote.token)
        .query(&query);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| Failure::Runtime(format!("{url}: {e}")))?;
    let status = resp.status();
    let text = resp
        .text()
        .await
        .map_err(|e| Failure::Runtime(format!("{url}: {e}")))?;
    let pretty = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or(text);
    if status.is_success() {
        if status != StatusCode::NO_CONTENT {
            out!("{pretty}");
        }
        Ok(())
    } else if status.is_client_error() {
        Err(Failure::Refused(format!("{status}: {pretty}")))
    } else {
        Err(Failure::Runtime(format!("{status}: {pretty}")))
    }
}

fn opt(name: &'static str, v: Option<impl ToString>) -> Option<(&'static str, String)> {
    v.map(|v| (name, v.to_string()))
}

pub(crate) async fn tenant(cmd: TenantCmd) -> Result<(), Failure> {
    match cmd {
        TenantCmd::List {
            remote,
            after,
            limit,
        } => {
            let q = [opt("after", after), opt("limit", Some(limit))];
            call(&remote, Method::GET, "/v1/operator/tenants", &q, None).await
        }
        TenantCmd::Create {
            remote,
            name,
            kind,
            plan,
            hipaa,
        } => {
            let body = json!({"name": name, "kind": kind, "plan": plan, "hipaa": hipaa});
            call(
                &remote,
                Method::POST,
                "/v1/operator/tenants",
                &[],
                Some(body),
            )
            .await
        }
        TenantCmd::Show { remote, id } => {
            call(
                &remote,
                Method::GET,
                &format!("/v1/operator/tenants/{id}"),
                &[],
                None,
            )
            .await
        }
        TenantCmd::Plan { remote, id, plan } => {
            call(
                &remote,
                Method::PUT,
                &format!("/v1/operator/tenants/{id}/plan"),
                &[],
                Some(json!({ "plan": plan })),
            )
            .await
        }
    }
}

pub(crate) async fn user(cmd: UserCmd) -> Result<(), Failure> {
    match cmd {
        UserCmd::Create {
            remote,
            tenant,
            email,
            roles,
            password_stdin,
            display_name,
        } => {
            let password = if password_stdin {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .map_err(|e| Failure::Usage(format!("--password-stdin: {e}")))?;
                Some(s.trim_end_matches(['\n', '\r']).to_string())
            } else {
                None
            };
            let body = json!({
                "email": email,
                "roles": roles,
                "password": password,
                "display_name": display_name,
            });
            call(
                &remote,
                Method::POST,
                &format!("/v1/operator/tenants/{tenant}/users"),
                &[],
                Some(body),
            )
            .await
        }
    }
}

pub(crate) async fn jobs(cmd: JobsCmd) -> Result<(), Failure> {
    match cmd {
        JobsCmd::List {
            remote,
            state,
            kind,
            session,
            limit,
            cursor,
        } => {
            let q = [
                opt("state", state),
                opt("kind", kind),
                opt("session", session),
                opt("limit", Some(limit)),
                opt("cursor", cursor),
            ];
            call(&remote, Method::GET, "/v1/jobs", &q, None).await
        }
        JobsCmd::Show { remote, id } => {
            call(&remote, Method::GET, &format!("/v1/jobs/{id}"), &[], None).await
        }
        JobsCmd::Enqueue {
            remote,
            kind,
            args,
            idempotency_key,
        } => {
            let body = json!({
                "kind": kind,
                "args": parse_json("--args", &args)?,
                "idempotency_key": idempotency_key,
            });
            call(&remote, Method::POST, "/v1/jobs", &[], Some(body)).await
        }
        JobsCmd::Cancel { remote, id } => {
            call(
                &remote,
                Method::POST,
                &format!("/v1/jobs/{id}/cancel"),
                &[],
                None,
            )
            .await
        }
        JobsCmd::Retry { remote, id } => {
            call(
                &remote,
                Method::POST,
                &format!("/v1/jobs/{id}/retry"),
                &[],
                None,
            )
            .await
        }
        JobsCmd::Why { remote, id } => {
            call(
                &remote,
                Method::GET,
                &format!("/v1/jobs/{id}/why"),
                &[],
                None,
            )
            .await
        }
        JobsCmd::Stats { remote } => call(&remote, Method::GET, "/v1/queue/stats", &[], None).await,
    }
}

pub(crate) async fn cron(cmd: CronCmd) -> Result<(), Failure> {
    if let CronCmd::Show { name, .. } | CronCmd::Set { name, .. } | CronCmd::Delete { name, .. } =
        &cmd
    {
        // URLs resolve these as path steps, whatever their encoding.
        if name == "." || name == ".." {
            return Err(Failure::Usage(format!(
                "schedule name {name:?} cannot be addressed over HTTP"
            )));
        }
    }
    match cmd {
        CronCmd::List {
            remote,
            after,
            limit,
        } => {
            let q = [opt("after", after), opt("limit", Some(limit))];
            call(&remote, Method::GET, "/v1/cron", &q, None).await
        }
        CronCmd::Show { remote, name } => {
            call(
                &remote,
                Method::GET,
                &format!("/v1/cron/{}", segment(&name)),
                &[],
                None,
            )
            .await
        }
        CronCmd::Set {
            remote,
            name,
            expression,
            time_zone,
            kind,
            args,
        } => {
            let body = json!({
                "expression": expression,
                "time_zone": time_zone,
                "job": {"kind": kind, "args": parse_json("--args", &args)?},
            });
            call(
                &remote,
                Method::PUT,
                &format!("/v1/cron/{}", segment(&name)),
                &[],
                Some(body),
            )
            .await
        }
        CronCmd::Delete { remote, name } => {
            call(
                &remote,
                Method::DELETE,
                &format!("/v1/cron/{}", segment(&name)),
                &[],
                None,
            )
            .await
        }
    }
}

pub(crate) async fn audit(cmd: AuditCmd, settings: &Settings) -> Result<(), Failure> {
    match cmd {
        AuditCmd::Verify {
            direct: true,
            tenant,
            ..
        } => {
            let tenant = tenant.ok_or_else(|| Failure::Usage("--direct needs --tenant".into()))?;
            verify_direct(settings, tenant).await
        }
        AuditCmd::Verify {
            url,
            token: Some(token),
            ..
        } => {
            let remote = Remote { url, token };
            call(&remote, Method::GET, "/v1/audit/verify", &[], None).await
        }
        AuditCmd::Verify { token: None, .. } => Err(Failure::Usage(
            "audit verify needs --token (or STEWARD_TOKEN), or --direct --tenant ID".into(),
        )),
        AuditCmd::Events {
            remote,
            from_seq,
            limit,
        } => {
            let q = [opt("from_seq", from_seq), opt("limit", Some(limit))];
            call(&remote, Method::GET, "/v1/audit/events", &q, None).await
        }
    }
}

/// Verifies a tenant's chain straight from the store (no server may hold it). Needs only the
/// chain key and the segments' public keys; creates nothing: a store that does not exist is
/// refused rather than created empty.
async fn verify_direct(settings: &Settings, tenant: Uuid) -> Result<(), Failure> {
    let dir = crate::data_dir(settings);
    if let Some(d) = &dir {
        if !d.is_dir() {
            return Err(Failure::Usage(format!(
                "--store: no embedded store at {}",
                d.display()
            )));
        }
    }
    let models_section: crate::keys::ModelsSection = settings.section("models")?;
    let config = crate::keys::for_verification(
        &models_section,
        dir.as_ref().map(|d| d.join("keys")).as_deref(),
    )?;
    let db = crate::open_store(settings)?;
    let models = steward_models::Models::open(db, config).await?;
    if models.tenants().get(tenant).await?.is_none() {
        return Err(Failure::Usage(format!(
            "--tenant {tenant}: no such tenant in this store"
        )));
    }
    // A broken chain is an error naming where it breaks (exit code 1).
    let r = models.audit().verify_chain(tenant).await?;
    let report = json!({
        "intact": true,
        "segments": r.segments,
        "legacy_segments": r.legacy_segments,
        "compacted_events": r.compacted_events,
        "events_checked": r.events_checked,
    });
    let text =
        serde_json::to_string_pretty(&report).map_err(|e| Failure::Runtime(e.to_string()))?;
    out!("{text}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::segment;

    #[test]
    fn a_name_becomes_exactly_one_path_segment() {
        assert_eq!(segment("nightly"), "nightly");
        assert_eq!(segment("nightly#old"), "nightly%23old");
        assert_eq!(segment("../x?y=1"), "..%2Fx%3Fy%3D1");
        assert_eq!(segment("é"), "%C3%A9");
    }
}
