//! Where the sessions run: one single-threaded tokio runtime per core (a *shard*),
//! the sessions dealt over them, and nothing shared between shards but the
//! plan's counters, the stats lock and the cancellation tokens.
//!
//! Why not tokio's multi-threaded runtime: its workers share one I/O driver, and only
//! one of them waits in `epoll_wait` at a time; the others sleep on a condition
//! variable. Every batch of readiness events makes the driving thread wake a sleeping
//! sibling to steal half of the woken sessions, which mostly finds nothing left and
//! parks again. Against Postfix's smtp-sink (10 KiB, 20 sessions, one message per
//! connection) that was about 480 futex waits and as many futex wakes per 2,000
//! messages, and it left the default runtime 8–10% behind smtp-source, a
//! single-threaded client. A session does its whole life (connect to QUIT) on one
//! thread, so there is nothing to balance while it runs: here each shard has its
//! own epoll set and timer wheel, a woken session is polled by the thread whose
//! epoll woke it, and no thread ever wakes another during a run.
//!
//! A shard also polls its sockets for a short while before it sleeps ([`SPIN`]).
//! With a fast server on the same host, replies come every few microseconds; a
//! generator thread that blocks in `epoll_wait` between them makes the *server* pay
//! for waking it (the wake-up runs in the server's `write`, and in a VM costs an
//! inter-processor interrupt), and the server is the side being measured. Perf on
//! smtp-sink showed 16% of its CPU in that wake-up against loadgen and 6% against
//! smtp-source, which rarely sleeps. Polling on is bounded: only while the shard's
//! events come less than [`SPIN`] apart (its last sleep was that short), never longer
//! than [`SPIN`] without an event, and each round yields the CPU to anything else
//! runnable on it. Against a slow or remote server a shard sleeps as before, so its
//! CPU figure (and `generator_saturated`) does not fill up with polling.
//!
//! Only the closed model (burst) polls. There the server is meant to be the
//! bottleneck and every wake-up it pays for lowers the figure being measured. In
//! the open model the rate is fixed and the server has slack; polling would only
//! take CPU a co-located server may need (measured: at 5,000/s against smtp-server
//! on this 2-core machine it doubled the generator's CPU and, with other load,
//! made sends late), so a sustained shard sleeps whenever it has nothing to do.
//!
//! Shard 0 is the runtime that calls [`Shards::spawn`] (in the binary, the main
//! thread, which also runs the progress line and the end-of-run logic); shards
//! 1.. are threads started here. With one shard (`--threads 1`) the whole generator
//! runs on the calling thread, as before.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::num::NonZeroUsize;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use tokio::runtime::{Builder, Handle, Runtime};
use tokio::sync::oneshot;
use tokio::task::{AbortHandle, JoinSet};

/// How long a shard keeps polling without an event before it sleeps in
/// `epoll_wait`: a few of a loopback server's reply times (10–20 µs each), short
/// enough that an idle or slow run costs next to nothing.
pub const SPIN: Duration = Duration::from_micros(50);

/// How many shards `--threads` asks for: `0` means one per core the process may
/// use (`available_parallelism` honours CPU affinity and cgroup quotas).
pub fn shard_count(threads: usize) -> usize {
    match threads {
        0 => std::thread::available_parallelism().map_or(1, NonZeroUsize::get),
        n => n,
    }
}

/// The runtime the binary runs [`crate::run`] on: shard 0, single-threaded.
pub fn main_runtime() -> std::io::Result<Runtime> {
    shard_runtime()
}

/// A shard's runtime: single-threaded, with timers and I/O, polling before it sleeps.
fn shard_runtime() -> std::io::Result<Runtime> {
    Builder::new_current_thread()
        .enable_all()
        .on_thread_park(before_sleep)
        .on_thread_unpark(after_wake)
        .build()
}

/// The generator's shards: the caller's runtime and `count - 1` threads, each with a
/// single-threaded runtime of its own.
pub struct Shards {
    helpers: Vec<ShardThread>,
    /// Shard 0's [`keep_polling`] task, if polling (the other shards' end with
    /// their runtime).
    poller: Option<AbortHandle>,
}

/// One shard past the first: its runtime's handle (tasks are spawned onto it from
/// shard 0) and what ends its thread.
struct ShardThread {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Shards {
    /// Starts `count - 1` shard threads (none for `count` ≤ 1). With `poll`, every
    /// shard polls for a while before it sleeps (shard 0 only if its runtime was
    /// built by [`main_runtime`]).
    pub fn start(count: usize, poll: bool) -> std::io::Result<Shards> {
        let helpers = (1..count)
            .map(|index| ShardThread::start(index, poll))
            .collect::<std::io::Result<_>>()?;
        let poller = poll.then(|| tokio::spawn(keep_polling()).abort_handle());
        Ok(Shards { helpers, poller })
    }

