//! Private servers a scenario may break without touching the shared ones
//! (PostgreSQL 5432, RabbitMQ 5672, OpenBao 8200 and s3s-fs 9000 stay up):
//! a PostgreSQL cluster of its own (initdb in a temporary folder, trust
//! authentication), an s3s-fs on its own port and folder, an OpenBao dev
//! server that can be sealed, a TCP proxy that can stall the connections
//! through it (a network black hole) and one that delays them (latency with
//! jitter, order kept); and what `/proc` says of a process (resident
//! memory, open files, threads).

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tests::{ChildProcess, free_port};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.stdin(Stdio::null()).output()?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Waits until something accepts TCP connections on `port`.
pub async fn wait_for_port(port: u16, within: Duration) -> anyhow::Result<()> {
    let until = Instant::now() + within;
    loop {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < until,
            "nothing listens on 127.0.0.1:{port} after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn temp_dir(what: &str) -> anyhow::Result<PathBuf> {
    let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let dir = std::env::temp_dir().join(format!("tallyhouse-chaos-{what}-{id}"));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

// --- PostgreSQL ----------------------------------------------------------------

/// A PostgreSQL cluster of its own: `initdb` into a temporary folder (run as
/// the `postgres` user when this process is root, as initdb refuses root),
/// listening on 127.0.0.1 on a port of its own with trust authentication.
pub struct PrivatePostgres {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl PrivatePostgres {
    fn pg_bin() -> anyhow::Result<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.path().join("bin"))
                    .filter(|b| b.join("initdb").is_file())
                    .collect()
            })
            .unwrap_or_default();
        found.sort();
        found
            .pop()
            .ok_or_else(|| anyhow::anyhow!("no /usr/lib/postgresql/<version>/bin/initdb"))
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            let mut cmd = Command::new("runuser");
            cmd.arg("-u").arg("postgres").arg("--").arg(path);
            cmd
        } else {
            Command::new(path)
        }
    }

    /// Creates and starts the cluster (a few seconds).
    pub fn start() -> anyhow::Result<Self> {
        let bin = Self::pg_bin()?;
        let dir = temp_dir("pg")?;
        let as_postgres = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        if as_postgres {
            run(Command::new("chown")
                .arg("-R")
                .arg("postgres:postgres")
                .arg(&dir))?;
        }
        let pg = Self {
            bin,
            dir,
            port: free_port(),
            as_postgres,
        };
        run(pg
            .command("initdb")
            .arg("-D")
            .arg(pg.dir.join("data"))
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]))?;
        pg.start_server()?;
        Ok(pg)
    }

    fn start_server(&self) -> anyhow::Result<()> {
        run(self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(["-w", "-t", "120", "-o"])
            .arg(format!(
                "-p {} -c listen_addresses=127.0.0.1 -k {} -c max_connections=60",
                self.port,
                self.dir.display()
            ))
            .arg("start"))
    }

    /// Its superuser URL.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// `pg_ctl stop -m immediate`: every backend killed at once, no
    /// checkpoint; the next start runs crash recovery.
    pub fn stop_immediate(&self) -> anyhow::Result<()> {
        run(self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"]))
    }

    /// Starts it again (crash recovery) and waits until it accepts.
    pub fn restart(&self) -> anyhow::Result<()> {
        self.start_server()
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// --- s3s-fs ------------------------------------------------------------------------

/// An s3s-fs of its own (the shared one's key pair), on its own port and
/// folder, that can be killed and started again on both.
pub struct PrivateS3 {
    process: Option<ChildProcess>,
    bin: PathBuf,
    port: u16,
    dir: PathBuf,
    key: String,
    secret: String,
    log: PathBuf,
}

impl PrivateS3 {
    /// Starts it with the access key pair `key`/`secret`.
    pub async fn start(key: &str, secret: &str, log_dir: &Path) -> anyhow::Result<Self> {
        let bin = [
            dirs_home().map(|h| h.join(".cargo/bin/s3s-fs")),
            Some(PathBuf::from("/usr/local/bin/s3s-fs")),
        ]
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("s3s-fs"));
        std::fs::create_dir_all(log_dir)?;
        let mut s3 = Self {
            process: None,
            bin,
            port: free_port(),
            dir: temp_dir("s3")?,
            key: key.to_owned(),
            secret: secret.to_owned(),
            log: log_dir.join("s3s-fs.log"),
        };
        s3.spawn().await?;
        Ok(s3)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = Command::new(&self.bin);
        cmd.args(["--host", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .arg("--access-key")
            .arg(&self.key)
            .arg("--secret-key")
            .arg(&self.secret)
            .arg(&self.dir)
            .stdout(log.try_clone()?)
            .stderr(log);
        self.process = Some(ChildProcess::spawn("s3s-fs", &mut cmd)?);
        wait_for_port(self.port, Duration::from_secs(30)).await
    }

    /// Its endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills it (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// Starts it again on the same port and folder.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.spawn().await
    }
}

impl Drop for PrivateS3 {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[allow(clippy::disallowed_methods)] // where `cargo install` put s3s-fs, not configuration
fn dirs_home() -> Option<PathBuf> {
    std::env::var_os("HOME").map(PathBuf::from)
}

// --- OpenBao -----------------------------------------------------------------------

/// An OpenBao dev server of its own (in memory), which can be sealed and
/// unsealed with the key it prints at start.
pub struct PrivateBao {
    /// Killed when dropped.
    _process: ChildProcess,
    pub addr: String,
    pub root: String,
    unseal_key: String,
    http: reqwest::Client,
}

impl PrivateBao {
    /// Starts `bao server -dev` (the repository's `.venv/bin/bao`, else
    /// `bao` on the PATH) and waits until it is healthy.
    pub async fn start(repo: &Path) -> anyhow::Result<Self> {
        let venv = repo.join(".venv/bin/bao");
        let bin = if venv.is_file() {
            venv
        } else {
            PathBuf::from("bao")
        };
        let port = free_port();
        let root = format!("root-{}", uuid::Uuid::new_v4().simple());
        let mut cmd = Command::new(bin);
        cmd.args([
            "server",
            "-dev",
            &format!("-dev-root-token-id={root}"),
            &format!("-dev-listen-address=127.0.0.1:{port}"),
        ])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", std::env::temp_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        let mut process = ChildProcess::spawn("openbao", &mut cmd)?;
        let stdout = process
            .take_stdout()
            .ok_or_else(|| anyhow::anyhow!("no stdout from bao"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(key) = line.trim().strip_prefix("Unseal Key: ") {
                    let _ = tx.send(key.trim().to_owned());
                }
            }
        });
        let unseal_key =
            tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(60)))
                .await?
                .map_err(|_| anyhow::anyhow!("bao server -dev printed no unseal key in 60 s"))?;
        let bao = Self {
            _process: process,
            addr: format!("http://127.0.0.1:{port}"),
            root,
            unseal_key,
            http: reqwest::Client::new(),
        };
        let until = Instant::now() + Duration::from_secs(30);
        while bao.health().await != Some(200) {
            anyhow::ensure!(
                Instant::now() < until,
                "the private OpenBao never became healthy"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(bao)
    }

    /// `sys/health`'s status (200 unsealed, 503 sealed).
    pub async fn health(&self) -> Option<u16> {
        self.http
            .get(format!("{}/v1/sys/health", self.addr))
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16())
    }

    /// Calls the API with the root token; fails unless 2xx.
    pub async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}/v1/{path}", self.addr))
            .header("x-vault-token", &self.root);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        anyhow::ensure!(status.is_success(), "{method} {path}: {status}: {text}");
        Ok(serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
    }

    /// Seals it.
    pub async fn seal(&self) -> anyhow::Result<()> {
        self.api(reqwest::Method::PUT, "sys/seal", None).await?;
        anyhow::ensure!(
            self.health().await == Some(503),
            "still unsealed after sys/seal"
        );
        Ok(())
    }

    /// Unseals it with its key.
    pub async fn unseal(&self) -> anyhow::Result<()> {
        let state = self
            .api(
                reqwest::Method::PUT,
                "sys/unseal",
                Some(serde_json::json!({ "key": self.unseal_key })),
            )
            .await?;
        anyhow::ensure!(
            state["sealed"] == serde_json::json!(false),
            "still sealed: {state}"
        );
        Ok(())
    }

    /// A database secrets engine at `mount` whose role `svc` makes logins
    /// (lease `ttl`, e.g. `10s`) that are members of `group` on the server
    /// of the superuser URL `admin_url`.
    pub async fn database_engine(
        &self,
        mount: &str,
        admin_url: &str,
        group: &str,
        ttl: &str,
    ) -> anyhow::Result<()> {
        let (host, port, user, password) = platform::testing::database_login(admin_url);
        self.api(
            reqwest::Method::POST,
            &format!("sys/mounts/{mount}"),
            Some(serde_json::json!({ "type": "database" })),
        )
        .await?;
        self.api(
            reqwest::Method::POST,
            &format!("{mount}/config/pg"),
            Some(serde_json::json!({
                "plugin_name": "postgresql-database-plugin",
                "connection_url": format!("postgresql://{{{{username}}}}:{{{{password}}}}@{host}:{port}/postgres?sslmode=disable"),
                "username": user,
                "password": if password.is_empty() { "unused-with-trust-auth".to_owned() } else { password },
                "allowed_roles": ["svc"],
                "verify_connection": true,
            })),
        )
        .await?;
        self.api(
            reqwest::Method::POST,
            &format!("{mount}/roles/svc"),
            Some(serde_json::json!({
                "db_name": "pg",
                "creation_statements": [format!(
                    "CREATE ROLE \"{{{{name}}}}\" WITH LOGIN PASSWORD '{{{{password}}}}' VALID UNTIL '{{{{expiration}}}}' IN ROLE \"{group}\";"
                )],
                "revocation_statements": ["DROP ROLE IF EXISTS \"{{name}}\";"],
                "default_ttl": ttl,
                "max_ttl": "1h",
            })),
        )
        .await?;
        Ok(())
    }

    /// Revokes every lease under `prefix` (drops the logins it made).
    pub async fn revoke_prefix(&self, prefix: &str) -> anyhow::Result<()> {
        self.api(
            reqwest::Method::PUT,
            &format!("sys/leases/revoke-prefix/{prefix}"),
            None,
        )
        .await
        .map(|_| ())
    }
}

