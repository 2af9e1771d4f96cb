//! Presentation: the live progress line (indicatif, on a terminal only) and the
//! end-of-run summary table. Nothing here measures; it only reads [`Stats`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use report::capacity::format_rate;
use report::{CapacityStep, CapacitySummary, RunResult};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::worker::RunShared;

/// How often the progress line is redrawn.
const REFRESH: Duration = Duration::from_millis(250);

/// Draws the progress line until `done` fires.
pub fn spawn(shared: Arc<RunShared>, done: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        let total = shared.plan.total();
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
            )
            .expect("constant template"),
        );
        let mut last = (Instant::now(), 0u64);
        let mut ticker = tokio::time::interval(REFRESH);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = done.cancelled() => break,
            }
            let (sent, ok, failed, p99) = {
                let s = shared.stats.lock().expect("stats lock poisoned");
                let p99 = if s.total.is_empty() {
                    0.0
                } else {
                    s.total.value_at_quantile(0.99) as f64 / 1000.0
                };
                (s.counts.total, s.counts.ok, s.counts.failed, p99)
            };
            let now = Instant::now();
            let rate = (sent - last.1) as f64 / (now - last.0).as_secs_f64().max(1e-3);
            last = (now, sent);
            bar.set_position(sent);
            bar.set_message(format!(
                "ok {ok}  failed {failed}  {rate:.0} msg/s  p99 {p99:.1} ms"
            ));
        }
        bar.finish_and_clear();
    })
}

/// The end-of-run summary, a few lines for a terminal or a log.
pub fn summary(r: &RunResult) -> String {
    let m = &r.metrics;
    let mut out = String::new();
    let mut row = |k: &str, v: String| out.push_str(&format!("  {k:<22} {v}\n"));
    row(
        "test",
        format!("{} ({})", r.test_type, r.servers.join(", ")),
    );
    row(
        "messages",
        format!(
            "{} total, {} ok, {} failed ({:.2}% success)",
            m.total_messages, m.successful_messages, m.failed_messages, m.success_rate
        ),
    );
    row("duration", format!("{:.2} s", m.duration_seconds));
    let target = r
        .target_rate
        .map(|t| format!(" (target {t}/s)"))
        .unwrap_or_default();
    row(
        "throughput",
        format!("{:.1} msg/s{target}", m.messages_per_second),
    );
    row(
        "data sent",
        format!("{:.1} MiB", m.total_bytes_sent as f64 / 1048576.0),
    );
    let l = &m.latency_ms;
    row(
        "latency ms",
        format!(
            "p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
            l.p50, l.p90, l.p99, l.p99_9, l.max
        ),
    );
    if let Some(c) = &m.latency_corrected_ms {
        row(
            "corrected latency ms",
            format!(
                "p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
                c.p50, c.p90, c.p99, c.p99_9, c.max
            ),
        );
        row("late sends", m.late_sends.to_string());
    }
    if let Some(tls) = &r.tls {
        let versions: Vec<String> = tls
            .versions
            .iter()
            .map(|(v, n)| format!("{v} {n}"))
            .collect();
        let handshake = m
            .phases_ms
            .get("tls")
            .map(|l| format!(", handshake p50 {:.2} p99 {:.2} ms", l.p50, l.p99))
            .unwrap_or_default();
        row(
            "tls",
            format!(
                "{}: {} handshakes ({}), {:.0}% resumed{handshake}",
                tls.mode,
                tls.handshakes,
                versions.join(", "),
                tls.resumed_percent()
            ),
        );
    }
    if !m.error_breakdown.is_empty() {
        let e: Vec<String> = m
            .error_breakdown
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        row("errors", e.join(", "));
    }
    if r.per_server.len() > 1 {
        for s in &r.per_server {
            row(
                &s.address,
                format!(
                    "{} ok, {} failed, p99 {:.2} ms",
                    s.successful_messages, s.failed_messages, s.latency_ms.p99
                ),
            );
        }
    }
    if let Some(g) = r.run.as_ref().and_then(|run| run.generator) {
        row(
            "generator",
            format!(
                "{:.2} CPU s ({:.0}% of all cores), peak RSS {:.1} MiB",
                g.cpu_seconds,
                g.cpu_percent,
                g.max_rss_bytes as f64 / 1048576.0
            ),
        );
    }
    if r.generator_saturated {
        row(
            "WARNING",
            "the generator was saturated; figures understate the server".into(),
        );
    }
    if r.interrupted() {
        row(
            "NOTE",
            "interrupted: figures cover the part that ran".into(),
        );
    }
    if !r.stages.is_empty() {
        out.push_str(&stage_rows(r));
    }
    if let Some(c) = &r.capacity {
        out.push_str(&capacity_rows(c));
    }
    out
}

