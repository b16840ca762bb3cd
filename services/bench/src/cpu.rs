//! CPU time of this process, optionally of the broker, and of any other
//! named processes (the services a benchmark starts, PostgreSQL with its
//! children, the S3 server), read from `/proc/<pid>/stat`, so that each
//! point can report CPU time per call and per process. Also: the calling
//! thread's CPU time, and which process listens on a local TCP port.

use std::sync::Arc;
use std::time::Duration;

/// Linux reports `utime`/`stime` in USER_HZ ticks, 100 per second on every
/// mainstream architecture.
const TICKS_PER_SEC: u64 = 100;

/// Which CPU time of a watched process counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The process alone (every thread).
    Process,
    /// The process, its children that have exited and been reaped (their
    /// time moves into the parent's `cutime`/`cstime` then) and its live
    /// children: a PostgreSQL cluster, whose postmaster forks a process per
    /// connection and per background job.
    WithChildren,
}

/// A process watched by name.
#[derive(Debug, Clone)]
pub struct Watched {
    /// The name shown in reports and used in figure names.
    pub name: String,
    /// Its process id.
    pub pid: u32,
    /// What counts.
    pub scope: Scope,
}

/// Reads CPU time of this process, of the broker (if its pid is known) and
/// of the watched processes.
#[derive(Debug, Clone, Default)]
pub struct CpuProbe {
    broker_pid: Option<u32>,
    watched: Arc<[Watched]>,
}

/// User + system CPU time consumed so far; `None` where it cannot be read.
#[derive(Debug, Clone, Default)]
pub struct CpuSample {
    /// This process (every thread).
    pub own: Option<Duration>,
    /// The broker process.
    pub broker: Option<Duration>,
    /// The watched processes, in the probe's order.
    pub watched: Vec<Option<Duration>>,
}

impl CpuProbe {
    /// A probe of this process and, when given, of `broker_pid`.
    pub fn new(broker_pid: Option<u32>) -> Self {
        Self {
            broker_pid,
            watched: Arc::new([]),
        }
    }

    /// The same probe, also watching `watched`.
    pub fn watching(&self, watched: Vec<Watched>) -> Self {
        Self {
            broker_pid: self.broker_pid,
            watched: watched.into(),
        }
    }

    /// The watched processes, in sample order.
    pub fn watched(&self) -> &[Watched] {
        &self.watched
    }

    /// CPU time used so far.
    pub fn sample(&self) -> CpuSample {
        let needs_children = self.watched.iter().any(|w| w.scope == Scope::WithChildren);
        let parents = if needs_children {
            all_processes()
        } else {
            Vec::new()
        };
        CpuSample {
            own: read_stat("/proc/self/stat").map(|s| s.own),
            broker: self
                .broker_pid
                .and_then(|pid| read_stat(&format!("/proc/{pid}/stat")))
                .map(|s| s.own),
            watched: self
                .watched
                .iter()
                .map(|w| {
                    let stat = read_stat(&format!("/proc/{}/stat", w.pid))?;
                    Some(match w.scope {
                        Scope::Process => stat.own,
                        Scope::WithChildren => {
                            stat.own
                                + stat.reaped_children
                                + parents
                                    .iter()
                                    .filter(|p| p.ppid == w.pid)
                                    .map(|p| p.own)
                                    .sum::<Duration>()
                        }
                    })
                })
                .collect(),
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
            watched: self
                .watched
                .iter()
                .zip(&earlier.watched)
                .map(|(a, b)| diff(*a, *b))
                .collect(),
        }
    }

    /// The sum of two spans of CPU time (slices of one measurement).
    pub fn plus(&self, other: &CpuSample) -> CpuSample {
        let sum = |a: Option<Duration>, b: Option<Duration>| Some(a? + b?);
        CpuSample {
            own: sum(self.own, other.own),
            broker: sum(self.broker, other.broker),
            watched: self
                .watched
                .iter()
                .zip(&other.watched)
                .map(|(a, b)| sum(*a, *b))
                .collect(),
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

/// CPU time consumed by the calling thread so far.
pub fn thread_cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// What one `stat` file says.
struct Stat {
    ppid: u32,
    /// utime + stime.
    own: Duration,
    /// cutime + cstime: children that exited and were waited for.
    reaped_children: Duration,
}

/// The fields of the process whose `stat` file is at `path`.
fn read_stat(path: &str) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(path).ok()?)
}

fn parse_stat(text: &str) -> Option<Stat> {
    // The command name (field 2) may contain spaces: fields after it are
    // counted from its closing parenthesis: state (3), ppid (4), …, utime
    // (14), stime (15), cutime (16), cstime (17).
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_ascii_whitespace().take(15).collect();
    let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
    let ticks = |t: u64| Duration::from_millis(t * 1000 / TICKS_PER_SEC);
    Some(Stat {
        ppid: u32::try_from(field(4)?).ok()?,
        own: ticks(field(14)? + field(15)?),
        reaped_children: ticks(field(16)? + field(17)?),
    })
}

/// Every process's `stat`, for finding children.
fn all_processes() -> Vec<Stat> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter_map(|e| read_stat(&e.path().join("stat").to_string_lossy()))
        .collect()
}

/// The process listening on local TCP `port` (IPv4 or IPv6), found through
/// the socket's inode in `/proc/net/tcp*` and the processes' open files
/// (reading other users' file descriptors needs root). `None` if nothing
/// listens there or it cannot be told.
pub fn pid_listening_on(port: u16) -> Option<u32> {
    let wanted = format!(":{port:04X}");
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_ascii_whitespace().collect();
            // local_address (1), state (3, 0A = LISTEN), inode (9).
            if f.len() > 9 && f[1].ends_with(&wanted) && f[3] == "0A" {
                inodes.push(format!("socket:[{}]", f[9]));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    pids.into_iter().find(|pid| {
        std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
            fds.filter_map(Result::ok).any(|fd| {
                std::fs::read_link(fd.path())
                    .is_ok_and(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_cpu_time() {
        let sample = CpuProbe::new(None).sample();
        assert!(sample.own.is_some());
        assert!(sample.broker.is_none());
        assert!(sample.watched.is_empty());
    }

    #[test]
    fn watches_a_process_with_its_children() {
        let me = std::process::id();
        let probe = CpuProbe::new(None).watching(vec![
            Watched {
                name: "me".into(),
                pid: me,
                scope: Scope::WithChildren,
            },
            Watched {
                name: "nobody".into(),
                pid: u32::MAX,
                scope: Scope::Process,
            },
        ]);
        let sample = probe.sample();
        assert!(sample.watched[0].is_some());
        assert!(sample.watched[1].is_none());
    }

    #[test]
    fn parses_a_stat_line_whose_name_has_spaces() {
        let line = "42 (a (b) c) S 7 42 42 0 -1 4194560 100 0 0 0 250 50 30 20 20 0 1 0 1 0 0";
        let stat = parse_stat(line).unwrap();
        assert_eq!(stat.ppid, 7);
        assert_eq!(stat.own, Duration::from_secs(3));
        assert_eq!(stat.reaped_children, Duration::from_millis(500));
    }

    #[test]
    fn finds_the_process_listening_on_a_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(pid_listening_on(port), Some(std::process::id()));
    }

    #[test]
    fn thread_cpu_time_advances() {
        let before = thread_cpu_time();
        let mut x = 1u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i);
        }
        assert_ne!(x, 0);
        assert!(thread_cpu_time() > before);
    }
}