// --- A proxy that can stall ---------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Open,
    Stall,
}

/// A loopback TCP proxy whose connections can be stalled, as a network
/// black hole would: while stalled, no byte moves either way on existing
/// connections, and new connections are accepted but not forwarded (their
/// handshake hangs); on restore everything flows again, held connections
/// included.
pub struct StallProxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    stop: CancellationToken,
    live: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
}

impl StallProxy {
    /// Forwards a fresh loopback port to `target`.
    pub async fn start(target: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (mode, _) = watch::channel(Mode::Open);
        let stop = CancellationToken::new();
        let live = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (tx, st, lv, ac) = (mode.clone(), stop.clone(), live.clone(), accepted.clone());
        tokio::spawn(async move {
            loop {
                let inbound = tokio::select! {
                    () = st.cancelled() => return,
                    a = listener.accept() => match a {
                        Ok((s, _)) => s,
                        Err(_) => continue,
                    },
                };
                ac.fetch_add(1, Ordering::Relaxed);
                let (rx, st, lv) = (tx.subscribe(), st.clone(), lv.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        () = st.cancelled() => {}
                        () = forward(inbound, target, rx, lv) => {}
                    }
                });
            }
        });
        Ok(Self {
            addr,
            mode,
            stop,
            live,
            accepted,
        })
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops every byte.
    pub fn stall(&self) {
        self.mode.send_replace(Mode::Stall);
    }

    /// Lets bytes flow again.
    pub fn restore(&self) {
        self.mode.send_replace(Mode::Open);
    }

    /// Connections open through it now (forwarding or held).
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Connections accepted since it started.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for StallProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn open(rx: &mut watch::Receiver<Mode>) -> bool {
    while *rx.borrow_and_update() == Mode::Stall {
        if rx.changed().await.is_err() {
            return false;
        }
    }
    true
}

