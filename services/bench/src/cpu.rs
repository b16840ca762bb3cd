//! CPU time of this process and, optionally, of the broker, read from
//! `/proc/<pid>/stat`, so that each point can report CPU time per call.

use std::time::Duration;

/// Linux reports `utime`/`stime` in USER_HZ ticks, 100 per second on every
/// mainstream architecture.
const TICKS_PER_SEC: u64 = 100;

/// Reads CPU time of this process and of the broker (if its pid is known).
#[derive(Debug, Clone, Copy)]
pub struct CpuProbe {
    broker_pid: Option<u32>,
}

/// User + system CPU time consumed so far; `None` where it cannot be read.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuSample {
    /// This process (every thread).
    pub own: Option<Duration>,
    /// The broker process.
    pub broker: Option<Duration>,
}

impl CpuProbe {
    /// A probe of this process and, when given, of `broker_pid`.
    pub fn new(broker_pid: Option<u32>) -> Self {
        Self { broker_pid }
    }

    /// CPU time used so far.
    pub fn sample(&self) -> CpuSample {
        CpuSample {
            own: read_stat("/proc/self/stat"),
            broker: self
                .broker_pid
                .and_then(|pid| read_stat(&format!("/proc/{pid}/stat"))),
        }
    }
}

impl CpuSample {
    /// CPU time spent between `earlier` and `self`.
    pub fn since(&self, earlier: &CpuSample) -> CpuSample {
        let diff = |a: Option<Duration>, b: Option<Duration>| Some(a?.saturating_sub(b?));
        CpuSample {
            own: diff(self.own, earlier.own),
            broker: diff(self.broker, earlier.broker),
        }
    }
}

/// The machine's 1-minute load average, from `/proc/loadavg`.
pub fn load_average_1m() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()
}

/// utime + stime of the process whose `stat` file is at `path`.
fn read_stat(path: &str) -> Option<Duration> {
    let text = std::fs::read_to_string(path).ok()?;
    // The command name (field 2) may contain spaces: fields after it are
    // counted from its closing parenthesis. utime and stime are fields 14
    // and 15, i.e. the 12th and 13th after it.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let ticks = utime + stime;
    Some(Duration::from_millis(ticks * 1000 / TICKS_PER_SEC))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_cpu_time() {
        let sample = CpuProbe::new(None).sample();
        assert!(sample.own.is_some());
        assert!(sample.broker.is_none());
    }
}
