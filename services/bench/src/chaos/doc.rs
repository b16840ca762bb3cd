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
        "network-delay" => {
            let p = get("latency_by_phase");
            let applied = get("delay_applied");
            let n = |v: &Value| match v {
                Value::Null => "–".to_owned(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            parts.push(format!(
                "delay {}–{} ms each way from {} to {}; latency of the submissions started and acknowledged before it: p50 {} ms ({} acknowledged), under it: p50 {} ms, p90 {} ms, max {} ms ({}), after it: p50 {} ms ({}); the p50 rose {} ms, {} times the mean one-way delay really applied ({} ms over {} chunks to the broker and {} back; at most {} / {} ms: order is kept, so a chunk may wait behind an earlier one drawn longer)",
                n(&get("delay")["min_ms"]),
                n(&get("delay")["max_ms"]),
                secs(&get("inject_at_ms")),
                secs(&get("delay_removed_at_ms").as_u64().map_or(get("heal_at_ms"), Value::from)),
                n(&p["before"]["p50_ms"]),
                n(&p["before"]["acks"]),
                n(&p["delayed"]["p50_ms"]),
                n(&p["delayed"]["p90_ms"]),
                n(&p["delayed"]["max_ms"]),
                n(&p["delayed"]["acks"]),
                n(&p["after"]["p50_ms"]),
                n(&p["after"]["acks"]),
                n(&get("latency_p50_rise_ms")),
                n(&get("rise_in_one_way_delays")),
                n(&applied["mean_ms"]),
                n(&applied["up"]["chunks"]),
                n(&applied["down"]["chunks"]),
                n(&applied["up"]["max_ms"]),
                n(&applied["down"]["max_ms"]),
            ));
            let phase = get("deadline_phase");
            if !phase.is_null() {
                let errors = phase["errors"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, c)| format!("{c}× {k}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "none".into());
                parts.push(format!(
                    "then {}–{} ms each way from {} to {}: {} submissions started and acknowledged within it; failed attempts overlapping it: {}",
                    n(&get("deadline_delay")["min_ms"]),
                    n(&get("deadline_delay")["max_ms"]),
                    secs(&phase["from_ms"]),
                    secs(&phase["to_ms"]),
                    n(&phase["latency"]["acks"]),
                    errors,
                ));
            }
            if let Some(c) = x.get("broker_connections") {
                parts.push(format!(
                    "broker connections through the proxy {} at the injection, {} at the end, {} opened in between",
                    n(&c["at_injection"]),
                    n(&c["at_end"]),
                    n(&c["opened_since_injection"]),
                ));
            }
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

#[cfg(test)]
mod doc_tests {
    use super::*;
    use crate::scenarios::scenarios;
    use serde_json::json;

    /// The figures line of `network-delay` names every figure the run
    /// reports (none left as a placeholder), and a row replaces its own.
    #[test]
    fn network_delay_rows_and_figures_are_written() {
        let s = scenarios()
            .into_iter()
            .find(|s| s.name == "network-delay")
            .expect("the scenario");
        let mut v = Verdict {
            packages: 10,
            acknowledged: 10,
            attempts: 11,
            p50_ms: Some(13),
            ..Verdict::default()
        };
        v.errors.insert("504 deadline_exceeded".into(), 1);
        let extra = json!({
            "delay": { "min_ms": 100, "max_ms": 300, "mean_ms": 200 },
            "inject_at_ms": 10_000, "delay_removed_at_ms": 20_001, "heal_at_ms": 40_001,
            "latency_by_phase": {
                "before": { "acks": 200, "p50_ms": 12, "p90_ms": 20, "max_ms": 40 },
                "delayed": { "acks": 62, "p50_ms": 940, "p90_ms": 1700, "max_ms": 1900 },
                "after": { "acks": 700, "p50_ms": 13, "p90_ms": 20, "max_ms": 50 },
            },
            "latency_p50_rise_ms": 928, "rise_in_one_way_delays": 4.2,
            "delay_applied": { "mean_ms": 220.5,
                "up": { "chunks": 259, "max_ms": 300.2 }, "down": { "chunks": 209, "max_ms": 301.5 } },
            "deadline_delay": { "min_ms": 1900, "max_ms": 2100 },
            "deadline_phase": { "from_ms": 25_000, "to_ms": 40_000,
                "errors": { "504 deadline_exceeded": 1 }, "latency": { "acks": 0 } },
            "broker_connections": { "at_injection": 6, "at_end": 6, "opened_since_injection": 0 },
        });
        v.extra = extra.as_object().expect("an object").clone();
        let line = details(&s, &v);
        for want in [
            "delay 100–300 ms each way from 10.0 s to 20.0 s",
            "p50 940 ms, p90 1700 ms, max 1900 ms (62)",
            "rose 928 ms, 4.2 times",
            "then 1900–2100 ms each way from 25.0 s to 40.0 s: 0 submissions",
            "1× 504 deadline_exceeded",
            "6 at the injection, 6 at the end, 0 opened",
        ] {
            assert!(line.contains(want), "{want:?} not in {line}");
        }
        assert!(
            !line.contains("null") && !line.contains(" – ms"),
            "a figure missing: {line}"
        );

        let dir = std::env::temp_dir().join(format!("chaos-doc-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("a folder");
        let path = dir.join("r.md");
        std::fs::write(
            &path,
            "head\n<!-- chaos:faults:begin -->\n| `network-delay` | old |\n<!-- chaos:faults:end -->\ntail\n",
        )
        .expect("write");
        let order = scenarios();
        write_faults(&path, &order, &[(&s, &v)], "now", false).expect("written");
        let doc = std::fs::read_to_string(&path).expect("read");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            doc.starts_with("head\n") && doc.ends_with("tail\n"),
            "{doc}"
        );
        assert_eq!(doc.matches("| `network-delay` |").count(), 1, "{doc}");
        assert!(!doc.contains("| old |"), "{doc}");
        assert!(
            doc.contains("1× 504 deadline_exceeded | – / – | **pass** | now |"),
            "{doc}"
        );
    }
}