async fn forward(
    inbound: TcpStream,
    target: SocketAddr,
    mut rx: watch::Receiver<Mode>,
    live: Arc<AtomicUsize>,
) {
    struct Live(Arc<AtomicUsize>);
    impl Drop for Live {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::Relaxed);
        }
    }
    live.fetch_add(1, Ordering::Relaxed);
    let _live = Live(live);
    if !open(&mut rx).await {
        return;
    }
    let Ok(outbound) = TcpStream::connect(target).await else {
        return;
    };
    let (ir, iw) = inbound.into_split();
    let (or, ow) = outbound.into_split();
    tokio::select! {
        () = pump(ir, ow, rx.clone()) => {}
        () = pump(or, iw, rx) => {}
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut rx: watch::Receiver<Mode>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if !open(&mut rx).await {
            return;
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            c = rx.changed() => {
                if c.is_err() {
                    return;
                }
                continue;
            }
        };
        // Bytes read just before a stall wait for the end of it.
        if !open(&mut rx).await {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

// --- A proxy that delays -------------------------------------------------------------

/// A one-way delay drawn uniformly from `[min, max]` for every chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DelaySpec {
    pub min: Duration,
    pub max: Duration,
}

impl DelaySpec {
    /// No delay.
    pub const NONE: Self = Self {
        min: Duration::ZERO,
        max: Duration::ZERO,
    };

    /// `mean ± jitter` (the lower end not below zero).
    pub fn around(mean: Duration, jitter: Duration) -> Self {
        Self {
            min: mean.saturating_sub(jitter),
            max: mean + jitter,
        }
    }

    /// The mean one-way delay.
    pub fn mean(&self) -> Duration {
        (self.min + self.max) / 2
    }

    fn sample(&self) -> Duration {
        if self.max <= self.min {
            return self.min;
        }
        // A small, fast pseudo-random draw (not for anything secret).
        static STATE: AtomicU64 = AtomicU64::new(0x2545_F491_4F6C_DD1D);
        let mut x = STATE.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        self.min + (self.max - self.min).mul_f64((x % 1_000_001) as f64 / 1_000_000.0)
    }
}

/// Counters of one direction of a [`DelayProxy`]: chunks that were given a
/// delay, and the delay they really had (from being read to being written,
/// which includes waiting behind earlier chunks: order is kept).
#[derive(Debug, Default)]
struct DirCounters {
    chunks: AtomicU64,
    bytes: AtomicU64,
    applied_us_sum: AtomicU64,
    applied_us_max: AtomicU64,
}

/// A snapshot of one direction's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirStats {
    /// Chunks given a delay.
    pub chunks: u64,
    pub bytes: u64,
    /// Sum and maximum of the delays really applied, microseconds.
    pub applied_us_sum: u64,
    pub applied_us_max: u64,
}