    /// How many shards, the caller's included.
    pub fn count(&self) -> usize {
        self.helpers.len() + 1
    }

    /// Spawns `task` into `set` on shard `index % count()`: shard 0 is the current
    /// runtime. Spawning onto another shard wakes that thread once; from then on the
    /// task is polled only there.
    pub fn spawn<F>(&self, set: &mut JoinSet<F::Output>, index: usize, task: F)
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let task = counting_polls(task);
        match index % self.count() {
            0 => set.spawn(task),
            n => set.spawn_on(task, &self.helpers[n - 1].handle),
        };
    }
}

impl Drop for Shards {
    fn drop(&mut self) {
        if let Some(p) = &self.poller {
            p.abort();
        }
    }
}

impl ShardThread {
    fn start(index: usize, poll: bool) -> std::io::Result<ShardThread> {
        let runtime = shard_runtime()?;
        let handle = runtime.handle().clone();
        if poll {
            handle.spawn(keep_polling());
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("loadgen-shard-{index}"))
            .spawn(move || {
                // Drives the tasks spawned onto this shard until told to stop; a
                // dropped sender (shard 0 unwinding) stops it as well.
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        Ok(ShardThread {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for ShardThread {
    /// Stops the thread and waits for it: its runtime, and any task still on it (only
    /// when a run ends early with an error), is dropped on its own thread.
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a shard's thread knows about its own recent work, for [`before_sleep`].
#[derive(Default)]
struct RecentWork {
    /// Polls of session tasks on this thread so far ([`counting_polls`]).
    polls: Cell<u64>,
    /// `polls` when [`before_sleep`] last looked, and when it last changed.
    seen: Cell<u64>,
    busy_at: Cell<Option<Instant>>,
    /// When the thread last went to sleep, until it wakes.
    asleep_since: Cell<Option<Instant>>,
    /// The last sleep was shorter than [`SPIN`]: events come close enough together
    /// that polling for the next one is cheaper than being woken.
    events_close: Cell<bool>,
    /// Wakes this thread's [`keep_polling`] task.
    poller: RefCell<Option<Waker>>,
}

thread_local! {
    static RECENT: RecentWork = RecentWork::default();
}

/// Counts every poll of `task` as work on the thread that polls it.
fn counting_polls<F: Future>(task: F) -> impl Future<Output = F::Output> {
    let mut task = Box::pin(task);
    std::future::poll_fn(move |cx| {
        RECENT.with(|r| r.polls.set(r.polls.get() + 1));
        task.as_mut().poll(cx)
    })
}

/// A task that does nothing but can be woken: waking it is how [`before_sleep`]
/// tells the scheduler to poll the sockets once more instead of sleeping. Without
/// it (the open model, or after it ends) the thread sleeps whenever it is idle.
async fn keep_polling() {
    /// Forgets the waker when the task ends, so the thread sleeps again.
    struct Forget;
    impl Drop for Forget {
        fn drop(&mut self) {
            // `try_with`: a runtime dropped during thread exit may outlive RECENT.
            let _ = RECENT.try_with(|r| r.poller.take());
        }
    }
    let _forget = Forget;
    std::future::poll_fn(|cx| {
        RECENT.with(|r| {
            let mut w = r.poller.borrow_mut();
            if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *w = Some(cx.waker().clone());
            }
        });
        Poll::<()>::Pending
    })
    .await
}

/// Runs each time the shard's scheduler has nothing to run and is about to sleep in
/// `epoll_wait`. If events have been coming close together and the sessions did work
/// less than [`SPIN`] ago, it wakes [`keep_polling`], and tokio then polls the sockets
/// without blocking and comes back here; otherwise the thread sleeps until an event.
fn before_sleep() {
    RECENT.with(|r| {
        let now = Instant::now();
        let polls = r.polls.get();
        if polls != r.seen.get() {
            r.seen.set(polls);
            r.busy_at.set(Some(now));
        }
        let recent = r.busy_at.get().is_some_and(|t| now - t < SPIN);
        if r.events_close.get()
            && recent
            && let Some(w) = r.poller.borrow().as_ref()
        {
            // Whatever else wants this CPU (the server, on a small machine) goes first.
            std::thread::yield_now();
            w.wake_by_ref();
            return;
        }
        r.asleep_since.set(Some(now));
    });
}

/// Runs after every poll of the sockets; after a real sleep, notes whether it was
/// short enough that polling would have been cheaper.
fn after_wake() {
    RECENT.with(|r| {
        if let Some(t) = r.asleep_since.take() {
            r.events_close.set(t.elapsed() < SPIN);
        }
    });
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn zero_threads_means_one_shard_per_core() {
        let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        assert_eq!(shard_count(0), cores);
        assert_eq!(shard_count(1), 1);
        assert_eq!(shard_count(3), 3);
    }

    #[test]
    fn tasks_are_dealt_over_the_shards_and_each_stays_on_its_thread() {
        let rt = main_runtime().unwrap();
        let seen = rt.block_on(async {
            let shards = Shards::start(3, true).unwrap();
            assert_eq!(shards.count(), 3);
            let mut set = JoinSet::new();
            for i in 0..9 {
                shards.spawn(&mut set, i, async move {
                    let before = std::thread::current().id();
                    tokio::task::yield_now().await;
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    assert_eq!(std::thread::current().id(), before, "task moved");
                    (i % 3, format!("{before:?}"))
                });
            }
            let mut seen = Vec::new();
            while let Some(r) = set.join_next().await {
                seen.push(r.unwrap());
            }
            seen
        });
        let threads: BTreeSet<_> = seen.iter().map(|(_, t)| t.clone()).collect();
        assert_eq!(threads.len(), 3, "three shards, three threads");
        for shard in 0..3 {
            let on: BTreeSet<_> = seen
                .iter()
                .filter(|(s, _)| *s == shard)
                .map(|(_, t)| t.clone())
                .collect();
            assert_eq!(on.len(), 1, "shard {shard} is one thread");
        }
    }

    #[test]
    fn one_shard_runs_everything_on_the_calling_thread() {
        let rt = main_runtime().unwrap();
        let caller = std::thread::current().id();
        rt.block_on(async {
            let shards = Shards::start(1, true).unwrap();
            let mut set = JoinSet::new();
            for i in 0..4 {
                shards.spawn(&mut set, i, async { std::thread::current().id() });
            }
            while let Some(r) = set.join_next().await {
                assert_eq!(r.unwrap(), caller);
            }
        });
    }

    /// CPU time of the calling thread.
    fn thread_cpu() -> Duration {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid timespec for the call to fill in.
        assert_eq!(
            unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) },
            0
        );
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }

    /// 2,000 round trips to an echo thread on shard 0, then 300 ms with nothing to
    /// do: how many times the shard slept during the round trips, and the CPU it
    /// used while idle.
    fn round_trips_then_idle(poll: bool) -> (u64, Duration) {
        let rt = main_runtime().unwrap();
        rt.block_on(async {
            let shards = Shards::start(1, poll).unwrap();
            let mut set = JoinSet::new();
            // Replies come microseconds apart.
            let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let mut theirs = theirs;
                let mut b = [0u8; 1];
                while theirs.read_exact(&mut b).is_ok() && theirs.write_all(&b).is_ok() {}
            });
            ours.set_nonblocking(true).unwrap();
            let mut ours = tokio::net::UnixStream::from_std(ours).unwrap();
            shards.spawn(&mut set, 0, async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let sleeps = || Handle::current().metrics().worker_park_count(0);
                let mut b = [0u8; 1];
                let before = sleeps();
                for _ in 0..2000 {
                    ours.write_all(&b).await.unwrap();
                    ours.read_exact(&mut b).await.unwrap();
                }
                let busy_sleeps = sleeps() - before;
                let before = thread_cpu();
                tokio::time::sleep(Duration::from_millis(300)).await;
                (busy_sleeps, thread_cpu() - before)
            });
            set.join_next().await.unwrap().unwrap()
        })
    }

    #[test]
    fn a_polling_shard_polls_between_close_replies_and_sleeps_when_idle() {
        let (busy_sleeps, idle_cpu) = round_trips_then_idle(true);
        // Without polling about one round trip in four ends in a sleep (467 of 2000
        // measured); with it, one. A loaded machine delays some replies past SPIN,
        // hence the margin.
        assert!(
            busy_sleeps < 200,
            "{busy_sleeps} sleeps in 2000 round trips"
        );
        assert!(
            idle_cpu < Duration::from_millis(30),
            "{idle_cpu:?} of CPU in 300 ms with nothing to do"
        );
    }

    #[test]
    fn a_shard_that_does_not_poll_sleeps_whenever_idle() {
        let (polling, _) = round_trips_then_idle(true);
        let (sleeping, idle_cpu) = round_trips_then_idle(false);
        assert!(
            sleeping > polling,
            "{sleeping} sleeps without polling, {polling} with"
        );
        assert!(idle_cpu < Duration::from_millis(30), "{idle_cpu:?} idle");
    }
}
