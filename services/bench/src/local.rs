//! The local run the service benchmarks measure on: the servers
//! `deployment/stack-up.sh` started and the settings it left in
//! `.run/state/` (the OpenBao root token, the S3 key pair), found the way
//! `deployment/test.sh` finds them; the release binaries of the services,
//! built the way an operator would build them; and the platform those
//! binaries make when the end-to-end harness starts them for a benchmark.

use crate::cpu::{Scope, Watched, pid_listening_on};
use crate::harness::Context;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tests::stack::{Stack, StackOptions};

/// Written by `deployment/stack-up.sh`, relative to the repository root.
const ROOT_TOKEN_FILE: &str = ".run/state/vault-root-token";
/// Written by `deployment/stack-up.sh`: `access_key_id=…` and
/// `secret_access_key=…` lines.
const S3_CREDENTIALS_FILE: &str = ".run/state/s3-credentials";

/// The fixed local addresses of `deployment/lib.sh`.
pub const PG_PORT: u16 = 5432;
/// RabbitMQ.
pub const AMQP_PORT: u16 = 5672;
/// OpenBao.
pub const VAULT_PORT: u16 = 8200;
/// s3s-fs.
pub const S3_PORT: u16 = 9000;

/// The variables the end-to-end harness (`tests::stack`) reads, as
/// `deployment/test.sh` exports them. The first is the one whose absence
/// means "not set up yet".
const VARIABLES: [&str; 7] = [
    "TALLYHOUSE_TEST_VAULT_ROOT_TOKEN",
    "TALLYHOUSE_TEST_S3_ACCESS_KEY_ID",
    "TALLYHOUSE_TEST_S3_SECRET_ACCESS_KEY",
    "TALLYHOUSE_TEST_AMQP_URI",
    "VAULT_ADDR",
    "TALLYHOUSE_TEST_DATABASE_URL",
    "TALLYHOUSE_TEST_S3_ENDPOINT",
];

/// The repository of the local run: the current directory or its nearest
/// parent holding `.run/state/vault-root-token`, else the repository this
/// binary was built from.
pub fn repository_root() -> anyhow::Result<PathBuf> {
    let cwd = std::env::current_dir()?;
    if let Some(root) = cwd
        .ancestors()
        .find(|dir| dir.join(ROOT_TOKEN_FILE).is_file())
    {
        return Ok(root.to_path_buf());
    }
    // services/bench → the workspace root.
    let built_from = Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf);
    match built_from {
        Some(root) if root.join(ROOT_TOKEN_FILE).is_file() => Ok(root),
        _ => anyhow::bail!(
            "no local run found ({ROOT_TOKEN_FILE} in {} or a parent, or in {}): run \
             deployment/stack-up.sh first",
            cwd.display(),
            env!("CARGO_MANIFEST_DIR")
        ),
    }
}

/// The test harness's variables from the local run's state files, if any
/// of them is missing from this process's environment; `None` when the
/// environment already has them all (e.g. under `deployment/test.sh`).
#[allow(clippy::disallowed_methods)] // the harness's settings, as the test command exports them
pub fn missing_environment() -> anyhow::Result<Option<Vec<(String, String)>>> {
    if VARIABLES.iter().all(|v| std::env::var_os(v).is_some()) {
        return Ok(None);
    }
    let root = repository_root()?;
    let read = |file: &str| {
        std::fs::read_to_string(root.join(file)).map_err(|e| {
            anyhow::anyhow!(
                "cannot read {} ({e}): run deployment/stack-up.sh first",
                root.join(file).display()
            )
        })
    };
    let token = read(ROOT_TOKEN_FILE)?.trim().to_owned();
    let s3 = read(S3_CREDENTIALS_FILE)?;
    let s3_value = |key: &str| {
        s3.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("no {key} in {S3_CREDENTIALS_FILE}"))
    };
    let host = "127.0.0.1";
    // As deployment/test.sh sets them, all together, so that a stray
    // VAULT_ADDR in the caller's shell cannot pair with this token.
    Ok(Some(vec![
        (VARIABLES[0].into(), token),
        (VARIABLES[1].into(), s3_value("access_key_id")?),
        (VARIABLES[2].into(), s3_value("secret_access_key")?),
        (
            VARIABLES[3].into(),
            format!("amqp://guest:guest@{host}:{AMQP_PORT}/%2f"),
        ),
        (VARIABLES[4].into(), format!("http://{host}:{VAULT_PORT}")),
        (
            VARIABLES[5].into(),
            format!("postgres://postgres@{host}:{PG_PORT}/postgres"),
        ),
        (VARIABLES[6].into(), format!("http://{host}:{S3_PORT}")),
    ]))
}