impl DirCounters {
    fn snapshot(&self) -> DirStats {
        DirStats {
            chunks: self.chunks.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            applied_us_sum: self.applied_us_sum.load(Ordering::Relaxed),
            applied_us_max: self.applied_us_max.load(Ordering::Relaxed),
        }
    }
}

/// Both directions: `up` towards the target (client → server), `down` back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DelayStats {
    pub up: DirStats,
    pub down: DirStats,
}

impl DirStats {
    /// What was counted between `earlier` and `self` (the maximum is the
    /// one since the start: it is reset by [`DelayProxy::reset_max`]).
    pub fn since(&self, earlier: &DirStats) -> DirStats {
        DirStats {
            chunks: self.chunks - earlier.chunks,
            bytes: self.bytes - earlier.bytes,
            applied_us_sum: self.applied_us_sum - earlier.applied_us_sum,
            applied_us_max: self.applied_us_max,
        }
    }

    /// `{chunks, bytes, mean_ms, max_ms}`.
    pub fn json(&self) -> serde_json::Value {
        let mean_ms = (self.chunks > 0)
            .then(|| (self.applied_us_sum as f64 / self.chunks as f64 / 100.0).round() / 10.0);
        serde_json::json!({
            "chunks": self.chunks,
            "bytes": self.bytes,
            "mean_ms": mean_ms,
            "max_ms": (self.applied_us_max as f64 / 100.0).round() / 10.0,
        })
    }
}

/// A loopback TCP proxy that adds latency: every chunk read from either
/// side is written to the other a drawn delay later ([`DelaySpec`], changed
/// at any time with [`DelayProxy::set_delay`]), in the order it was read
/// (a chunk whose delay would pass an earlier one waits for it, as on a
/// single link). Throughput is not limited; a half-close is passed on after
/// the bytes before it.
pub struct DelayProxy {
    addr: SocketAddr,
    delay: watch::Sender<DelaySpec>,
    stop: CancellationToken,
    live: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
    up: Arc<DirCounters>,
    down: Arc<DirCounters>,
}

