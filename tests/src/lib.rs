//! Helpers for black-box tests that run the workspace's real binaries:
//! locating them, and running them as child processes that die with the test.

pub mod stack;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// Path of a binary built from this workspace into the same target
/// directory and profile as the running executable (`cargo test --workspace`
/// and the test command build them all; the benchmark builds the services
/// it runs).
pub fn workspace_bin(name: &str) -> PathBuf {
    // target/<profile>/deps/suite-<hash> → target/<profile>/<name>, and
    // target/<profile>/bench → target/<profile>/<name>.
    let exe = std::env::current_exe().expect("current executable");
    let dir = exe
        .parent()
        .and_then(|dir| {
            if dir.file_name().is_some_and(|n| n == "deps") {
                dir.parent()
            } else {
                Some(dir)
            }
        })
        .expect("target/<profile> directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (`cargo build --workspace`)",
        path.display()
    );
    path
}

/// A command running service `bin` the way the run command configures it:
/// brokers of the test command, `namespace` as both the RPC namespace and
/// the Vault prefix, the OpenBao root token (override `VAULT_TOKEN` in
/// `env` to test refusals), metrics on a free port, then `env`.
pub fn service_command(bin: &str, namespace: &str, env: &[(&str, String)]) -> Command {
    use platform::testing::{amqp_uri, vault_addr, vault_root_token};
    let mut cmd = Command::new(workspace_bin(bin));
    cmd.env_clear()
        .env(
            "TALLYHOUSE_AMQP_URIS",
            format!("amqp://{}/%2f", amqp_uri().host_port()),
        )
        .env("TALLYHOUSE_RPC_NAMESPACE", namespace)
        .env("TALLYHOUSE_ENVIRONMENT", "test")
        .env("TALLYHOUSE_METRICS_ADDR", "127.0.0.1:0")
        .env("TALLYHOUSE_VAULT_PREFIX", namespace)
        .env("VAULT_ADDR", vault_addr())
        .env("VAULT_TOKEN", vault_root_token());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// A free loopback TCP port, reserved for this test process
/// ([`platform::testing::free_port`]).
pub fn free_port() -> u16 {
    platform::testing::free_port()
}

/// A child process killed (SIGKILL) when dropped, so a failing test never
/// leaves a server behind.
pub struct ChildProcess {
    child: Child,
    name: String,
}

impl ChildProcess {
    /// Spawns `cmd`, its stdout and stderr inherited (shown on failure).
    pub fn spawn(name: &str, cmd: &mut Command) -> std::io::Result<Self> {
        let child = cmd.stdin(Stdio::null()).spawn()?;
        Ok(Self {
            child,
            name: name.to_owned(),
        })
    }

    /// Its stdout, when the command piped it (once).
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// Its stderr, when the command piped it (once).
    pub fn take_stderr(&mut self) -> Option<std::process::ChildStderr> {
        self.child.stderr.take()
    }

    /// Waits for it to exit.
    pub fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.child.wait()
    }

    /// The name it was spawned with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Kills it with SIGKILL, as a crash would, and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::io::Result<std::process::ExitStatus> {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()?;
        assert!(status.success(), "kill -TERM {} failed", self.name);
        self.child.wait()
    }

    /// Whether it has exited (and its status).
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if self.try_wait().is_none() {
            self.kill();
        }
    }
}
