//! Back-office commands over the gateway's HTTP API: `login` and `logout`,
//! `packages list|show|raw`, and `series`.
//!
//! `login` keeps the access token in the user's configuration directory
//! (`$XDG_CONFIG_HOME/tallyhouse/tokens.json`, or `--config-dir`), readable
//! by the user only (0600), one token per gateway URL; the other commands
//! send it as a bearer token. A password is never taken from the command
//! line: it is typed at a prompt without echo, or read from stdin with
//! `--password-stdin`.

use crate::commands::{Context, input_error, parse_submitter_id, parse_time};
use crate::error::CliError;
use crate::files;
use crate::gateway::{Gateway, GatewayArgs, problem};
use crate::output::{self, table};
use futures_util::StreamExt as _;
use reqwest::Method;
use rpc_contracts::SubmitterId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Where tokens are kept, and how to reach the gateway.
#[derive(Debug, Clone, clap::Args)]
pub struct SessionArgs {
    /// How to reach the gateway.
    #[command(flatten)]
    pub gateway: GatewayArgs,

    /// Directory of the token file (default: the user's configuration
    /// directory, e.g. ~/.config/tallyhouse).
    #[arg(long, value_name = "DIR", env = "TALLYHOUSE_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,

    /// Request timeout in seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout_secs: u64,
}

/// `tallyhouse login`.
#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// The back-office username.
    pub username: String,
    /// Read the password from the first line of stdin instead of a prompt.
    #[arg(long)]
    pub password_stdin: bool,
    /// Gateway and token file.
    #[command(flatten)]
    pub session: SessionArgs,
}

/// `tallyhouse logout`.
#[derive(Debug, clap::Args)]
pub struct LogoutArgs {
    /// Gateway and token file.
    #[command(flatten)]
    pub session: SessionArgs,
}

/// `tallyhouse packages ...`.
#[derive(Debug, clap::Subcommand)]
pub enum PackagesCommand {
    /// Packages, newest received first.
    List {
        /// Only this submitter's packages.
        #[arg(long, value_parser = parse_submitter_id)]
        submitter: Option<SubmitterId>,
        /// Received at or after (RFC 3339).
        #[arg(long, value_parser = parse_time)]
        from: Option<OffsetDateTime>,
        /// Received before (RFC 3339).
        #[arg(long, value_parser = parse_time)]
        to: Option<OffsetDateTime>,
        /// At most this many (every page is fetched until then).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Gateway and token file.
        #[command(flatten)]
        session: SessionArgs,
    },
    /// One package's metadata and receipt.
    Show {
        /// The submitter.
        #[arg(value_parser = parse_submitter_id)]
        submitter: SubmitterId,
        /// The package id.
        package_id: uuid::Uuid,
        /// Gateway and token file.
        #[command(flatten)]
        session: SessionArgs,
    },
    /// Download the original bytes, with FILE.sig (base64 of the DER
    /// signature, as `sign` writes it) and FILE.key-id beside them, after
    /// checking them against the Repr-Digest the gateway sent.
    Raw {
        /// The submitter.
        #[arg(value_parser = parse_submitter_id)]
        submitter: SubmitterId,
        /// The package id.
        package_id: uuid::Uuid,
        /// Where to write the bytes (default: <package_id>.json).
        #[arg(long, short)]
        out: Option<PathBuf>,
        /// Gateway and token file.
        #[command(flatten)]
        session: SessionArgs,
    },
}