/// One finished step of a capacity search, for the log while it runs.
pub fn capacity_step_line(s: &CapacityStep) -> String {
    let verdict = match (s.passed, s.generator_saturated) {
        (true, false) => "meets the SLO".to_string(),
        (true, true) => "meets the SLO (generator saturated)".to_string(),
        (false, false) => format!("breaks {}", s.broke.join(", ")),
        (false, true) => format!("breaks {} (generator saturated)", s.broke.join(", ")),
    };
    format!(
        "loadgen: capacity step {} at {} msg/s: {:.1} ok/s, {:.2}% success, p99 corrected {:.2} ms: {verdict}",
        s.index,
        format_rate(s.rate),
        s.achieved_rate,
        s.success_rate,
        s.latency_corrected_ms.p99
    )
}

/// The stages of a stages run, a row each: time, target, counts, p99.
fn stage_rows(r: &RunResult) -> String {
    let mut out = String::from("  stages\n");
    for s in &r.stages {
        let target = if s.rate_from == s.rate_to {
            format_rate(s.rate_to)
        } else {
            format!("{} → {}", format_rate(s.rate_from), format_rate(s.rate_to))
        };
        out.push_str(&format!(
            "    {:<3} {:>7.1}–{:<7.1} s  {:>15}/s  sent {:>7}  ok {:>7}  failed {:>5}  late {:>5}  p99 corr. {:>9.2} ms\n",
            s.index,
            s.start_s,
            s.end_s,
            target,
            s.sent,
            s.ok,
            s.failed,
            s.late,
            s.latency_corrected_ms.p99
        ));
    }
    out
}

/// The steps of a capacity search, a row each, and its verdict.
fn capacity_rows(c: &CapacitySummary) -> String {
    let mut out = format!("  capacity search (SLO {})\n", c.slo.join(", "));
    out.push_str(
        "    step      rate/s      ok/s   success   p99 ms  p99 corr. ms   late  verdict\n",
    );
    for s in &c.steps {
        let verdict = match (s.passed, s.generator_saturated) {
            (true, false) => "pass".to_string(),
            (true, true) => "pass (generator saturated)".to_string(),
            (false, false) => format!("FAIL {}", s.broke.join(", ")),
            (false, true) => format!("FAIL {} (generator saturated)", s.broke.join(", ")),
        };
        out.push_str(&format!(
            "    {:<4} {:>11} {:>9.1} {:>8.2}% {:>8.2} {:>13.2} {:>6}  {verdict}\n",
            s.index,
            format_rate(s.rate),
            s.achieved_rate,
            s.success_rate,
            s.latency_ms.p99,
            s.latency_corrected_ms.p99,
            s.late
        ));
    }
    out.push_str(&format!("  {:<22} {}\n", "capacity", c.verdict()));
    if let Some(h) = c.headline_step() {
        out.push_str(&format!(
            "  {:<22} the figures above are those of step {} ({} msg/s)\n",
            "note",
            h.index,
            format_rate(h.rate)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_has_a_row_per_stage_and_the_capacity_steps_and_verdict() {
        let mut r = RunResult::default();
        r.stages = vec![report::StageSummary {
            index: 1,
            start_s: 5.0,
            end_s: 15.0,
            rate_from: 100.0,
            rate_to: 500.0,
            sent: 3000,
            ok: 2990,
            failed: 10,
            late: 4,
            ..Default::default()
        }];
        let text = summary(&r);
        assert!(text.contains("  stages\n"), "{text}");
        assert!(
            text.contains("100 → 500/s  sent    3000  ok    2990  failed    10  late     4"),
            "{text}"
        );

        let step = |index, rate, passed: bool| CapacityStep {
            index,
            rate,
            achieved_rate: rate,
            success_rate: 100.0,
            passed,
            broke: if passed {
                vec![]
            } else {
                vec!["p99<=250ms".into()]
            },
            ..Default::default()
        };
        r.stages.clear();
        r.capacity = Some(CapacitySummary {
            slo: vec!["p99<=250ms".into()],
            max_rate_meeting_slo: Some(100.0),
            first_rate_breaking_slo: Some(200.0),
            which_slo_broke: Some("p99<=250ms".into()),
            resolution_percent: 5.0,
            steps: vec![step(0, 100.0, true), step(1, 200.0, false)],
            ..Default::default()
        });
        let text = summary(&r);
        assert!(text.contains("capacity search (SLO p99<=250ms)"), "{text}");
        assert!(text.contains("FAIL p99<=250ms"), "{text}");
        assert!(
            text.contains("100 msg/s meets the SLO; 200 msg/s broke it (p99<=250ms)"),
            "{text}"
        );
        assert!(text.contains("those of step 0 (100 msg/s)"), "{text}");
    }
}