/// Fails with a readable message unless PostgreSQL, RabbitMQ, OpenBao and
/// the S3 server accept connections on their local ports.
pub async fn check_servers() -> anyhow::Result<()> {
    let mut down = Vec::new();
    for (name, port) in [
        ("PostgreSQL", PG_PORT),
        ("RabbitMQ", AMQP_PORT),
        ("OpenBao", VAULT_PORT),
        ("s3s-fs", S3_PORT),
    ] {
        let connect = tokio::net::TcpStream::connect(("127.0.0.1", port));
        if !matches!(
            tokio::time::timeout(Duration::from_secs(3), connect).await,
            Ok(Ok(_))
        ) {
            down.push(format!("{name} (127.0.0.1:{port})"));
        }
    }
    anyhow::ensure!(
        down.is_empty(),
        "not answering: {}; run deployment/stack-up.sh first",
        down.join(", ")
    );
    Ok(())
}

/// Builds the services the benchmark runs, in this binary's profile, into
/// this binary's target directory (`cargo build --release -p registry -p
/// auth -p ingest -p query -p gateway` when run with `cargo run
/// --release`), so that what is measured is the source as it is. Cargo is the one that ran this binary
/// (`$CARGO`), else `cargo` from `PATH`.
#[allow(clippy::disallowed_methods)] // CARGO is set by `cargo run`, not configuration
pub async fn build_services(root: &Path, packages: &[&str]) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .unwrap_or("release")
        .to_owned();
    let target_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow::anyhow!("{} is not in a target directory", exe.display()))?
        .to_path_buf();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .arg("build")
        .arg("--target-dir")
        .arg(&target_dir);
    match profile_dir.as_str() {
        "release" => {
            cmd.arg("--release");
        }
        "debug" => eprintln!(
            "bench: warning: this is a debug build, so are the services it measures; use --release"
        ),
        other => {
            cmd.arg("--profile").arg(other);
        }
    }
    for p in packages {
        cmd.arg("-p").arg(p);
    }
    eprintln!("bench: building the services: {cmd:?}");
    let status = tokio::task::spawn_blocking(move || cmd.status()).await??;
    anyhow::ensure!(status.success(), "building the services failed ({status})");
    Ok(())
}

/// Fails unless each of `names` is built next to this binary (where the
/// end-to-end harness looks for it).
pub fn check_binaries(names: &[&str]) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .ok_or_else(|| anyhow::anyhow!("{} has no folder", exe.display()))?;
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| !dir.join(n).is_file())
        .collect();
    anyhow::ensure!(
        missing.is_empty(),
        "missing in {}: {} (drop --no-build, or build them in this profile)",
        dir.display(),
        missing.join(", ")
    );
    Ok(())
}

/// The OpenBao root token of the local run.
pub fn vault_root_token() -> anyhow::Result<String> {
    let path = repository_root()?.join(ROOT_TOKEN_FILE);
    let token = std::fs::read_to_string(&path).map_err(|e| {
        anyhow::anyhow!(
            "cannot read {} ({e}): run deployment/stack-up.sh first",
            path.display()
        )
    })?;
    Ok(token.trim().to_owned())
}