/// `tallyhouse series`.
#[derive(Debug, clap::Args)]
pub struct SeriesArgs {
    /// The submitter.
    #[arg(value_parser = parse_submitter_id)]
    pub submitter: SubmitterId,
    /// The series, e.g. bets.stake.
    pub series: String,
    /// Start (inclusive), RFC 3339.
    #[arg(long, value_parser = parse_time)]
    pub from: OffsetDateTime,
    /// End (exclusive), RFC 3339.
    #[arg(long, value_parser = parse_time)]
    pub to: OffsetDateTime,
    /// Bucket width: seconds or 30s, 5m, 1h, 1d.
    #[arg(long, default_value = "1h")]
    pub bucket: String,
    /// sum, avg, min, max or count.
    #[arg(long, default_value = "sum")]
    pub agg: String,
    /// A label filter KEY=VALUE (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Print CSV (bucket,value,count) as the gateway streams it.
    #[arg(long)]
    pub csv: bool,
    /// Gateway and token file.
    #[command(flatten)]
    pub session: SessionArgs,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

/// The tokens on disk: one per gateway URL.
#[derive(Debug, Default, Serialize, Deserialize)]
struct TokenFile {
    tokens: BTreeMap<String, StoredToken>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredToken {
    username: String,
    access_token: String,
    #[serde(with = "time::serde::rfc3339")]
    expires_at: OffsetDateTime,
}

fn token_path(session: &SessionArgs) -> Result<PathBuf, CliError> {
    let dir = match &session.config_dir {
        Some(dir) => dir.clone(),
        None => {
            use etcetera::BaseStrategy as _;
            etcetera::choose_base_strategy()
                .map_err(|e| input_error(format!("no configuration directory: {e}")))?
                .config_dir()
                .join("tallyhouse")
        }
    };
    Ok(dir.join("tokens.json"))
}

fn read_tokens(path: &Path) -> Result<TokenFile, CliError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| input_error(format!("{} is not a token file: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TokenFile::default()),
        Err(e) => Err(input_error(format!("cannot read {}: {e}", path.display()))),
    }
}

fn write_tokens(path: &Path, tokens: &TokenFile) -> Result<(), CliError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| input_error(format!("cannot create {}: {e}", dir.display())))?;
    }
    let bytes = serde_json::to_vec_pretty(tokens).expect("tokens serialise");
    files::replace(path, &bytes, 0o600)
        .map_err(|e| input_error(format!("cannot write {}: {e}", path.display())))
}

fn gateway(session: &SessionArgs) -> Result<Gateway, CliError> {
    Gateway::new(
        &session.gateway.url,
        Duration::from_secs(session.timeout_secs.max(1)),
    )
}

/// The stored token for this gateway, if it has not expired.
fn bearer(session: &SessionArgs, gw: &Gateway) -> Result<String, CliError> {
    let path = token_path(session)?;
    let tokens = read_tokens(&path)?;
    match tokens.tokens.get(gw.base()) {
        Some(t) if t.expires_at > crate::commands::now() => Ok(t.access_token.clone()),
        Some(_) => Err(CliError::Rejected(format!(
            "the token for {} has expired: run `tallyhouse login`",
            gw.base()
        ))),
        None => Err(CliError::Rejected(format!(
            "not logged in to {}: run `tallyhouse login <USERNAME>`",
            gw.base()
        ))),
    }
}

fn read_password(from_stdin: bool) -> Result<String, CliError> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| input_error(format!("cannot read the password from stdin: {e}")))?;
        let password = line.trim_end_matches(['\n', '\r']);
        if password.is_empty() {
            return Err(input_error(
                "no password on stdin (the first line is empty)",
            ));
        }
        return Ok(password.to_owned());
    }
    if !std::io::stdin().is_terminal() {
        return Err(input_error(
            "stdin is not a terminal: pass the password on stdin with --password-stdin",
        ));
    }
    rpassword::prompt_password("Password: ")
        .map_err(|e| input_error(format!("cannot read the password: {e}")))
}

/// Sends `req`; a non-2xx answer becomes the gateway's problem.
async fn send(gw: &Gateway, req: reqwest::RequestBuilder) -> Result<reqwest::Response, CliError> {
    let resp = req
        .send()
        .await
        .map_err(|e| CliError::Connect(gw.describe_error(&e)))?;
    if resp.status().is_success() {
        Ok(resp)
    } else {
        let p = problem(resp).await;
        if p.status >= 500 {
            Err(CliError::Connect(p.to_string()))
        } else {
            Err(CliError::Rejected(p.to_string()))
        }
    }
}

async fn json<T: serde::de::DeserializeOwned>(
    gw: &Gateway,
    resp: reqwest::Response,
) -> Result<T, CliError> {
    resp.json()
        .await
        .map_err(|e| CliError::Connect(format!("unreadable answer: {}", gw.describe_error(&e))))
}

/// `tallyhouse login USERNAME`.
pub async fn login(args: LoginArgs, ctx: &Context) -> Result<(), CliError> {
    #[derive(Deserialize)]
    struct Answer {
        access_token: String,
        expires_in: u64,
    }
    let gw = gateway(&args.session)?;
    let password = read_password(args.password_stdin)?;
    let resp = send(
        &gw,
        gw.request(Method::POST, "/v1/auth/login")
            .json(&serde_json::json!({
                "username": args.username,
                "password": password,
            })),
    )
    .await?;
    let answer: Answer = json(&gw, resp).await?;
    let expires_at = crate::commands::now() + time::Duration::seconds(answer.expires_in as i64);
    let path = token_path(&args.session)?;
    let mut tokens = read_tokens(&path)?;
    tokens.tokens.insert(
        gw.base().to_owned(),
        StoredToken {
            username: args.username.clone(),
            access_token: answer.access_token,
            expires_at,
        },
    );
    write_tokens(&path, &tokens)?;
    ctx.output.print(
        &serde_json::json!({
            "username": args.username,
            "gateway": gw.base(),
            "expires_at": expires_at.format(&Rfc3339).unwrap_or_default(),
            "token_file": path,
        }),
        || {
            format!(
                "logged in as {} at {} until {} (token in {})",
                args.username,
                gw.base(),
                output::time(expires_at),
                path.display()
            )
        },
    );
    Ok(())
}

