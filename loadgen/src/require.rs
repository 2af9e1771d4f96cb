//! `--require` gates: judged on the finished run with [`report::gate`] (the
//! grammar `analyze check` uses), and, with `--abort-on-fail`, watched while the
//! run goes so it stops once a gate can no longer be met.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use report::gate::{self, Gate, LatencyBasis, Progress};
use report::{GateOutcome, RunResult};
use tokio_util::sync::CancellationToken;

use crate::worker::RunShared;

/// How often the watch reads the run's counts. Small beside any run worth
/// gating, and a lock taken twenty times a second costs the workers nothing.
const WATCH_INTERVAL: Duration = Duration::from_millis(50);

/// Judges the gates on the finished run. Latency is judged corrected where the
/// run measured it: in the open model that is what a sender waited.
/// `aborted_by` marks the gate that stopped the run early.
pub fn judge(result: &RunResult, gates: &[Gate], aborted_by: Option<usize>) -> Vec<GateOutcome> {
    let mut outcomes = gate::evaluate(result, gates, LatencyBasis::CorrectedWhereMeasured);
    if let Some(o) = aborted_by.and_then(|i| outcomes.get_mut(i)) {
        o.aborted_run = true;
    }
    outcomes
}

/// The `--abort-on-fail` watch: a task that cancels `missed` once a gate is
/// already lost, and remembers which.
pub struct GateWatch {
    task: tokio::task::JoinHandle<()>,
    /// Cancelled when a gate can no longer be met.
    pub missed: CancellationToken,
    which: Arc<OnceLock<usize>>,
}

impl GateWatch {
    /// Starts watching `gates` against the run's counts; `planned` is the number
    /// of messages the run is to send.
    pub fn start(shared: Arc<RunShared>, gates: Vec<Gate>, planned: u64) -> GateWatch {
        let missed = CancellationToken::new();
        let which = Arc::new(OnceLock::new());
        let task = tokio::spawn(watch(
            shared,
            gates,
            planned,
            missed.clone(),
            Arc::clone(&which),
        ));
        GateWatch {
            task,
            missed,
            which,
        }
    }

    /// Stops the watch and waits for it to let go of the run's shared state;
    /// the index of the gate that stopped the run, if one did.
    pub async fn finish(self) -> Option<usize> {
        self.task.abort();
        let _ = self.task.await;
        self.which.get().copied()
    }
}

/// Reads the counts every [`WATCH_INTERVAL`] until a gate is lost. Ends with the
/// run: [`GateWatch::finish`] aborts it.
async fn watch(
    shared: Arc<RunShared>,
    gates: Vec<Gate>,
    planned: u64,
    missed: CancellationToken,
    which: Arc<OnceLock<usize>>,
) {
    let mut ticker = tokio::time::interval(WATCH_INTERVAL);
    loop {
        ticker.tick().await;
        let Some(progress) = progress_of(&shared, planned) else {
            continue;
        };
        if let Some(i) = gates.iter().position(|g| g.already_missed(&progress)) {
            let _ = which.set(i);
            missed.cancel();
            return;
        }
    }
}

/// The counts so far; `None` if the statistics are unreadable (a worker
/// panicked holding them, which the run reports itself).
fn progress_of(shared: &RunShared, planned: u64) -> Option<Progress> {
    let s = shared.stats.lock().ok()?;
    Some(Progress {
        planned,
        failed: s.counts.failed,
        connection_errors: s.counts.connection_errors,
        timeouts: s.counts.timeouts,
        late_sends: s.late_sends,
    })
}

/// The table printed after a judged run.
pub fn table(outcomes: &[GateOutcome]) -> String {
    let mut out = String::from("  gates\n");
    for o in outcomes {
        // The gate as written beside the figure judged (`p99` judged corrected).
        let mut line = format!("{}   [{}]", o.line(), o.gate);
        if o.aborted_run {
            line.push_str("  stopped the run");
        }
        out.push_str(&format!("    {line}\n"));
    }
    out
}
