//! Long-running work (backups, restores) as jobs whose progress anyone allowed can read while they
//! run (`api::jobs`). Every change is also broadcast, so pushing it to browsers needs no polling.
//!
//! A job runs in its own task: a client that disconnects from the request that started it does not
//! abort the work half-way.

use std::collections::VecDeque;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use utoipa::ToSchema;

use crate::auth::users::SessionUser;
use crate::error::{ApiError, ApiResult};
use crate::store::{now_unix, rfc3339};

/// Finished jobs kept for reading back.
const KEEP_FINISHED: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Running,
    Succeeded,
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Job {
    pub id: String,
    /// `backup`, `restore`, ...
    pub kind: String,
    pub vm_id: Option<String>,
    pub state: JobState,
    /// What it is doing now, e.g. `copying disk0`.
    pub phase: String,
    /// 0.0 to 1.0.
    pub progress: f64,
    /// Bytes handled so far and in all, where the work is measured in bytes.
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// The error of a failed job, or what a successful one produced (e.g. the backup's id).
    pub message: Option<String>,
    pub result_id: Option<String>,
    /// RFC 3339.
    pub started_at: String,
    pub finished_at: Option<String>,
    #[serde(skip_serializing, default)]
    owner: String,
}

/// A running job as the journal keeps it (the owner too, which answers leave out).
#[derive(Serialize, Deserialize)]
struct Journaled {
    owner: String,
    job: Job,
}

#[derive(Default)]
struct Table {
    running: Vec<Job>,
    finished: VecDeque<Job>,
}

/// Every job of this controller. They live in memory, and a restart ends the work they describe;
/// the journal (one small file per running job) is how the next start knows which were cut short.
pub struct Jobs {
    table: Mutex<Table>,
    events: broadcast::Sender<Job>,
    journal: Option<PathBuf>,
}

impl Default for Jobs {
    fn default() -> Self {
        Jobs { table: Mutex::default(), events: broadcast::channel(256).0, journal: None }
    }
}

/// What a job cut short by a stop of the controller says.
pub const INTERRUPTED: &str =
    "interrupted: the controller stopped while it ran; what it had half made was removed";