/// `tallyhouse logout`: revokes the token and forgets it.
pub async fn logout(args: LogoutArgs, ctx: &Context) -> Result<(), CliError> {
    let gw = gateway(&args.session)?;
    let path = token_path(&args.session)?;
    let mut tokens = read_tokens(&path)?;
    let Some(stored) = tokens.tokens.remove(gw.base()) else {
        ctx.output.note(&format!("not logged in to {}", gw.base()));
        return Ok(());
    };
    // Revoke first; forget the token whether or not it was still valid.
    let outcome = send(
        &gw,
        gw.request(Method::POST, "/v1/auth/logout")
            .bearer_auth(&stored.access_token),
    )
    .await;
    write_tokens(&path, &tokens)?;
    match outcome {
        Ok(_) | Err(CliError::Rejected(_)) => {
            ctx.output.note(&format!("logged out of {}", gw.base()));
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// `tallyhouse packages ...`.
pub async fn packages(cmd: PackagesCommand, ctx: &Context) -> Result<(), CliError> {
    match cmd {
        PackagesCommand::List {
            submitter,
            from,
            to,
            limit,
            session,
        } => {
            let gw = gateway(&session)?;
            let token = bearer(&session, &gw)?;
            let mut all: Vec<serde_json::Value> = Vec::new();
            let mut cursor: Option<String> = None;
            while all.len() < limit {
                let mut query: Vec<(&str, String)> =
                    vec![("limit", (limit - all.len()).min(1000).to_string())];
                if let Some(s) = &submitter {
                    query.push(("submitter", s.to_string()));
                }
                for (name, t) in [("from", from), ("to", to)] {
                    if let Some(t) = t {
                        query.push((name, t.format(&Rfc3339).unwrap_or_default()));
                    }
                }
                if let Some(c) = &cursor {
                    query.push(("cursor", c.clone()));
                }
                let resp = send(
                    &gw,
                    gw.request(Method::GET, "/v1/packages")
                        .query(&query)
                        .bearer_auth(&token),
                )
                .await?;
                let page: serde_json::Value = json(&gw, resp).await?;
                all.extend(page["packages"].as_array().cloned().unwrap_or_default());
                cursor = page["next_cursor"].as_str().map(str::to_owned);
                if cursor.is_none() {
                    break;
                }
            }
            ctx.output.print(&all, || {
                let rows: Vec<Vec<String>> = all
                    .iter()
                    .map(|p| {
                        [
                            "received_at",
                            "submitter_id",
                            "package_id",
                            "records",
                            "size",
                        ]
                        .iter()
                        .map(|k| match &p[*k] {
                            serde_json::Value::String(s) => s.clone(),
                            v => v.to_string(),
                        })
                        .collect()
                    })
                    .collect();
                table(
                    &["RECEIVED", "SUBMITTER", "PACKAGE", "RECORDS", "BYTES"],
                    &rows,
                )
            });
            Ok(())
        }
        PackagesCommand::Show {
            submitter,
            package_id,
            session,
        } => {
            let gw = gateway(&session)?;
            let token = bearer(&session, &gw)?;
            let resp = send(
                &gw,
                gw.request(
                    Method::GET,
                    &format!("/v1/packages/{submitter}/{package_id}"),
                )
                .bearer_auth(&token),
            )
            .await?;
            let detail: serde_json::Value = json(&gw, resp).await?;
            ctx.output.print(&detail, || {
                let s = &detail["summary"];
                let text = |v: &serde_json::Value| match v {
                    serde_json::Value::String(s) => s.clone(),
                    v => v.to_string(),
                };
                output::record(&[
                    ("submitter", text(&s["submitter_id"])),
                    ("package", text(&s["package_id"])),
                    ("received", text(&s["received_at"])),
                    ("created", text(&s["created_at"])),
                    ("records", text(&s["records"])),
                    ("bytes", text(&s["size"])),
                    ("sha256", text(&s["sha256"])),
                    ("audience", text(&detail["audience"])),
                    ("key id", text(&detail["key_id"])),
                    ("signature", text(&detail["signature"])),
                    ("receipt", text(&detail["receipt"])),
                ])
            });
            Ok(())
        }
        PackagesCommand::Raw {
            submitter,
            package_id,
            out,
            session,
        } => {
            let gw = gateway(&session)?;
            let token = bearer(&session, &gw)?;
            let resp = send(
                &gw,
                gw.request(
                    Method::GET,
                    &format!("/v1/packages/{submitter}/{package_id}/raw"),
                )
                .bearer_auth(&token),
            )
            .await?;
            let header = |name: &str| {
                resp.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
                    .unwrap_or_default()
            };
            let (key_id, signature, digest) = (
                header("tallyhouse-key-id"),
                header("tallyhouse-signature"),
                header("repr-digest"),
            );
            let mut bytes = Vec::new();
            let mut stream = resp.bytes_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| {
                    CliError::Connect(format!("download cut: {}", gw.describe_error(&e)))
                })?;
                bytes.extend_from_slice(&chunk);
            }
            use base64::Engine as _;
            let want = format!(
                "sha-256=:{}:",
                base64::engine::general_purpose::STANDARD.encode(evidence::sha256(&bytes))
            );
            if digest != want {
                return Err(CliError::Verification(format!(
                    "the downloaded bytes do not match the Repr-Digest header ({digest})"
                )));
            }
            let path = out.unwrap_or_else(|| PathBuf::from(format!("{package_id}.json")));
            // FILE.sig as `tallyhouse sign` writes it: base64 of the DER.
            evidence::decode_signature_header(&signature)
                .map_err(|e| CliError::Verification(format!("signature header: {e}")))?;
            for (p, content) in [
                (path.clone(), bytes.as_slice()),
                (files::with_suffix(&path, ".sig"), signature.as_bytes()),
                (files::with_suffix(&path, ".key-id"), key_id.as_bytes()),
            ] {
                files::replace(&p, content, 0o644)
                    .map_err(|e| input_error(format!("cannot write {}: {e}", p.display())))?;
            }
            ctx.output.print(
                &serde_json::json!({"file": path, "bytes": bytes.len(), "key_id": key_id}),
                || {
                    format!(
                        "{} ({} bytes); signature in {} (base64 DER), key id {}\n\
                         verify: base64 -d {} > sig.der && \
                         openssl dgst -sha256 -verify <public key PEM> -signature sig.der {}",
                        path.display(),
                        bytes.len(),
                        files::with_suffix(&path, ".sig").display(),
                        key_id,
                        files::with_suffix(&path, ".sig").display(),
                        path.display()
                    )
                },
            );
            Ok(())
        }
    }
}

/// `tallyhouse series SUBMITTER SERIES --from --to`.
pub async fn series(args: SeriesArgs, ctx: &Context) -> Result<(), CliError> {
    let gw = gateway(&args.session)?;
    let token = bearer(&args.session, &gw)?;
    let mut query: Vec<(String, String)> = vec![
        ("submitter".into(), args.submitter.to_string()),
        ("series".into(), args.series.clone()),
        (
            "from".into(),
            args.from.format(&Rfc3339).unwrap_or_default(),
        ),
        ("to".into(), args.to.format(&Rfc3339).unwrap_or_default()),
        ("bucket".into(), args.bucket.clone()),
        ("agg".into(), args.agg.clone()),
    ];
    for (k, v) in &args.labels {
        query.push((format!("label.{k}"), v.clone()));
    }
    let csv = args.csv && !ctx.output.json;
    let req = gw
        .request(Method::GET, "/v1/series")
        .query(&query)
        .bearer_auth(&token)
        .header("accept", if csv { "text/csv" } else { "application/json" });
    let resp = send(&gw, req).await?;
    if csv {
        // Straight through, as it streams.
        let mut out = std::io::stdout().lock();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk
                .map_err(|e| CliError::Connect(format!("stream cut: {}", gw.describe_error(&e))))?;
            out.write_all(&chunk)
                .map_err(|e| input_error(format!("cannot write: {e}")))?;
        }
        return Ok(());
    }
    let answer: serde_json::Value = json(&gw, resp).await?;
    ctx.output.print(&answer, || {
        let rows: Vec<Vec<String>> = answer["points"]
            .as_array()
            .map(|points| {
                points
                    .iter()
                    .map(|p| {
                        vec![
                            p["bucket"].as_str().unwrap_or_default().to_owned(),
                            p["value"].to_string(),
                            p["count"].to_string(),
                        ]
                    })
                    .collect()
            })
            .unwrap_or_default();
        table(&["BUCKET", &args.agg.to_uppercase(), "RECORDS"], &rows)
    });
    Ok(())
}