impl DelayProxy {
    /// Forwards a fresh loopback port to `target`, without delay at first.
    pub async fn start(target: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (delay, _) = watch::channel(DelaySpec::NONE);
        let stop = CancellationToken::new();
        let live = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let up = Arc::new(DirCounters::default());
        let down = Arc::new(DirCounters::default());
        let (tx, st, lv, ac, u, d) = (
            delay.clone(),
            stop.clone(),
            live.clone(),
            accepted.clone(),
            up.clone(),
            down.clone(),
        );
        tokio::spawn(async move {
            loop {
                let inbound = tokio::select! {
                    () = st.cancelled() => return,
                    a = listener.accept() => match a {
                        Ok((s, _)) => s,
                        Err(_) => continue,
                    },
                };
                ac.fetch_add(1, Ordering::Relaxed);
                let (rx, st, lv, u, d) =
                    (tx.subscribe(), st.clone(), lv.clone(), u.clone(), d.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        () = st.cancelled() => {}
                        () = forward_delayed(inbound, target, rx, lv, u, d) => {}
                    }
                });
            }
        });
        Ok(Self {
            addr,
            delay,
            stop,
            live,
            accepted,
            up,
            down,
        })
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The delay of chunks read from now on (`DelaySpec::NONE` removes it;
    /// chunks already waiting keep theirs).
    pub fn set_delay(&self, delay: DelaySpec) {
        self.delay.send_replace(delay);
    }

    /// Connections open through it now.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Connections accepted since it started.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    /// The counters so far.
    pub fn stats(&self) -> DelayStats {
        DelayStats {
            up: self.up.snapshot(),
            down: self.down.snapshot(),
        }
    }

    /// Starts the maxima of [`DelayProxy::stats`] over.
    pub fn reset_max(&self) {
        self.up.applied_us_max.store(0, Ordering::Relaxed);
        self.down.applied_us_max.store(0, Ordering::Relaxed);
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn forward_delayed(
    inbound: TcpStream,
    target: SocketAddr,
    delay: watch::Receiver<DelaySpec>,
    live: Arc<AtomicUsize>,
    up: Arc<DirCounters>,
    down: Arc<DirCounters>,
) {
    struct Live(Arc<AtomicUsize>);
    impl Drop for Live {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::Relaxed);
        }
    }
    live.fetch_add(1, Ordering::Relaxed);
    let _live = Live(live);
    let Ok(outbound) = TcpStream::connect(target).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (ir, iw) = inbound.into_split();
    let (or, ow) = outbound.into_split();
    // Each direction ends on its own (after passing on a half-close), so
    // what one side sent before closing still reaches the other.
    tokio::join!(
        delayed_pump(ir, ow, delay.clone(), up),
        delayed_pump(or, iw, delay, down),
    );
}

/// Reads chunks from `from`, stamps each with when it is due (now plus a
/// drawn delay), and writes them to `to` in order, each not before it is
/// due.
async fn delayed_pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: watch::Receiver<DelaySpec>,
    counters: Arc<DirCounters>,
) {
    // Bounded: a slow reader on the far side pushes back on this one.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Instant, Instant, Vec<u8>)>(256);
    let reader = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = tokio::select! {
                r = from.read(&mut buf) => match r {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                },
                // The writer is gone (the far side closed): stop reading.
                () = tx.closed() => return,
            };
            let now = Instant::now();
            let d = delay.borrow().sample();
            if tx.send((now, now + d, buf[..n].to_vec())).await.is_err() {
                return;
            }
        }
    };
    let writer = async move {
        while let Some((read_at, due, chunk)) = rx.recv().await {
            let delayed = due > read_at;
            tokio::time::sleep_until(due).await;
            if delayed {
                let applied = read_at.elapsed().as_micros() as u64;
                counters.chunks.fetch_add(1, Ordering::Relaxed);
                counters
                    .bytes
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                counters
                    .applied_us_sum
                    .fetch_add(applied, Ordering::Relaxed);
                counters
                    .applied_us_max
                    .fetch_max(applied, Ordering::Relaxed);
            }
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        // The reader saw the end: pass the half-close on.
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

// --- /proc -----------------------------------------------------------------------------

/// What `/proc` says of a process now.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcStats {
    /// Resident memory, KiB (`VmRSS`).
    pub rss_kib: u64,
    /// Open file descriptors.
    pub fds: u64,
    /// Threads.
    pub threads: u64,
}

/// `None` when the process is gone.
pub fn proc_stats(pid: u32) -> Option<ProcStats> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    Some(ProcStats {
        rss_kib: field("VmRSS:"),
        fds,
        threads: field("Threads:"),
    })
}