impl Jobs {
    /// Jobs journaled in `dir`: those a previous run left running show as failed, interrupted.
    pub fn with_journal(dir: PathBuf) -> anyhow::Result<Jobs> {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut interrupted = Vec::new();
        for entry in std::fs::read_dir(&dir)?.filter_map(Result::ok) {
            let path = entry.path();
            let read = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice::<Journaled>(&b).ok());
            if let Some(Journaled { owner, mut job }) = read {
                job.state = JobState::Failed;
                job.message = Some(INTERRUPTED.into());
                job.finished_at = Some(rfc3339(now_unix()));
                job.owner = owner;
                interrupted.push(job);
            }
            let _ = std::fs::remove_file(&path);
        }
        interrupted.sort_by(|a, b| b.started_at.cmp(&a.started_at));
        let jobs = Jobs { journal: Some(dir), ..Jobs::default() };
        jobs.table().finished.extend(interrupted);
        Ok(jobs)
    }

    /// The jobs a previous run of the controller left cut short.
    pub fn interrupted(&self) -> Vec<Job> {
        let t = self.table();
        t.finished.iter().filter(|j| j.message.as_deref() == Some(INTERRUPTED)).cloned().collect()
    }

    fn journal_path(&self, id: &str) -> Option<PathBuf> {
        self.journal.as_ref().map(|d| d.join(format!("{id}.json")))
    }

    /// Records a running job, so that a controller killed under it knows at its next start.
    fn journal(&self, job: &Job) {
        let Some(path) = self.journal_path(&job.id) else { return };
        let record = Journaled { owner: job.owner.clone(), job: job.clone() };
        let write = serde_json::to_vec(&record).map_err(std::io::Error::from).and_then(|b| {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, b)?;
            std::fs::rename(&tmp, &path)
        });
        if let Err(e) = write {
            tracing::warn!(job = job.id, error = %e, "could not journal a job");
        }
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        // A panic while holding this lock cannot leave the table half-updated: keep serving it.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets the finished jobs of a user who is gone, so that no later account of the same name
    /// reads them (running ones end on their own).
    pub fn forget_owner(&self, owner: &str) {
        self.table().finished.retain(|j| j.owner != owner);
    }

    /// Every change to any job, as it happens.
    pub fn subscribe(&self) -> broadcast::Receiver<Job> {
        self.events.subscribe()
    }

    /// Registers a running job and returns the handle its work reports through.
    pub fn begin(self: &Arc<Self>, kind: &str, vm_id: Option<&str>, owner: &str) -> JobHandle {
        let job = Job {
            id: crate::store::new_id(),
            kind: kind.into(),
            vm_id: vm_id.map(String::from),
            state: JobState::Running,
            phase: "starting".into(),
            progress: 0.0,
            bytes_done: 0,
            bytes_total: 0,
            message: None,
            result_id: None,
            started_at: rfc3339(now_unix()),
            finished_at: None,
            owner: owner.into(),
        };
        let id = job.id.clone();
        self.journal(&job);
        self.table().running.push(job.clone());
        let _ = self.events.send(job);
        JobHandle { jobs: self.clone(), id, done: false }
    }

    fn update(&self, id: &str, change: impl FnOnce(&mut Job)) {
        self.change(id, true, change);
    }

    /// Applies `change` to running job `id`; if that ends it, its journal entry goes too when
    /// `forget` (not so for a job cut short by a stop of the controller: the next start reports it).
    fn change(&self, id: &str, forget: bool, change: impl FnOnce(&mut Job)) {
        let mut t = self.table();
        let Some(i) = t.running.iter().position(|j| j.id == id) else { return };
        change(&mut t.running[i]);
        let job = t.running[i].clone();
        if job.state != JobState::Running {
            if let Some(path) = self.journal_path(id).filter(|_| forget) {
                let _ = std::fs::remove_file(path);
            }
            t.running.remove(i);
            t.finished.push_front(job.clone());
            t.finished.truncate(KEEP_FINISHED);
        }
        drop(t);
        let _ = self.events.send(job);
    }

    /// Jobs `user` may see: running first, then the most recently finished.
    pub fn visible(&self, user: &SessionUser) -> Vec<Job> {
        let t = self.table();
        t.running.iter().chain(t.finished.iter()).filter(|j| may_see(user, j)).cloned().collect()
    }

    /// Runs `work` as a job in its own task and waits for it. The work gets the handle to report
    /// progress; its outcome (an id it produced, or the error) ends the job. The task owns the job:
    /// if the caller goes away (a client disconnects), the work and its record carry on.
    pub async fn run<T, F, Fut>(
        self: &Arc<Self>,
        kind: &str,
        vm_id: Option<&str>,
        owner: &str,
        work: F,
    ) -> ApiResult<T>
    where
        T: Send + 'static,
        F: FnOnce(Progress) -> Fut,
        Fut: Future<Output = ApiResult<(T, Option<String>)>> + Send + 'static,
    {
        let mut handle = self.begin(kind, vm_id, owner);
        let fut = work(handle.progress());
        let task = tokio::spawn(async move {
            match fut.await {
                Ok((value, result_id)) => {
                    handle.succeed(result_id);
                    Ok(value)
                }
                Err(e) => {
                    handle.fail(&e.to_string());
                    Err(e)
                }
            }
        });
        task.await.unwrap_or_else(|e| Err(ApiError::Internal(anyhow::anyhow!("{kind} task failed: {e}"))))
    }
}

pub fn may_see(user: &SessionUser, job: &Job) -> bool {
    user.may_see(&job.owner)
}

/// Least time between two byte-progress updates: listeners want a moving bar, not thousands of
/// events a second (which would make every /ws/metrics client fall behind).
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// Reports a running job's progress; cheap to clone into blocking code.
#[derive(Clone)]
pub struct Progress {
    jobs: Arc<Jobs>,
    id: String,
    last_sent: Arc<Mutex<Option<std::time::Instant>>>,
}

impl Progress {
    pub fn phase(&self, phase: &str) {
        let phase = phase.to_string();
        self.jobs.update(&self.id, |j| j.phase = phase);
    }

