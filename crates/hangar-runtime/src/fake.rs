//! A [`Driver`] that runs nothing and records every call: for tests of the
//! controller and the API, which need replicas that appear, crash, print
//! and vanish on command. Real replicas are tested against
//! [`crate::SandboxDriver`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::driver::{
    now_ms, Driver, DriverError, ExecResult, Exit, OutputEvent, OutputLine, OutputStream,
    ReplicaInfo, ReplicaSpec, ReplicaStats, StdinWait,
};

/// One call the fake received.
// A record for tests to compare: its size does not matter, plain specs read best.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// [`Driver::create`] of this spec.
    Create(ReplicaSpec),
    /// [`Driver::stop`] of this replica with this grace period.
    Stop(String, Duration),
    /// [`Driver::remove`].
    Remove(String),
    /// [`Driver::exec`].
    Exec(String, Vec<String>),
    /// [`Driver::stdin`].
    Stdin(String, Vec<u8>),
}

#[derive(Debug)]
struct Replica {
    info: ReplicaInfo,
    output: Vec<OutputLine>,
    followers: Vec<mpsc::Sender<OutputEvent>>,
}

#[derive(Debug, Default)]
struct State {
    replicas: BTreeMap<String, Replica>,
    calls: Vec<Call>,
    failing_creates: u32,
    failing_removes: u32,
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct FakeDriver {
    state: Mutex<State>,
    /// Creates made while set return only once it is cleared: the replica
    /// exists, its creator has not heard so yet (a pod created, not yet
    /// running).
    holding_creates: AtomicBool,
    creates_released: tokio::sync::Notify,
}

impl FakeDriver {
    /// A driver with no replicas.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.state().calls.clone()
    }

    /// The replicas that exist (running or exited, not removed).
    pub fn replicas(&self) -> Vec<ReplicaInfo> {
        self.state()
            .replicas
            .values()
            .map(|r| r.info.clone())
            .collect()
    }

    /// The next `n` creates fail.
    pub fn fail_creates(&self, n: u32) {
        self.state().failing_creates = n;
    }

    /// While `hold` is true, a create makes its replica and then waits for
    /// `hold_creates(false)` before it returns.
    pub fn hold_creates(&self, hold: bool) {
        self.holding_creates.store(hold, Ordering::SeqCst);
        if !hold {
            self.creates_released.notify_waiters();
        }
    }

    /// The next `n` removes fail (the replica stays).
    pub fn fail_removes(&self, n: u32) {
        self.state().failing_removes = n;
    }

    /// Replica `id` writes `text` to `stream`.
    pub fn print(&self, id: &str, stream: OutputStream, text: &str) {
        let mut state = self.state();
        if let Some(replica) = state.replicas.get_mut(id) {
            replica.info.output_seq += 1;
            let line = OutputLine {
                seq: replica.info.output_seq,
                at_ms: now_ms(),
                stream,
                text: text.to_owned(),
            };
            replica.output.push(line.clone());
            replica
                .followers
                .retain(|tx| tx.try_send(OutputEvent::Line(line.clone())).is_ok());
        }
    }

    /// Replica `id` exits as `exit` says (its output ends).
    pub fn exit(&self, id: &str, exit: Exit) {
        let mut state = self.state();
        if let Some(replica) = state.replicas.get_mut(id) {
            if replica.info.exit.is_none() {
                replica.info.exit = Some(exit);
                for tx in replica.followers.drain(..) {
                    let _ = tx.try_send(OutputEvent::End(exit));
                }
            }
        }
    }

    /// The synchronous half of a create: records the call, makes the replica.
    fn make(&self, spec: &ReplicaSpec) -> Result<ReplicaInfo, DriverError> {
        let mut state = self.state();
        state.calls.push(Call::Create(spec.clone()));
        if state.failing_creates > 0 {
            state.failing_creates -= 1;
            return Err(DriverError::Failed("the fake was told to fail".to_owned()));
        }
        if state.replicas.contains_key(&spec.id) {
            return Err(DriverError::Invalid(format!(
                "replica {} already exists",
                spec.id
            )));
        }
        let info = ReplicaInfo {
            id: spec.id.clone(),
            labels: spec.labels.clone(),
            address: spec
                .port
                .map(|port| std::net::SocketAddr::from(([127, 0, 0, 1], port))),
            pid: 0,
            started_at_ms: now_ms(),
            exit: None,
            output_seq: 0,
        };
        state.replicas.insert(
            spec.id.clone(),
            Replica {
                info: info.clone(),
                output: Vec::new(),
                followers: Vec::new(),
            },
        );
        Ok(info)
    }
}

