//! Tasks run one per config entry (pollers, mailboxes), each with a stop of its own, so that a
//! reload can start the entries added, stop the entries removed and restart the entries changed
//! while the others go on. The process's stop reaches every task too.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Starts the task of one entry, which runs until its stop fires.
type Start<C> = Box<dyn Fn(&C, watch::Receiver<()>) -> JoinHandle<()> + Send + Sync>;

/// The running task of one entry.
struct Task<C> {
    entry: C,
    stop: Arc<watch::Sender<()>>,
    handle: JoinHandle<()>,
}

/// The tasks of a list of config entries.
pub struct EntryTasks<C> {
    start: Start<C>,
    process_stop: watch::Receiver<()>,
    tasks: tokio::sync::Mutex<Vec<Task<C>>>,
}

/// What a reload changed: entries started and stopped (a changed entry counts as both).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Changed {
    /// Tasks started.
    pub started: usize,
    /// Tasks stopped.
    pub stopped: usize,
}

impl<C: Clone + PartialEq + Send + 'static> EntryTasks<C> {
    /// Starts one task per entry of `entries` with `start`; every task also stops when
    /// `process_stop` fires.
    pub fn start(
        entries: &[C],
        process_stop: watch::Receiver<()>,
        start: impl Fn(&C, watch::Receiver<()>) -> JoinHandle<()> + Send + Sync + 'static,
    ) -> EntryTasks<C> {
        let tasks = EntryTasks { start: Box::new(start), process_stop, tasks: Default::default() };
        let started = entries.iter().map(|entry| tasks.spawn(entry)).collect();
        tasks.tasks.try_lock().map(|mut t| *t = started).expect("nobody else holds a new list");
        tasks
    }

    fn spawn(&self, entry: &C) -> Task<C> {
        let (stop, stopped) = watch::channel(());
        let stop = Arc::new(stop);
        // The process's stop reaches the task; this ends with the task (its receiver gone).
        let (forward, mut process_stop) = (stop.clone(), self.process_stop.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = process_stop.changed() => { let _ = forward.send(()); }
                _ = forward.closed() => {}
            }
        });
        Task { entry: entry.clone(), stop, handle: (self.start)(entry, stopped) }
    }

    /// Makes the running tasks those of `entries`: stops the tasks of entries no longer there or
    /// changed, waits for them together (up to `limit`, then aborts them), then starts the tasks
    /// of the new entries. A changed entry's old task has ended before its new one starts (they
    /// would share a cursor). A task stays listed until it has ended, so that a reload cut off
    /// by the process's stop leaves [`EntryTasks::finish`] every task to wait for.
    pub async fn reload(&self, entries: &[C], limit: Duration) -> Changed {
        let mut tasks = self.tasks.lock().await;
        let mut wanted: Vec<&C> = entries.iter().collect();
        let mut ending = vec![false; tasks.len()];
        for (task, ends) in tasks.iter().zip(&mut ending) {
            match wanted.iter().position(|entry| **entry == task.entry) {
                Some(at) => {
                    wanted.remove(at);
                }
                None => *ends = true,
            }
        }
        let changed = Changed { started: wanted.len(), stopped: ending.iter().filter(|e| **e).count() };
        let ended = tasks.iter_mut().zip(&ending).filter(|(_, ends)| **ends).map(|(task, _)| {
            let _ = task.stop.send(());
            finish_in_place(&mut task.handle, limit)
        });
        futures_util::future::join_all(ended).await;
        let mut ends = ending.into_iter();
        tasks.retain(|_| !ends.next().unwrap_or(false));
        let started: Vec<_> = wanted.into_iter().map(|entry| self.spawn(entry)).collect();
        tasks.extend(started);
        changed
    }

    /// The entries running now.
    pub async fn entries(&self) -> Vec<C> {
        self.tasks.lock().await.iter().map(|task| task.entry.clone()).collect()
    }

    /// Waits for every task to end (after the process's stop), all together, at most `limit`.
    pub async fn finish(&self, limit: Duration) {
        let ending: Vec<_> = self.tasks.lock().await.drain(..).map(|task| finish(task.handle, limit)).collect();
        futures_util::future::join_all(ending).await;
    }
}

/// Waits up to `limit` for `task`, then aborts it.
pub async fn finish(mut task: JoinHandle<()>, limit: Duration) {
    finish_in_place(&mut task, limit).await;
}

/// [`finish`] of a task still held elsewhere (its handle is done afterwards).
async fn finish_in_place(task: &mut JoinHandle<()>, limit: Duration) {
    if task.is_finished() {
        return;
    }
    if tokio::time::timeout(limit, &mut *task).await.is_err() {
        task.abort();
        let _ = task.await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[tokio::test]
    async fn a_reload_starts_the_new_stops_the_gone_and_restarts_the_changed_entries() {
        let (process_tx, process_rx) = watch::channel(());
        let log = Arc::new(Mutex::new(Vec::<String>::new()));
        let record = log.clone();
        let tasks = EntryTasks::start(&["a", "b"], process_rx, move |entry: &&str, mut stop| {
            let (entry, log) = (entry.to_string(), record.clone());
            log.lock().unwrap().push(format!("start {entry}"));
            tokio::spawn(async move {
                let _ = stop.changed().await;
                log.lock().unwrap().push(format!("stop {entry}"));
            })
        });
        let taken = || std::mem::take(&mut *log.lock().unwrap());
        assert_eq!(taken(), ["start a", "start b"]);

        let changed = tasks.reload(&["b", "c"], Duration::from_secs(1)).await;
        assert_eq!(changed, Changed { started: 1, stopped: 1 });
        assert_eq!(taken(), ["stop a", "start c"], "a ended before c started; b ran on");
        assert_eq!(tasks.entries().await, ["b", "c"]);
        assert_eq!(tasks.reload(&["b", "c"], Duration::from_secs(1)).await, Changed::default());

        process_tx.send(()).unwrap();
        tasks.finish(Duration::from_secs(1)).await;
        let mut stopped = taken();
        stopped.sort();
        assert_eq!(stopped, ["stop b", "stop c"], "the process's stop reaches every task");
    }
}