/// Open file descriptors of a process by kind (`socket`, `pipe`,
/// `anon_inode:[eventfd]`, `file`...), to tell what grew.
pub fn fd_kinds(pid: u32) -> std::collections::BTreeMap<String, u64> {
    let mut kinds = std::collections::BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return kinds;
    };
    for e in dir.filter_map(Result::ok) {
        let Ok(target) = std::fs::read_link(e.path()) else {
            continue;
        };
        let t = target.to_string_lossy();
        let kind = if t.starts_with("socket:") {
            "socket".to_owned()
        } else if t.starts_with("pipe:") {
            "pipe".to_owned()
        } else if t.starts_with("anon_inode:") {
            t.into_owned()
        } else {
            "file".to_owned()
        };
        *kinds.entry(kind).or_insert(0) += 1;
    }
    kinds
}

/// Sockets of process `pid` connected to 127.0.0.1:`port` (from
/// `/proc/<pid>/fd` and `/proc/net/tcp`), in any TCP state.
pub fn sockets_to(pid: u32, port: u16) -> u64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    let inodes: std::collections::HashSet<String> = dir
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|t| {
            t.to_string_lossy()
                .strip_prefix("socket:[")
                .and_then(|r| r.strip_suffix(']'))
                .map(str::to_owned)
        })
        .collect();
    let want = format!(":{port:04X}");
    let mut n = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() > 9 && cols[2].ends_with(&want) && inodes.contains(cols[9]) {
                n += 1;
            }
        }
    }
    n
}

#[cfg(test)]
mod proxy_tests {
    use super::*;

    #[test]
    fn a_drawn_delay_stays_within_its_bounds() {
        let d = DelaySpec::around(Duration::from_millis(200), Duration::from_millis(100));
        assert_eq!(
            (d.min, d.max),
            (Duration::from_millis(100), Duration::from_millis(300))
        );
        assert_eq!(d.mean(), Duration::from_millis(200));
        for _ in 0..10_000 {
            let s = d.sample();
            assert!(s >= d.min && s <= d.max, "{s:?} outside {d:?}");
        }
        assert_eq!(DelaySpec::NONE.sample(), Duration::ZERO);
        let low = DelaySpec::around(Duration::from_millis(5), Duration::from_millis(10));
        assert_eq!(low.min, Duration::ZERO);
    }

    /// An echo server on loopback behind the proxy: every byte comes back
    /// in order, each direction carried delayed chunks no faster than the
    /// least delay, and a half-close reaches the server after the bytes
    /// before it (the echo ends, then the client sees the end).
    #[tokio::test]
    async fn the_delay_proxy_keeps_order_and_passes_half_closes_on() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        let proxy = DelayProxy::start(echo_addr).await.unwrap();
        let delay = DelaySpec {
            min: Duration::from_millis(20),
            max: Duration::from_millis(40),
        };
        proxy.set_delay(delay);
        let client = TcpStream::connect(proxy.addr()).await.unwrap();
        let (mut r, mut w) = client.into_split();
        let sent: Vec<u8> = (0..200u32).flat_map(|i| i.to_be_bytes()).collect();
        let started = Instant::now();
        let writer = {
            let sent = sent.clone();
            tokio::spawn(async move {
                for chunk in sent.chunks(4) {
                    w.write_all(chunk).await.unwrap();
                    tokio::task::yield_now().await;
                }
                w.shutdown().await.unwrap();
            })
        };
        let mut back = Vec::new();
        let mut first = None;
        let mut buf = [0u8; 1024];
        loop {
            let n = r.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            first.get_or_insert_with(|| started.elapsed());
            back.extend_from_slice(&buf[..n]);
        }
        writer.await.unwrap();
        assert_eq!(back, sent, "bytes reordered or lost");
        assert!(
            first.unwrap() >= delay.min * 2,
            "the first byte came back after {first:?}, less than two least delays"
        );
        let stats = proxy.stats();
        assert!(stats.up.chunks > 0 && stats.down.chunks > 0, "{stats:?}");
        assert_eq!((stats.up.bytes, stats.down.bytes), (800, 800));
        assert!(stats.up.applied_us_max >= 20_000, "{stats:?}");
        assert!(
            stats.up.applied_us_sum >= stats.up.chunks * 20_000,
            "a chunk went through faster than the least delay: {stats:?}"
        );
        // Without delay, nothing more is counted as delayed.
        proxy.set_delay(DelaySpec::NONE);
        let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
        c.write_all(b"ping").await.unwrap();
        let mut four = [0u8; 4];
        c.read_exact(&mut four).await.unwrap();
        assert_eq!(&four, b"ping");
        assert_eq!(proxy.stats().up.chunks, stats.up.chunks);
    }
}