fn exit_now(code: Option<i32>, signal: Option<i32>) -> Exit {
    Exit {
        code,
        signal,
        oom_killed: false,
        at_ms: now_ms(),
    }
}

#[async_trait::async_trait]
impl Driver for FakeDriver {
    fn name(&self) -> &'static str {
        "fake"
    }

    async fn create(&self, spec: &ReplicaSpec) -> Result<ReplicaInfo, DriverError> {
        let info = self.make(spec)?;
        loop {
            let mut released = std::pin::pin!(self.creates_released.notified());
            released.as_mut().enable();
            if !self.holding_creates.load(Ordering::SeqCst) {
                break;
            }
            released.await;
        }
        Ok(info)
    }

    async fn list(&self) -> Result<Vec<ReplicaInfo>, DriverError> {
        Ok(self.replicas())
    }

    async fn inspect(&self, id: &str) -> Result<ReplicaInfo, DriverError> {
        self.state()
            .replicas
            .get(id)
            .map(|r| r.info.clone())
            .ok_or_else(|| DriverError::NotFound(id.to_owned()))
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<Exit, DriverError> {
        self.state().calls.push(Call::Stop(id.to_owned(), grace));
        let signal = if grace.is_zero() { 9 } else { 15 };
        self.exit(id, exit_now(None, Some(signal)));
        self.inspect(id)
            .await?
            .exit
            .ok_or_else(|| DriverError::Failed("still running".to_owned()))
    }

    async fn remove(&self, id: &str) -> Result<(), DriverError> {
        let mut state = self.state();
        state.calls.push(Call::Remove(id.to_owned()));
        if state.failing_removes > 0 {
            state.failing_removes -= 1;
            return Err(DriverError::Failed("the fake was told to fail".to_owned()));
        }
        if let Some(mut replica) = state.replicas.remove(id) {
            for tx in replica.followers.drain(..) {
                let _ = tx.try_send(OutputEvent::End(exit_now(None, Some(9))));
            }
        }
        Ok(())
    }

    async fn exec(
        &self,
        id: &str,
        argv: &[String],
        _env: &[(String, String)],
        _timeout: Duration,
    ) -> Result<ExecResult, DriverError> {
        self.state()
            .calls
            .push(Call::Exec(id.to_owned(), argv.to_vec()));
        let info = self.inspect(id).await?;
        if info.exit.is_some() {
            return Err(DriverError::NotRunning(id.to_owned()));
        }
        Ok(ExecResult {
            stdout: format!("{}\n", argv.join(" ")).into_bytes(),
            stderr: Vec::new(),
            truncated: false,
            code: Some(0),
            timed_out: false,
        })
    }

    async fn stdin(&self, id: &str, input: &[u8], _wait: StdinWait) -> Result<String, DriverError> {
        self.state()
            .calls
            .push(Call::Stdin(id.to_owned(), input.to_vec()));
        let info = self.inspect(id).await?;
        if info.exit.is_some() {
            return Err(DriverError::NotRunning(id.to_owned()));
        }
        Ok(String::from_utf8_lossy(input).into_owned())
    }

    async fn follow(
        &self,
        id: &str,
        after: u64,
    ) -> Result<mpsc::Receiver<OutputEvent>, DriverError> {
        let mut state = self.state();
        let replica = state
            .replicas
            .get_mut(id)
            .ok_or_else(|| DriverError::NotFound(id.to_owned()))?;
        let (tx, rx) = mpsc::channel(1024);
        for line in replica.output.iter().filter(|line| line.seq > after) {
            let _ = tx.try_send(OutputEvent::Line(line.clone()));
        }
        match replica.info.exit {
            Some(exit) => {
                let _ = tx.try_send(OutputEvent::End(exit));
            }
            None => replica.followers.push(tx),
        }
        Ok(rx)
    }

    async fn stats(&self, id: &str) -> Result<ReplicaStats, DriverError> {
        self.inspect(id).await?;
        Ok(ReplicaStats {
            at_ms: now_ms(),
            ..ReplicaStats::default()
        })
    }
}