    /// Bytes done of `total`, mapped onto the `[from, to]` part of the whole job (at most one
    /// update per `PROGRESS_EVERY`, and always the last one).
    pub fn bytes(&self, done: u64, total: u64, from: f64, to: f64) {
        {
            let mut last = self.last_sent.lock().unwrap_or_else(|e| e.into_inner());
            let now = std::time::Instant::now();
            if done < total && last.is_some_and(|t| now.duration_since(t) < PROGRESS_EVERY) {
                return;
            }
            *last = Some(now);
        }
        self.bytes_now(done, total, from, to);
    }

    /// As `bytes`, without throttling: for the last update of work whose total was an estimate.
    pub fn bytes_now(&self, done: u64, total: u64, from: f64, to: f64) {
        let fraction = if total == 0 { 1.0 } else { (done as f64 / total as f64).min(1.0) };
        self.jobs.update(&self.id, |j| {
            j.bytes_done = done;
            j.bytes_total = total;
            j.progress = (from + (to - from) * fraction).clamp(j.progress, 1.0);
        });
    }
}

/// The owner's end of a job: finishes it exactly once (dropped unfinished: failed).
pub struct JobHandle {
    jobs: Arc<Jobs>,
    id: String,
    done: bool,
}

impl JobHandle {
    pub fn progress(&self) -> Progress {
        Progress { jobs: self.jobs.clone(), id: self.id.clone(), last_sent: Arc::default() }
    }

    pub fn succeed(&mut self, result_id: Option<String>) {
        self.done = true;
        self.jobs.update(&self.id, |j| {
            j.state = JobState::Succeeded;
            j.phase = "done".into();
            j.progress = 1.0;
            j.result_id = result_id;
            j.finished_at = Some(rfc3339(now_unix()));
        });
    }

    pub fn fail(&mut self, error: &str) {
        self.done = true;
        let error = error.to_string();
        self.jobs.update(&self.id, |j| {
            j.state = JobState::Failed;
            j.message = Some(error);
            j.finished_at = Some(rfc3339(now_unix()));
        });
    }
}

impl Drop for JobHandle {
    /// Dropped unfinished: its task panicked, or was cancelled because the controller is stopping
    /// (a SIGTERM while the work still ran). Only the latter leaves its journal entry, so that the
    /// next start reports the job as interrupted, as it would after a kill.
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let panicked = std::thread::panicking();
        let message = if panicked { "failed: internal error" } else { INTERRUPTED };
        self.jobs.change(&self.id, panicked, |j| {
            j.state = JobState::Failed;
            j.message = Some(message.into());
            j.finished_at = Some(rfc3339(now_unix()));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reopened(dir: &std::path::Path) -> Vec<Job> {
        let jobs = Jobs::with_journal(dir.to_path_buf()).expect("journal");
        let t = jobs.table();
        t.running.iter().chain(t.finished.iter()).cloned().collect()
    }

    #[test]
    fn a_job_dropped_by_a_stopping_controller_shows_as_interrupted_after_the_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let jobs = Arc::new(Jobs::with_journal(dir.path().to_path_buf()).expect("journal"));
        let mut done = jobs.begin("backup", Some("vm1"), "alice");
        done.succeed(None);
        drop(jobs.begin("restore", Some("vm1"), "alice"));
        drop(jobs);
        let after = reopened(dir.path());
        assert_eq!(after.len(), 1, "only the dropped one is reported: {after:?}");
        assert_eq!(after[0].kind, "restore");
        assert_eq!(after[0].state, JobState::Failed);
        assert_eq!(after[0].message.as_deref(), Some(INTERRUPTED));
        assert_eq!(after[0].owner, "alice");
        assert!(reopened(dir.path()).is_empty(), "reported once, not at every start");
    }

    #[test]
    fn a_job_whose_task_panicked_is_failed_now_and_not_again_at_the_next_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let jobs = Arc::new(Jobs::with_journal(dir.path().to_path_buf()).expect("journal"));
        let handle = jobs.begin("clone", None, "bob");
        let panicked = std::thread::spawn(move || {
            let _handle = handle;
            panic!("work went wrong");
        })
        .join();
        assert!(panicked.is_err());
        let admin = SessionUser {
            username: "root".into(),
            is_admin: true,
            jti: String::new(),
            must_change_password: false,
        };
        let seen = jobs.visible(&admin);
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].state, JobState::Failed);
        assert_eq!(seen[0].message.as_deref(), Some("failed: internal error"));
        drop(jobs);
        assert!(reopened(dir.path()).is_empty());
    }
}