/// Starts the services for benchmark `name` with the end-to-end harness,
/// after checking the servers and building the services (unless
/// `--no-build`); their output goes to `.run/logs/bench-<name>/`.
/// `options.log_dir` is set here. Undo with [`stop_stack`].
pub async fn start_stack(
    ctx: &Context,
    name: &str,
    options: StackOptions,
) -> anyhow::Result<Stack> {
    let root = repository_root()?;
    check_servers().await?;
    if !ctx.no_build {
        build_services(&root, &tests::stack::BINARIES).await?;
    }
    check_binaries(&tests::stack::BINARIES)?;
    let logs = root.join(format!(".run/logs/bench-{name}"));
    eprintln!(
        "bench: starting {} (logs in {})",
        tests::stack::BINARIES.join(", "),
        logs.display()
    );
    Ok(Stack::start(StackOptions {
        log_dir: Some(logs),
        ..options
    })
    .await)
}

/// Stops what [`start_stack`] started and removes what it made: the
/// bucket with its objects, the processes, databases, roles and RPC queues
/// and exchanges.
pub async fn stop_stack(stack: Stack) {
    eprintln!("bench: cleaning up");
    match stack.remove_bucket().await {
        Ok(n) => eprintln!("bench: deleted bucket {} ({n} objects)", stack.bucket),
        Err(e) => eprintln!("bench: cannot delete bucket {}: {e}", stack.bucket),
    }
    stack.finish().await;
    eprintln!("bench: dropped the databases, the service role and the RPC namespace");
}

/// The local servers among `which` (name, port, scope), found by the port
/// they listen on, to watch their CPU time; those that cannot be found are
/// said on stderr and left out.
pub fn watched_servers(which: &[(&str, u16, Scope)]) -> Vec<Watched> {
    let mut watched = Vec::new();
    for &(name, port, scope) in which {
        match pid_listening_on(port) {
            Some(pid) => watched.push(Watched {
                name: name.into(),
                pid,
                scope,
            }),
            None => eprintln!(
                "bench: cannot tell which process listens on {port}: no {name} CPU figures"
            ),
        }
    }
    watched
}

/// The service processes of `stack` named in `names`, to watch their CPU
/// time.
pub fn watched_services(stack: &mut Stack, names: &[&str]) -> Vec<Watched> {
    names
        .iter()
        .map(|&name| Watched {
            name: name.into(),
            pid: stack.process(name).id(),
            scope: Scope::Process,
        })
        .collect()
}

/// A back-office user of `stack` with `role`, added over RPC (as the
/// operator does with `tallyhouse user add`) with a random password:
/// returns the password and a fresh access token from `POST
/// /v1/auth/login` through the gateway.
pub async fn back_office_user(
    stack: &Stack,
    http: &reqwest::Client,
    username: &str,
    role: rpc_contracts::auth::Role,
) -> anyhow::Result<(String, String)> {
    use rpc_contracts::auth::{self, Password};
    let password = format!("bench-{}", uuid::Uuid::new_v4().simple());
    stack
        .rpc
        .call::<auth::AddUser>(&auth::AddUserRequest {
            username: username.to_owned(),
            roles: vec![role],
            password: Password(password.clone()),
            actor: None,
        })
        .await
        .map_err(|e| anyhow::anyhow!("adding back-office user {username}: {e}"))?;
    let token = login(http, &stack.base_url, username, &password).await?;
    Ok((password, token))
}

/// `POST /v1/auth/login` through the gateway at `base_url`: the access
/// token.
pub async fn login(
    http: &reqwest::Client,
    base_url: &str,
    username: &str,
    password: &str,
) -> anyhow::Result<String> {
    let resp = http
        .post(format!("{base_url}/v1/auth/login"))
        .json(&serde_json::json!({ "username": username, "password": password }))
        .send()
        .await?;
    let status = resp.status();
    anyhow::ensure!(status == 200, "login of {username}: {status}");
    let token: rpc_contracts::auth::AccessToken = resp.json().await?;
    Ok(token.access_token)
}
