//! Command-line options of the benchmark binary.

use clap::Parser;
use platform::amqp::BrokerUri;

/// Benchmarks of the Tallyhouse runtime against raw baselines.
#[derive(Debug, Parser)]
#[command(name = "bench")]
pub struct Options {
    /// The benchmark to run (see `--list`).
    #[arg(required_unless_present = "list")]
    pub name: Option<String>,

    /// Lists the benchmarks and exits.
    #[arg(long)]
    pub list: bool,

    /// Measured time of each variant at each point, in seconds.
    #[arg(long, default_value_t = 5.0, value_parser = positive_secs)]
    pub duration_secs: f64,

    /// Measured time is split into this many slices per variant, taken in
    /// turn with the other variants of the point (fairer on a busy machine).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub rounds: u32,

    /// Unmeasured load before each slice, in seconds.
    #[arg(long, default_value_t = 1.0, value_parser = non_negative_secs)]
    pub warmup_secs: f64,

    /// The broker benchmarks that need one talk to.
    #[arg(
        long,
        env = "TALLYHOUSE_TEST_AMQP_URI",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true,
        value_parser = BrokerUri::parse,
    )]
    pub amqp_uri: BrokerUri,

    /// Runs only the measurements whose label (`<variant>/<in flight>/<body>`,
    /// shown while running) contains one of these, e.g. `framework/128`;
    /// for profiling one side.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,

    /// Process id of the broker, to report its CPU time per call as well
    /// (read from /proc; optional).
    #[arg(long)]
    pub broker_pid: Option<u32>,

    /// Benchmarks that start the services (`ingest`): use the binaries
    /// already in the target directory instead of building them first.
    #[arg(long)]
    pub no_build: bool,
}

fn non_negative_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..86_400.0).contains(&v) => Ok(v),
        _ => Err("expected a number of seconds, 0 or more".to_owned()),
    }
}

fn positive_secs(s: &str) -> Result<f64, String> {
    match non_negative_secs(s) {
        Ok(v) if v > 0.0 => Ok(v),
        _ => Err("expected a positive number of seconds".to_owned()),
    }
}
