//! The report in `docs/reliability.md`: tables written between marker
//! comments, so that `chaos … --write-doc docs/reliability.md` regenerates
//! them. A scenario run replaces its own row and keeps the others' (rows of
//! scenarios not run this time stay as last measured).

use crate::check::Verdict;
use crate::scenarios::Scenario;
use serde_json::Value;
use std::path::Path;

const FAULTS: &str = "chaos:faults";
const SOAK: &str = "chaos:soak";
const SATURATION: &str = "chaos:saturation";

fn ms(v: Option<u64>) -> String {
    match v {
        Some(ms) if ms >= 10_000 => format!("{:.0} s", ms as f64 / 1000.0),
        Some(ms) if ms >= 1000 => format!("{:.1} s", ms as f64 / 1000.0),
        Some(ms) => format!("{ms} ms"),
        None => "–".into(),
    }
}

fn errors(v: &Verdict) -> String {
    if v.errors.is_empty() {
        return "none".into();
    }
    v.errors
        .iter()
        .map(|(k, n)| format!("{n}× {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The header of the fault table.
const FAULT_HEADER: &str = "| Scenario | Injected | Expected | Sent / acknowledged (attempts) | Lost | Duplicated | Unexpected | Recovered | Rows without blob | Errors (failed attempts) | Recovery / longest gap | Result | Measured |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|";

fn fault_row(s: &Scenario, v: &Verdict, when: &str, short: bool) -> String {
    let result = if v.passed() {
        "**pass**".to_owned()
    } else {
        format!("**FAIL**: {}", v.failures.join("; "))
    };
    format!(
        "| `{}` | {} | {} | {} / {} ({}) | {} | {} | {} | {} | {} | {} | {} / {} | {} | {}{} |",
        s.name,
        s.injected,
        s.expected,
        v.packages,
        v.acknowledged,
        v.attempts,
        v.lost,
        v.duplicated,
        v.unexpected,
        v.recovered,
        v.rows_without_blob,
        errors(v).replace('|', "/"),
        ms(v.recovery_ms),
        ms(v.max_ack_gap_ms),
        result.replace('|', "/"),
        when,
        if short { " (`--short`)" } else { "" },
    )
}

fn secs(v: &Value) -> String {
    v.as_u64()
        .map_or("–".into(), |ms| format!("{:.1} s", ms as f64 / 1000.0))
}

/// One line of figures beyond the table's, per scenario.
fn details(s: &Scenario, v: &Verdict) -> String {
    let x = &v.extra;
    let get = |k: &str| x.get(k).cloned().unwrap_or(Value::Null);
    let mut parts = vec![format!(
        "latency p50 {}, p99 {}, max {}; {} acknowledged with 200 (stored by an earlier attempt whose answer was lost)",
        ms(v.p50_ms),
        ms(v.p99_ms),
        ms(v.max_ms),
        v.acknowledged_as_replay
    )];
    match s.name {
        "ingest-kill" => parts.push(format!(
            "attempts under way at the two kills: {}; replacement ready at {}, survivor killed at {}",
            get("in_flight_at_kills"),
            secs(&get("replacement_ready_at_ms")),
            secs(&get("second_kill_at_ms")),
        )),
        "broker-cluster" => parts.push(format!(
            "queue members {}; leader {} killed at {}; new leader {} seen at {}; killed node back in the cluster at {}",
            get("queue_members"),
            get("leader_before"),
            secs(&get("inject_at_ms")),
            get("leader_after"),
            secs(&get("new_leader_at_ms")),
            secs(&get("restarted_at_ms")),
        )),
        "broker-stall" => {
            let before = get("before");
            let idle = get("idle_after");
            let cycles = get("cycles");
            let c = |i: usize, phase: &str, k: &str| cycles[i][phase][k].clone();
            parts.push(format!(
                "services' sockets to the broker {} before, {} / {} during the two outages (connects that timed out, held by the black hole), {} / {} after, {} idle at the end; threads {} before, {} / {} during, {} idle at the end; all descriptors {} before, {} idle at the end (grown once, not per outage: an epoll/eventfd set per service and pooled database and HTTP connections)",
                before["amqp_sockets"],
                c(0, "stalled", "amqp_sockets"),
                c(1, "stalled", "amqp_sockets"),
                c(0, "after", "amqp_sockets"),
                c(1, "after", "amqp_sockets"),
                idle["amqp_sockets"],
                before["threads"],
                c(0, "stalled", "threads"),
                c(1, "stalled", "threads"),
                idle["threads"],
                before["fds"],
                idle["fds"],
            ));
        }
        "vault-seal" => parts.push(format!(
            "lease TTL {} s; sealed from {} to {}",
            get("lease_ttl_secs"),
            secs(&get("inject_at_ms")),
            secs(&get("heal_at_ms")),
        )),
        _ => {
            if let (Some(i), Some(h)) = (x.get("inject_at_ms"), x.get("heal_at_ms")) {
                parts.push(format!("fault from {} to {}", secs(i), secs(h)));
            }
        }
    }
    for n in &v.notes {
        parts.push(n.clone());
    }
    format!("- `{}`: {}.", s.name, parts.join("; "))
}

/// Replaces the text between `<!-- {marker}:begin -->` and
/// `<!-- {marker}:end -->` in `doc` with what `make` returns from the old
/// text; fails if the markers are missing.
fn replace_between(
    doc: &str,
    marker: &str,
    make: impl FnOnce(&str) -> String,
) -> anyhow::Result<String> {
    let begin = format!("<!-- {marker}:begin -->");
    let end = format!("<!-- {marker}:end -->");
    let (Some(b), Some(e)) = (doc.find(&begin), doc.find(&end)) else {
        anyhow::bail!("the markers {begin} … {end} are missing");
    };
    anyhow::ensure!(b < e, "{end} comes before {begin}");
    let inner = &doc[b + begin.len()..e];
    Ok(format!(
        "{}{begin}\n{}\n{}",
        &doc[..b],
        make(inner).trim_end(),
        &doc[e..]
    ))
}

/// Writes the fault rows of `results` (scenario order) into `path`.
pub fn write_faults(
    path: &Path,
    order: &[Scenario],
    results: &[(&Scenario, &Verdict)],
    when: &str,
    short: bool,
) -> anyhow::Result<()> {
    let doc = std::fs::read_to_string(path)?;
    let doc = replace_between(&doc, FAULTS, |old| {
        let row_of = |name: &str| -> Option<String> {
            if let Some((s, v)) = results.iter().find(|(s, _)| s.name == name) {
                return Some(fault_row(s, v, when, short));
            }
            old.lines()
                .find(|l| l.starts_with(&format!("| `{name}` |")))
                .map(str::to_owned)
        };
        let detail_of = |name: &str| -> Option<String> {
            if let Some((s, v)) = results.iter().find(|(s, _)| s.name == name) {
                return Some(details(s, v));
            }
            old.lines()
                .find(|l| l.starts_with(&format!("- `{name}`:")))
                .map(str::to_owned)
        };
        let mut out = String::from(FAULT_HEADER);
        for s in order {
            if let Some(row) = row_of(s.name) {
                out.push('\n');
                out.push_str(&row);
            }
        }
        out.push_str("\n\nMore figures of the same runs:\n");
        for s in order {
            if let Some(line) = detail_of(s.name) {
                out.push('\n');
                out.push_str(&line);
            }
        }
        out
    })?;
    std::fs::write(path, doc)?;
    Ok(())
}

fn num(v: &Value) -> String {
    match v {
        Value::Null => "–".into(),
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    }
}

/// Writes the soak's summary and per-minute table into `path`.
pub fn write_soak(path: &Path, v: &Verdict, when: &str) -> anyhow::Result<()> {
    let doc = std::fs::read_to_string(path)?;
    let doc = replace_between(&doc, SOAK, |_| {
        let mut out = format!(
            "Measured {when}: {} s at {} packages/s ({} records each), warm-up {} s. \
             Sent {}, acknowledged {}, lost {}, duplicated {}, unexpected {}, rows without blob {}, \
             failed attempts {}. Latency p50 {}, p99 {}, max {}. Result: {}.\n\n",
            num(&v.extra["soak_secs"]),
            num(&v.extra["rate"]),
            num(&v.extra.get("records").cloned().unwrap_or(Value::Null)),
            num(&v.extra["warmup_secs"]),
            v.packages,
            v.acknowledged,
            v.lost,
            v.duplicated,
            v.unexpected,
            v.rows_without_blob,
            v.errors.values().sum::<u64>(),
            ms(v.p50_ms),
            ms(v.p99_ms),
            ms(v.max_ms),
            if v.passed() {
                "**pass**".to_owned()
            } else {
                format!("**FAIL**: {}", v.failures.join("; "))
            }
        );
        out.push_str("| Minute | Acknowledged | p50 ms | p99 ms | Failed attempts |\n|---|---|---|---|---|\n");
        if let Some(rows) = v.extra["per_minute"].as_array() {
            for r in rows {
                out.push_str(&format!(
                    "| {} | {} | {} | {} | {} |\n",
                    num(&r["minute"]),
                    num(&r["acknowledged"]),
                    num(&r["p50_ms"]),
                    num(&r["p99_ms"]),
                    num(&r["errors"])
                ));
            }
        }
        out.push_str(
            "\n| Service | RSS at start MiB | after warm-up MiB | end MiB | min–max after warm-up MiB | spread | fds after warm-up → end | threads after warm-up → end |\n|---|---|---|---|---|---|---|---|\n",
        );
        if let Some(mem) = v.extra["memory"].as_object() {
            let mib = |x: &Value| {
                x.as_u64()
                    .map_or("–".into(), |k| format!("{:.1}", k as f64 / 1024.0))
            };
            for (name, m) in mem {
                out.push_str(&format!(
                    "| {name} | {} | {} | {} | {}–{} | {} % | {} → {} | {} → {} |\n",
                    mib(&m["rss_kib_at_start"]),
                    mib(&m["rss_kib_after_warmup"]),
                    mib(&m["rss_kib_end"]),
                    mib(&m["rss_kib_min"]),
                    mib(&m["rss_kib_max"]),
                    num(&m["rss_spread_pct"]),
                    num(&m["fds_after_warmup"]),
                    num(&m["fds_end"]),
                    num(&m["threads_after_warmup"]),
                    num(&m["threads_end"]),
                ));
            }
        }
        out
    })?;
    std::fs::write(path, doc)?;
    Ok(())
}

/// Writes the saturation steps into `path`.
pub fn write_saturation(path: &Path, v: &Verdict, when: &str) -> anyhow::Result<()> {
    let doc = std::fs::read_to_string(path)?;
    let doc = replace_between(&doc, SATURATION, |_| {
        let mut out = format!(
            "Measured {when}: {} submitters, {} records per package. Highest rate sustained: **{}** packages/s \
             (peak acknowledged {} /s). Lost {}, duplicated {}, unexpected {}, rows without blob {}.\n\n",
            num(&v.extra["submitters"]),
            num(&v.extra["records"]),
            num(&v.extra["max_sustained_per_s"]),
            num(&v.extra["peak_acknowledged_per_s"]),
            v.lost,
            v.duplicated,
            v.unexpected,
            v.rows_without_blob,
        );
        out.push_str("| Offered /s | Acknowledged /s | p50 ms | p99 ms | Failed attempts | Sustained |\n|---|---|---|---|---|---|\n");
        if let Some(steps) = v.extra["steps"].as_array() {
            for s in steps {
                out.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {} |\n",
                    num(&s["offered_per_s"]),
                    num(&s["acknowledged_per_s"]),
                    num(&s["p50_ms"]),
                    num(&s["p99_ms"]),
                    num(&s["errors"]),
                    if s["sustained"] == Value::Bool(true) {
                        "yes"
                    } else {
                        "no"
                    },
                ));
            }
        }
        out
    })?;
    std::fs::write(path, doc)?;
    Ok(())
}
