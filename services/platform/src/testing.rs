//! The black-box test harness (feature `testing`): one isolated world per
//! test on the real RabbitMQ: its own namespace (exchange and queues), the
//! fixture handlers of the `testkit` contracts, a TCP proxy that can cut a
//! connection, and dedicated RabbitMQ nodes a test may stop and restart.

use crate::amqp::{BrokerUri, guard};
use crate::rpc::{RequestContext, RpcConfig, RpcServer, RpcServerBuilder};
use lapin::options::{ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use rpc_contracts::testkit::{self, EchoRequest, EchoResponse, FailRequest, SleepRequest};
use rpc_contracts::{RpcError, ServiceQueue, Topology};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The test broker, from `TALLYHOUSE_TEST_AMQP_URI` or the local default.
#[allow(clippy::disallowed_methods)] // the harness is configured by the test command's environment
pub fn amqp_uri() -> BrokerUri {
    let uri = std::env::var("TALLYHOUSE_TEST_AMQP_URI")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    BrokerUri::parse(&uri).expect("TALLYHOUSE_TEST_AMQP_URI is a valid AMQP URI")
}

/// The test command's OpenBao address (`VAULT_ADDR`, else the local default).
#[allow(clippy::disallowed_methods)] // the harness is configured by the test command's environment
pub fn vault_addr() -> String {
    std::env::var("VAULT_ADDR").unwrap_or_else(|_| "http://127.0.0.1:8200".to_owned())
}

/// The root token of the test command's OpenBao dev server.
#[allow(clippy::disallowed_methods)] // the harness is configured by the test command's environment
pub fn vault_root_token() -> String {
    std::env::var("TALLYHOUSE_TEST_VAULT_ROOT_TOKEN")
        .expect("TALLYHOUSE_TEST_VAULT_ROOT_TOKEN is unset: run the tests with deployment/test.sh")
}

/// A fresh namespace, so each test has its own exchange and queues.
pub fn unique_topology(tag: &str) -> Topology {
    let id = &uuid::Uuid::new_v4().simple().to_string()[..10];
    Topology::new(format!("t-{tag}-{id}")).expect("valid test namespace")
}

/// An RPC configuration with test-friendly bounds (short operation timeouts
/// and reconnect waits).
pub fn rpc_config(topology: &Topology, brokers: Vec<BrokerUri>, name: &str) -> RpcConfig {
    let mut config = RpcConfig::new(brokers, name).with_topology(topology.clone());
    config.op_timeout = Duration::from_secs(3);
    config.default_call_timeout = Duration::from_secs(10);
    config.reconnect_min = Duration::from_millis(50);
    config.reconnect_max = Duration::from_millis(500);
    config
}

/// The fixture handlers of every `testkit` call; `Crash` aborts the process,
/// so only out-of-process fixture servers should receive it.
pub fn testkit_server() -> RpcServerBuilder {
    fn answer(ctx: &RequestContext, payload: rpc_contracts::Bytes) -> EchoResponse {
        EchoResponse {
            payload,
            instance: ctx.instance.to_string(),
            delivery_count: ctx.delivery_count,
        }
    }
    RpcServer::builder(testkit::QUEUE)
        .on::<testkit::Echo, _, _>(
            |ctx, req: EchoRequest| async move { Ok(answer(&ctx, req.payload)) },
        )
        .on::<testkit::Sleep, _, _>(|ctx, req: SleepRequest| async move {
            tokio::time::sleep(Duration::from_millis(req.millis)).await;
            Ok(answer(&ctx, Default::default()))
        })
        .on::<testkit::Fail, _, _>(|_ctx, req: FailRequest| async move {
            Err::<EchoResponse, RpcError>(req.error)
        })
        .on::<testkit::Panic, _, _>(|_ctx, _req: EchoRequest| async move {
            if true {
                panic!("testkit::Panic handler panics on purpose");
            }
            Err::<EchoResponse, RpcError>(RpcError::new(
                rpc_contracts::ErrorCode::Internal,
                "unreachable",
            ))
        })
        .on::<testkit::Crash, _, _>(|_ctx, _req: EchoRequest| async move {
            eprintln!("testkit::Crash: aborting the process on purpose");
            std::process::abort();
            #[allow(unreachable_code)]
            Err::<EchoResponse, RpcError>(RpcError::new(
                rpc_contracts::ErrorCode::Internal,
                "unreachable",
            ))
        })
}

/// Messages ready in `queue` (a passive declare; no consumer is disturbed).
pub async fn queue_depth(uri: &BrokerUri, queue: &str) -> anyhow::Result<u32> {
    let conn = uri.connect("test-probe", Duration::from_secs(5)).await?;
    let channel = guard(
        "channel.open",
        Duration::from_secs(5),
        conn.create_channel(),
    )
    .await?;
    let q = guard(
        "queue.declare passive",
        Duration::from_secs(5),
        channel.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await?;
    let _ = conn.close(200, "bye".into()).await;
    Ok(q.message_count())
}

/// Deletes a test namespace's queues and exchanges for `services`.
pub async fn delete_topology(uri: &BrokerUri, topology: &Topology, services: &[ServiceQueue]) {
    let to = Duration::from_secs(5);
    let Ok(conn) = uri.connect("test-cleanup", to).await else {
        return;
    };
    let Ok(channel) = guard("channel.open", to, conn.create_channel()).await else {
        return;
    };
    for s in services {
        for q in [topology.queue(*s), topology.dead_letter_queue(*s)] {
            let _ = guard(
                "queue.delete",
                to,
                channel.queue_delete(q.as_str().into(), QueueDeleteOptions::default()),
            )
            .await;
        }
    }
    for x in [topology.exchange(), topology.dead_letter_exchange()] {
        let _ = guard(
            "exchange.delete",
            to,
            channel.exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default()),
        )
        .await;
    }
    let _ = conn.close(200, "bye".into()).await;
}

/// A loopback TCP proxy in front of a broker whose connections a test can
/// cut (as a network failure would) and restore.
pub struct TcpProxy {
    addr: SocketAddr,
    enabled: Arc<AtomicBool>,
    generation: Arc<Mutex<CancellationToken>>,
    stop: CancellationToken,
}

impl TcpProxy {
    /// Starts forwarding a fresh loopback port to `target`.
    pub async fn start(target: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let enabled = Arc::new(AtomicBool::new(true));
        let generation = Arc::new(Mutex::new(CancellationToken::new()));
        let stop = CancellationToken::new();
        let (en, gen_, st) = (enabled.clone(), generation.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = st.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((mut inbound, _)) = accepted else {
                    continue;
                };
                if !en.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let token = gen_.lock().expect("proxy lock").clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        () = token.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
        Ok(Self {
            addr,
            enabled,
            generation,
            stop,
        })
    }

    /// The proxy's own address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A broker URI through the proxy, with `via`'s credentials and vhost.
    pub fn uri(&self, user: &str, password: &str) -> BrokerUri {
        BrokerUri::parse(&format!("amqp://{}/%2f", self.addr))
            .expect("valid proxy URI")
            .with_credentials(user, password)
    }

    /// Drops every connection through the proxy and refuses new ones.
    pub fn cut(&self) {
        self.enabled.store(false, Ordering::SeqCst);
        let mut g = self.generation.lock().expect("proxy lock");
        g.cancel();
        *g = CancellationToken::new();
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.enabled.store(true, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.generation.lock().expect("proxy lock").cancel();
    }
}

/// A RabbitMQ node of its own (own ports, data directory and node name),
/// started from the Debian package's scripts, that a test may stop and
/// restart without disturbing the shared broker.
pub struct DedicatedBroker {
    node: String,
    port: u16,
    dist_port: u16,
    dir: PathBuf,
}

/// The ports [`free_port`] picks from: below the kernel's ephemeral range
/// (32768–60999 by default), so no client socket of any process is given
/// one of them between the pick and the server's bind.
const TEST_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A loopback TCP port for a server a test starts (often a child process
/// that binds it later), free now and kept from every other test process.
///
/// `bind(0)` then release, as this was before, let the port go back to the
/// kernel's ephemeral pool: any process's next outgoing connection could
/// take it before the server bound it ("Address already in use", a test
/// failing about once in a few full runs). So the port comes from
/// [`TEST_PORTS`], outside that pool, and is reserved across test processes
/// by a lock on a file named after it (in the temporary folder), held until
/// this process exits; the bind check skips ports a server already holds.
pub fn free_port() -> u16 {
    use rand::Rng as _;
    static HELD: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());
    let dir = std::env::temp_dir().join("tallyhouse-test-ports");
    std::fs::create_dir_all(&dir).expect("create the port reservation folder");
    let mut rng = rand::rng();
    for _ in 0..10_000 {
        let port = rng.random_range(TEST_PORTS);
        let Ok(file) = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(port.to_string()))
        else {
            continue;
        };
        if file.try_lock().is_err() {
            continue; // another test process holds it
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue; // a server listens there (the lock goes with `file`)
        }
        HELD.lock().unwrap_or_else(|e| e.into_inner()).push(file);
        return port;
    }
    panic!("no free loopback port in {TEST_PORTS:?}");
}

fn rabbitmqctl(node: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("rabbitmqctl")
        .arg("-n")
        .arg(node)
        .args(args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "rabbitmqctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

impl DedicatedBroker {
    /// Starts a node and waits until it serves AMQP (about 15 s here).
    pub fn start() -> anyhow::Result<Self> {
        let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let node = format!("t{id}@localhost");
        let port = free_port();
        let dist_port = free_port();
        let dir = std::env::temp_dir().join(format!("tallyhouse-rmq-{id}"));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("enabled_plugins"), "[].\n")?;
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!("listeners.tcp.default = 127.0.0.1:{port}\nloopback_users = none\n"),
        )?;
        // The Debian scripts drop to the rabbitmq user when started as root.
        let _ = Command::new("chown")
            .arg("-R")
            .arg("rabbitmq:rabbitmq")
            .arg(&dir)
            .status();
        let broker = Self {
            node,
            port,
            dist_port,
            dir,
        };
        broker.launch()?;
        Ok(broker)
    }

    /// Runs `rabbitmq-server -detached` for this node (its data kept from
    /// any earlier run) and waits until it serves.
    fn launch(&self) -> anyhow::Result<()> {
        let dir = &self.dir;
        let status = Command::new("rabbitmq-server")
            .arg("-detached")
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", dir.join("pid"))
            .status()?;
        anyhow::ensure!(status.success(), "rabbitmq-server -detached failed");
        rabbitmqctl(
            &self.node,
            &[
                "wait",
                "--timeout",
                "60",
                &self.dir.join("pid").to_string_lossy(),
            ],
        )?;
        rabbitmqctl(&self.node, &["await_startup", "--timeout", "60"])
    }

    /// `n` nodes (at least 1) joined into one cluster of their own: the
    /// first node started, then each other one started and joined to it.
    /// Quorum queues declared afterwards get a replica on every node.
    pub fn start_cluster(n: usize) -> anyhow::Result<Vec<Self>> {
        let mut nodes = vec![Self::start()?];
        for _ in 1..n.max(1) {
            let node = Self::start()?;
            rabbitmqctl(&node.node, &["stop_app"])?;
            rabbitmqctl(&node.node, &["join_cluster", &nodes[0].node])?;
            node.start_app()?;
            nodes.push(node);
        }
        Ok(nodes)
    }

    /// The Erlang node name (`t<hex>@localhost`).
    pub fn node_name(&self) -> &str {
        &self.node
    }

    /// The Erlang VM's process id (from the node's pid file).
    pub fn os_pid(&self) -> anyhow::Result<u32> {
        let text = std::fs::read_to_string(self.dir.join("pid"))?;
        Ok(text.trim().parse()?)
    }

    /// Kills the node's Erlang VM with SIGKILL, as a crash would (its data
    /// directory stays, so [`DedicatedBroker::restart`] brings it back).
    pub fn kill(&self) -> anyhow::Result<()> {
        let pid = self.os_pid()?;
        let status = Command::new("kill")
            .arg("-KILL")
            .arg(pid.to_string())
            .status()?;
        anyhow::ensure!(status.success(), "kill -KILL {pid} failed");
        Ok(())
    }

    /// Starts the node again after [`DedicatedBroker::kill`] (it rejoins
    /// its cluster) and waits until it serves.
    pub fn restart(&self) -> anyhow::Result<()> {
        let _ = std::fs::remove_file(self.dir.join("pid"));
        self.launch()
    }

    /// Runs `rabbitmqctl -n <this node> <args>` and returns its stdout.
    pub fn ctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("rabbitmqctl")
            .arg("-n")
            .arg(&self.node)
            .args(args)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "rabbitmqctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Its AMQP URI (guest/guest).
    pub fn uri(&self) -> BrokerUri {
        BrokerUri::parse(&format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port))
            .expect("valid URI")
    }

    /// Its AMQP address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Stops the RabbitMQ application (connections close, the port refuses),
    /// keeping the node's data.
    pub fn stop_app(&self) -> anyhow::Result<()> {
        rabbitmqctl(&self.node, &["stop_app"])
    }

    /// Starts the application again and waits until it serves.
    pub fn start_app(&self) -> anyhow::Result<()> {
        rabbitmqctl(&self.node, &["start_app"])?;
        rabbitmqctl(&self.node, &["await_startup", "--timeout", "60"])
    }
}

impl Drop for DedicatedBroker {
    fn drop(&mut self) {
        let _ = rabbitmqctl(&self.node, &["stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The test command's PostgreSQL superuser URL (`TALLYHOUSE_TEST_DATABASE_URL`,
/// else the local stack's `postgres://postgres@127.0.0.1:5432/postgres`).
#[allow(clippy::disallowed_methods)] // the harness is configured by the test command's environment
pub fn database_admin_url() -> String {
    std::env::var("TALLYHOUSE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// `url` with its database (path) replaced by `database`, query kept.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let authority_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{database}", &base[..authority_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

async fn connect_admin(admin_url: &str) -> sqlx::PgConnection {
    use sqlx::Connection as _;
    sqlx::PgConnection::connect(admin_url)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot connect to the test PostgreSQL {}: {e}",
                with_database(admin_url, "…")
            )
        })
}

/// A fresh, empty database with a random name (`tallyhouse_test_<hex>`),
/// created through the superuser connection of [`database_admin_url`].
/// Returns its name and a URL of it with the superuser's credentials. Drop it
/// with [`drop_test_database`].
pub async fn test_database() -> (String, String) {
    test_database_on(&database_admin_url()).await
}

/// [`test_database`] on the server of another superuser URL `admin_url`
/// (a second PostgreSQL server, e.g. one with Citus). Drop it with
/// [`drop_test_database_on`].
pub async fn test_database_on(admin_url: &str) -> (String, String) {
    let name = format!(
        "tallyhouse_test_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let mut conn = connect_admin(admin_url).await;
    // The name is ours (hex only), so formatting it into the statement is safe.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
    let url = with_database(admin_url, &name);
    (name, url)
}

/// When the server of `url` preloads Citus (`shared_preload_libraries`),
/// makes the database at `url` (a superuser URL) a single-node Citus
/// database: creates the `citus` extension and, unless a coordinator is
/// registered already, registers the server itself (at the URL's host and
/// port) as the coordinator holding the shards, with 4 shards per table
/// instead of 32 (tests make many small databases). Returns whether it did;
/// on a server without Citus it changes nothing.
pub async fn prepare_citus(url: &str) -> bool {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", with_database(url, "…")));
    let preload: String = sqlx::query_scalar("SELECT current_setting('shared_preload_libraries')")
        .fetch_one(&mut conn)
        .await
        .expect("read shared_preload_libraries");
    if !preload.split(',').any(|lib| lib.trim() == "citus") {
        return false;
    }
    let (host, port, _, _) = database_login(url);
    let statements = [
        "CREATE EXTENSION IF NOT EXISTS citus",
        "SELECT citus_set_coordinator_host($1, $2) \
         WHERE NOT EXISTS (SELECT 1 FROM pg_dist_node WHERE groupid = 0)",
        "SELECT citus_set_node_property($1, $2, 'shouldhaveshards', true) \
         WHERE EXISTS (SELECT 1 FROM pg_dist_node WHERE nodename = $1 AND nodeport = $2 AND NOT shouldhaveshards)",
    ];
    let name = url
        .split('?')
        .next()
        .and_then(|base| base.rsplit_once('/'))
        .map(|(_, db)| db.to_owned())
        .unwrap_or_default();
    assert!(
        name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
        "unexpected database name {name:?}"
    );
    // Read by the sessions that come after (ingest migrate's).
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE \"{name}\" SET citus.shard_count = 4"
    )))
    .execute(&mut conn)
    .await
    .expect("set citus.shard_count");
    for (i, sql) in statements.into_iter().enumerate() {
        let query = sqlx::query(sql);
        let query = if i == 0 {
            query
        } else {
            query.bind(&host).bind(i32::from(port))
        };
        query
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let _ = conn.close().await;
    true
}

/// Drops a database made by [`test_database`], closing its sessions first.
/// Errors are ignored: cleanup must not fail a test.
pub async fn drop_test_database(name: &str) {
    drop_test_database_on(&database_admin_url(), name).await;
}

/// [`drop_test_database`] for a database made by [`test_database_on`].
pub async fn drop_test_database_on(admin_url: &str, name: &str) {
    assert!(
        name.starts_with("tallyhouse_test_")
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
        "refusing to drop {name:?}: not a test database"
    );
    let mut conn = connect_admin(admin_url).await;
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await;
}

/// Host, port, user name and password (empty when none; as written in the
/// URL, percent-encoding included) of a PostgreSQL URL, to hand a spawned service its `TALLYHOUSE_DATABASE_*` flags and its
/// Vault `database` secret.
pub fn database_login(url: &str) -> (String, u16, String, String) {
    let options: sqlx::postgres::PgConnectOptions = url
        .parse()
        .unwrap_or_else(|e| panic!("invalid PostgreSQL URL: {e}"));
    let password = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split(['/', '?']).next())
        .and_then(|authority| authority.rsplit_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, pw)| pw.to_owned())
        .unwrap_or_default();
    (
        options.get_host().to_owned(),
        options.get_port(),
        options.get_username().to_owned(),
        password,
    )
}

/// The rows of `sql` (a query written by the test) on the database at
/// `url`, each as a JSON object (`to_jsonb` of the row; timestamps in UTC).
pub async fn query_json(url: &str, sql: &str) -> Vec<serde_json::Value> {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", with_database(url, "…")));
    sqlx::query("SET TIME ZONE 'UTC'")
        .execute(&mut conn)
        .await
        .expect("SET TIME ZONE");
    // A materialized CTE rather than a subquery: on a Citus table a
    // multi-shard subquery's whole-row value loses its column names
    // (`f1`, `f2`, …; Citus #1485, #1745).
    let rows = sqlx::query_scalar::<_, serde_json::Value>(sqlx::AssertSqlSafe(format!(
        "WITH q AS MATERIALIZED ({sql}) SELECT to_jsonb(q) FROM q"
    )))
    .fetch_all(&mut conn)
    .await
    .unwrap_or_else(|e| panic!("query failed: {e}\n{sql}"));
    let _ = conn.close().await;
    rows
}

/// For a spawned service that reads `database`: a fresh database
/// ([`test_database`]), the service's `database` secret written to the test
/// OpenBao at `<prefix>/<service>/database` (the test superuser's login), and
/// the `TALLYHOUSE_DATABASE_*` variables pointing the service at it. Returns
/// the database's name (for [`drop_test_database`]), its URL (to query it
/// directly) and the variables to set on the service's command.
pub async fn service_test_database(
    prefix: &str,
    service: &str,
) -> (String, String, Vec<(&'static str, String)>) {
    let (name, url) = test_database().await;
    let (host, port, username, password) = database_login(&url);
    // With trust authentication the password is not checked, but the secret
    // always carries one, as in deployment.
    let password = if password.is_empty() {
        "unused-with-trust-auth".to_owned()
    } else {
        password
    };
    put_secret(
        prefix,
        service,
        "database",
        &[
            ("username", username.as_str()),
            ("password", password.as_str()),
        ],
    )
    .await;
    let env = vec![
        ("TALLYHOUSE_DATABASE_HOST", host),
        ("TALLYHOUSE_DATABASE_PORT", port.to_string()),
        ("TALLYHOUSE_DATABASE_NAME", name.clone()),
    ];
    (name, url, env)
}

/// Writes one secret, `<prefix>/<service>/<kind>` in the KV v2 mount
/// `secret`, to the test command's OpenBao with its root token.
pub async fn put_secret(prefix: &str, service: &str, kind: &str, fields: &[(&str, &str)]) {
    put_secret_at(
        &vault_addr(),
        &vault_root_token(),
        prefix,
        service,
        kind,
        fields,
    )
    .await;
}

/// [`put_secret`] to another OpenBao (a private one a test may seal), at
/// `addr` with `token`.
pub async fn put_secret_at(
    addr: &str,
    token: &str,
    prefix: &str,
    service: &str,
    kind: &str,
    fields: &[(&str, &str)],
) {
    let client = vaultrs::client::VaultClient::new(
        vaultrs::client::VaultClientSettingsBuilder::default()
            .address(addr)
            .token(token)
            .build()
            .expect("Vault client settings"),
    )
    .expect("Vault client");
    let secret: std::collections::HashMap<&str, &str> = fields.iter().copied().collect();
    let path = format!("{prefix}/{service}/{kind}");
    vaultrs::kv2::set(&client, "secret", &path, &secret)
        .await
        .unwrap_or_else(|e| panic!("write {path} to OpenBao: {e}"));
}

#[cfg(test)]
mod port_tests {
    use super::*;

    #[test]
    fn reserved_ports_are_distinct_free_and_outside_the_ephemeral_range() {
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        let distinct: std::collections::BTreeSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        for port in ports {
            assert!(TEST_PORTS.contains(&port), "{port}");
            std::net::TcpListener::bind(("127.0.0.1", port)).expect("still free to bind");
            // Held by this process: another process's try_lock fails.
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(
                    std::env::temp_dir()
                        .join("tallyhouse-test-ports")
                        .join(port.to_string()),
                )
                .unwrap();
            assert!(file.try_lock().is_err(), "port {port} is reserved");
        }
    }
}
