//! The shim once its replica runs: output capture, exit watching and the
//! socket server (see the parent module).

// Errors here are the replies written to the socket, once per request: their
// size does not matter.
#![allow(clippy::result_large_err)]

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::pipe;
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{broadcast, watch};

use super::protocol::{ErrorKind, Reply, Request, ShimConfig};
use super::{Started, BUFFER_BYTES, BUFFER_LINES};
use crate::driver::{
    now_ms, Exit, OutputEvent, OutputLine, OutputStream, ReplicaInfo, ReplicaStats, MAX_LINE_BYTES,
};
use crate::sandbox::{error_chain, ExitStatus, Sandbox, Sandboxes};

/// How long after the init's exit the shim waits for the pipes to drain
/// before it declares the output complete anyway.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// How long a stop waits for the exit after `SIGKILL` before it gives up.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Requests larger than this are refused.
const MAX_REQUEST_BYTES: u64 = 4 << 20;

/// While a follower is attached, the replica's output is read only as fast
/// as the follower takes it: once this many lines (or half the buffer's
/// bytes) wait for it, the shim stops reading the pipes, they fill, and
/// the agent's writes block — as `docker logs`' default blocking mode does.
/// Without a follower (the daemon is away) nothing blocks: the buffer keeps
/// the newest lines and the daemon learns of the rest as a gap.
const FOLLOWER_LAG_LINES: u64 = (BUFFER_LINES / 2) as u64;

/// A follower that takes nothing for this long no longer holds the agent
/// back (a hung daemon must not freeze its replicas): reading goes on, and
/// the oldest lines it has not taken may be dropped.
const FOLLOWER_STALL: Duration = Duration::from_secs(5);

struct Shim {
    dir: PathBuf,
    config: ShimConfig,
    info: ReplicaInfo,
    buffer: Mutex<Buffer>,
    events: broadcast::Sender<OutputEvent>,
    exit: watch::Sender<Option<Exit>>,
    sandbox: Mutex<Option<Sandbox>>,
    stdin: tokio::sync::Mutex<Option<pipe::Sender>>,
    /// Followers attached now, and the highest line any of them was sent:
    /// what the readers wait on (see [`FOLLOWER_LAG_LINES`]).
    followers: std::sync::atomic::AtomicUsize,
    delivered: watch::Sender<u64>,
    /// Where the brake was last released for a stalled follower: (lines
    /// delivered, followers attached) then. Until either changes, output is
    /// read without waiting, so a stalled follower costs one pause, not one
    /// per line.
    released: Mutex<Option<(u64, usize)>>,
}

/// Counts a follower while it is attached.
struct Attached<'a>(&'a Shim);

impl<'a> Attached<'a> {
    /// Attaches a follower that has lines through `after`. The first one
    /// attached (a daemon back after a restart) sets how far output was
    /// taken; later ones only ever move it forward.
    fn new(shim: &'a Shim, after: u64) -> Self {
        let before = shim
            .followers
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if before == 0 {
            shim.delivered.send_replace(after);
        } else {
            // Another follower (a daemon's old connection, not yet noticed
            // gone) may be ahead: this one's progress must count too.
            shim.delivered
                .send_modify(|through| *through = (*through).min(after));
        }
        Self(shim)
    }
}

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        self.0
            .followers
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        // A reader waiting on this follower looks again.
        self.0.delivered.send_modify(|_| {});
    }
}

/// How much output waits for the attached followers.
#[derive(Debug, Default, Clone, Copy)]
struct Lag {
    lines: u64,
    bytes: usize,
}

impl Lag {
    fn too_far(self) -> bool {
        self.lines >= FOLLOWER_LAG_LINES || self.bytes >= BUFFER_BYTES / 2
    }
}

#[derive(Default)]
struct Buffer {
    lines: VecDeque<OutputLine>,
    /// Beside each line of `lines`: the bytes of all output pushed through
    /// it, so the bytes after any buffered line are one subtraction.
    pushed_through: VecDeque<u64>,
    /// Bytes of all output pushed so far.
    pushed: u64,
    bytes: usize,
    last_seq: u64,
    /// Set once the output is complete.
    end: Option<Exit>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shim {
    /// Buffers and broadcasts a line; returns how far ahead of the attached
    /// followers the output is (nothing with none attached).
    fn push(&self, stream: OutputStream, text: String) -> Lag {
        let mut buffer = lock(&self.buffer);
        buffer.last_seq += 1;
        let line = OutputLine {
            seq: buffer.last_seq,
            at_ms: now_ms(),
            stream,
            text,
        };
        buffer.bytes += line.text.len();
        buffer.pushed += line.text.len() as u64;
        let pushed = buffer.pushed;
        buffer.pushed_through.push_back(pushed);
        buffer.lines.push_back(line.clone());
        while buffer.lines.len() > BUFFER_LINES || buffer.bytes > BUFFER_BYTES {
            match buffer.lines.pop_front() {
                Some(old) => {
                    buffer.bytes -= old.text.len();
                    buffer.pushed_through.pop_front();
                }
                None => break,
            }
        }
        // Sent under the lock, so followers see lines in order.
        let _ = self.events.send(OutputEvent::Line(line));
        self.lag(&buffer)
    }

    fn lag(&self, buffer: &Buffer) -> Lag {
        if self.followers.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            return Lag::default();
        }
        let delivered = *self.delivered.borrow();
        let first = buffer.lines.front().map_or(buffer.last_seq + 1, |l| l.seq);
        // Bytes after line `delivered`: all buffered ones when it is older
        // than the buffer.
        let bytes = match delivered.checked_sub(first) {
            Some(i) => usize::try_from(i)
                .ok()
                .and_then(|i| buffer.pushed_through.get(i))
                .map_or(0, |through| buffer.pushed.saturating_sub(*through)),
            None => buffer.bytes as u64,
        };
        Lag {
            lines: buffer.last_seq.saturating_sub(delivered),
            bytes: usize::try_from(bytes).unwrap_or(usize::MAX),
        }
    }

    /// Waits until the attached followers are within [`FOLLOWER_LAG_LINES`]
    /// of the output (or gone, or stalled for [`FOLLOWER_STALL`]).
    async fn wait_for_followers(&self) {
        let mut rx = self.delivered.subscribe();
        let mut progress = tokio::time::Instant::now();
        let mut through = *rx.borrow_and_update();
        let followers = || self.followers.load(std::sync::atomic::Ordering::SeqCst);
        if *lock(&self.released) == Some((through, followers())) {
            return;
        }
        loop {
            let lag = self.lag(&lock(&self.buffer));
            if !lag.too_far() {
                return;
            }
            if progress.elapsed() >= FOLLOWER_STALL {
                tracing::warn!(
                    lines = lag.lines,
                    "a follower took nothing for {FOLLOWER_STALL:?}; reading on without it"
                );
                *lock(&self.released) = Some((through, followers()));
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), rx.changed()).await;
            let now = *rx.borrow_and_update();
            if now != through {
                through = now;
                progress = tokio::time::Instant::now();
            }
        }
    }

    fn info(&self) -> ReplicaInfo {
        let mut info = self.info.clone();
        info.exit = *self.exit.borrow();
        info.output_seq = lock(&self.buffer).last_seq;
        info
    }

    fn with_sandbox<R>(&self, f: impl FnOnce(&mut Sandbox) -> R) -> Option<R> {
        lock(&self.sandbox).as_mut().map(f)
    }

    async fn wait_exit(&self, within: Duration) -> Option<Exit> {
        let mut rx = self.exit.subscribe();
        let waited = tokio::time::timeout(within, rx.wait_for(Option::is_some)).await;
        match waited {
            Ok(Ok(exit)) => *exit,
            _ => *self.exit.borrow(),
        }
    }

    async fn stop(&self, grace: Duration) -> Result<Exit, Reply> {
        if let Some(exit) = *self.exit.borrow() {
            return Ok(exit);
        }
        let signal = if grace.is_zero() {
            Signal::SIGKILL
        } else {
            Signal::SIGTERM
        };
        self.signal(signal)?;
        if let Some(exit) = self.wait_exit(grace).await {
            return Ok(exit);
        }
        self.signal(Signal::SIGKILL)?;
        self.wait_exit(KILL_WAIT).await.ok_or_else(|| {
            Reply::error(ErrorKind::Failed, "the replica did not exit after SIGKILL")
        })
    }

    fn signal(&self, signal: Signal) -> Result<(), Reply> {
        self.with_sandbox(|sandbox| sandbox.kill(signal))
            .unwrap_or(Ok(()))
            .map_err(|err| Reply::error(ErrorKind::Failed, error_chain(&err)))
    }
}

/// Runs the shim until it is deleted; returns the process's exit code.
pub(super) async fn serve(
    dir: PathBuf,
    config: ShimConfig,
    info: ReplicaInfo,
    started: Started,
) -> i32 {
    let Started {
        sandbox,
        pipes,
        stdin,
        listener,
    } = started;
    let (events, _) = broadcast::channel(1024);
    let (exit, _) = watch::channel(None);
    let stdin = stdin.and_then(|file| match pipe::Sender::from_file(file) {
        Ok(sender) => Some(sender),
        Err(err) => {
            tracing::error!(error = %err, "cannot use the stdin pipe");
            None
        }
    });
    let shim = Arc::new(Shim {
        dir,
        config,
        info,
        buffer: Mutex::new(Buffer::default()),
        events,
        exit,
        sandbox: Mutex::new(Some(sandbox)),
        stdin: tokio::sync::Mutex::new(stdin),
        followers: std::sync::atomic::AtomicUsize::new(0),
        delivered: watch::channel(0).0,
        released: Mutex::new(None),
    });

    let readers = [
        (pipes.stdout, OutputStream::Stdout),
        (pipes.stderr, OutputStream::Stderr),
    ]
    .map(|(file, stream)| tokio::spawn(read_output(shim.clone(), file, stream)));
    tokio::spawn(watch_exit(shim.clone(), readers));

    let listener = match UnixListener::from_std(listener) {
        Ok(listener) => listener,
        Err(err) => {
            tracing::error!(error = %err, "cannot listen; killing the replica");
            if let Some(sandbox) = lock(&shim.sandbox).take() {
                let _ = sandbox.delete();
            }
            return 1;
        }
    };
    let (done_tx, mut done_rx) = watch::channel(false);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(handle(shim.clone(), stream, done_tx.clone()));
                }
                Err(err) => {
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = done_rx.changed() => {
                if *done_rx.borrow() {
                    return 0;
                }
            }
        }
    }
}

/// Reads one of the replica's output pipes into numbered lines.
async fn read_output(shim: Arc<Shim>, file: File, stream: OutputStream) {
    let mut pipe = match pipe::Receiver::from_file(file) {
        Ok(pipe) => pipe,
        Err(err) => {
            tracing::error!(error = %err, ?stream, "cannot read the output pipe");
            return;
        }
    };
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = vec![0_u8; 64 << 10];
    loop {
        let read = match pipe.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => {
                tracing::warn!(error = %err, ?stream, "output pipe failed");
                break;
            }
        };
        pending.extend_from_slice(&chunk[..read]);
        let mut start = 0;
        while let Some(end) = pending[start..].iter().position(|&b| b == b'\n') {
            if emit(&shim, stream, &pending[start..start + end]).too_far() {
                shim.wait_for_followers().await;
            }
            start += end + 1;
        }
        pending.drain(..start);
        while pending.len() >= MAX_LINE_BYTES {
            if emit(&shim, stream, &pending[..MAX_LINE_BYTES]).too_far() {
                shim.wait_for_followers().await;
            }
            pending.drain(..MAX_LINE_BYTES);
        }
    }
    if !pending.is_empty() {
        emit(&shim, stream, &pending);
    }
}

fn emit(shim: &Shim, stream: OutputStream, bytes: &[u8]) -> Lag {
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    let mut start = 0;
    let mut lag = Lag::default();
    while start < bytes.len() || start == 0 {
        let end = (start + MAX_LINE_BYTES).min(bytes.len());
        lag = shim.push(
            stream,
            String::from_utf8_lossy(&bytes[start..end]).into_owned(),
        );
        if end == bytes.len() {
            break;
        }
        start = end;
    }
    lag
}

/// Reaps the init on `SIGCHLD` (and on a slow tick, in case a signal was
/// missed), then ends the output once the pipes have drained.
async fn watch_exit(shim: Arc<Shim>, readers: [tokio::task::JoinHandle<()>; 2]) {
    let mut sigchld = match signal(SignalKind::child()) {
        Ok(stream) => Some(stream),
        Err(err) => {
            tracing::warn!(error = %err, "no SIGCHLD stream; polling for the exit");
            None
        }
    };
    let exit = loop {
        let reaped = shim.with_sandbox(|sandbox| {
            sandbox
                .try_wait()
                .map(|status| status.map(|status| (status, sandbox.oom_killed())))
        });
        match reaped {
            Some(Ok(Some((status, oom_killed)))) => {
                let (code, signal) = match status {
                    ExitStatus::Exited(code) => (Some(code), None),
                    ExitStatus::Signaled(signal) => (None, Some(signal as i32)),
                };
                break Exit {
                    code,
                    signal,
                    oom_killed,
                    at_ms: now_ms(),
                };
            }
            Some(Ok(None)) => {}
            Some(Err(err)) => tracing::warn!(error = %error_chain(&err), "wait failed"),
            None => return,
        }
        match sigchld.as_mut() {
            Some(stream) => {
                let _ = tokio::time::timeout(Duration::from_secs(1), stream.recv()).await;
            }
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    tracing::info!(?exit, "the replica exited");
    shim.exit.send_replace(Some(exit));
    // The pipes drain at the followers' pace (backpressure holds while they
    // take lines): the output ends once they are drained, or once neither
    // the pipes nor the followers moved for a while (a child holding the
    // pipes open, a stalled follower).
    let mut drained = std::pin::pin!(async {
        for reader in readers {
            let _ = reader.await;
        }
    });
    loop {
        let before = (lock(&shim.buffer).last_seq, *shim.delivered.borrow());
        // With a follower attached a reader may be pausing for it: wait past
        // that pause before calling the pipes stuck.
        let window = if shim.followers.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            FOLLOWER_STALL + Duration::from_secs(1)
        } else {
            DRAIN_AFTER_EXIT
        };
        if tokio::time::timeout(window, drained.as_mut()).await.is_ok() {
            break;
        }
        let after = (lock(&shim.buffer).last_seq, *shim.delivered.borrow());
        if after == before {
            tracing::warn!("output pipes still open after the exit; ending the output");
            break;
        }
    }
    let mut buffer = lock(&shim.buffer);
    buffer.end = Some(exit);
    let _ = shim.events.send(OutputEvent::End(exit));
}

async fn handle(shim: Arc<Shim>, stream: UnixStream, done: watch::Sender<bool>) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read).take(MAX_REQUEST_BYTES);
    if let Err(err) = reader.read_line(&mut line).await {
        tracing::debug!(error = %err, "bad request");
        return;
    }
    let request: Request = match serde_json::from_str(&line) {
        Ok(request) => request,
        Err(err) => {
            let _ = send(
                &mut write,
                &Reply::error(ErrorKind::Invalid, err.to_string()),
            )
            .await;
            return;
        }
    };
    let reply = match request {
        Request::Status => Reply::Info(shim.info()),
        Request::Stop { grace_ms } => match shim.stop(Duration::from_millis(grace_ms)).await {
            Ok(exit) => Reply::Stopped(exit),
            Err(reply) => reply,
        },
        Request::Stats => match shim.with_sandbox(|sandbox| sandbox.stats()) {
            Some(Ok(stats)) => Reply::Stats(ReplicaStats {
                cpu_ns: stats.cpu_ns,
                memory_bytes: stats.memory_bytes,
                rx_bytes: stats.rx_bytes,
                tx_bytes: stats.tx_bytes,
                pids: stats.pids,
                at_ms: now_ms(),
            }),
            Some(Err(err)) => Reply::error(ErrorKind::Failed, error_chain(&err)),
            None => Reply::error(ErrorKind::NotRunning, "the replica is being deleted"),
        },
        Request::Stdin {
            input,
            quiet_ms,
            timeout_ms,
        } => stdin(
            &shim,
            input.as_bytes(),
            Duration::from_millis(quiet_ms),
            Duration::from_millis(timeout_ms),
        )
        .await
        .unwrap_or_else(|reply| reply),
        Request::Follow { after } => {
            follow(&shim, after, &mut write).await;
            return;
        }
        Request::Delete => match delete(&shim).await {
            Ok(()) => {
                let _ = send(&mut write, &Reply::Deleted).await;
                let _ = write.shutdown().await;
                done.send_replace(true);
                return;
            }
            Err(reply) => reply,
        },
    };
    let _ = send(&mut write, &reply).await;
}

async fn send(write: &mut (impl AsyncWriteExt + Unpin), reply: &Reply) -> io::Result<()> {
    let mut line = Vec::new();
    encode(&mut line, reply)?;
    write.write_all(&line).await?;
    write.flush().await
}

/// Appends `reply` as one line to `out`.
fn encode(out: &mut Vec<u8>, reply: &Reply) -> io::Result<()> {
    serde_json::to_writer(&mut *out, reply).map_err(io::Error::other)?;
    out.push(b'\n');
    Ok(())
}

/// Output events a follower gathers into one write, at most (in bytes):
/// the daemon then reads many lines per read instead of one.
const FOLLOW_CHUNK: usize = 64 << 10;

/// Writes what `out` holds, then empties it.
async fn write_chunk(
    write: &mut (impl AsyncWriteExt + Unpin),
    out: &mut Vec<u8>,
) -> io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    write.write_all(out).await?;
    out.clear();
    write.flush().await
}

async fn follow(shim: &Shim, after: u64, write: &mut (impl AsyncWriteExt + Unpin)) {
    // Lines pushed between subscribing and reading the buffer arrive twice;
    // `sent` drops the second copy.
    let mut rx = shim.events.subscribe();
    let _attached = Attached::new(shim, after);
    let mut sent = after;
    let delivered = |seq: u64| {
        shim.delivered.send_if_modified(|through| {
            let ahead = seq > *through;
            if ahead {
                *through = seq;
            }
            ahead
        });
    };
    loop {
        // Catch up from the buffer (first, and after falling behind).
        let (backlog, gap, end) = {
            let buffer = lock(&shim.buffer);
            let first = buffer.lines.front().map_or(buffer.last_seq + 1, |l| l.seq);
            let gap = (first > sent + 1).then(|| first - 1);
            let backlog: Vec<OutputLine> = buffer
                .lines
                .iter()
                .filter(|line| line.seq > sent)
                .cloned()
                .collect();
            (backlog, gap, buffer.end)
        };
        if let Some(through) = gap {
            if send(write, &Reply::Event(OutputEvent::Gap { through }))
                .await
                .is_err()
            {
                return;
            }
            sent = through;
        }
        let mut out = Vec::new();
        for line in backlog {
            sent = line.seq;
            if encode(&mut out, &Reply::Event(OutputEvent::Line(line))).is_err() {
                return;
            }
            if out.len() >= FOLLOW_CHUNK {
                if write_chunk(write, &mut out).await.is_err() {
                    return;
                }
                delivered(sent);
            }
        }
        if write_chunk(write, &mut out).await.is_err() {
            return;
        }
        delivered(sent);
        if let Some(exit) = end {
            let _ = send(write, &Reply::Event(OutputEvent::End(exit))).await;
            return;
        }
        // A line, and those already waiting behind it, in one write.
        let mut lagged = false;
        while !lagged {
            let mut received = rx.recv().await;
            loop {
                match received {
                    Ok(OutputEvent::Line(line)) if line.seq > sent => {
                        sent = line.seq;
                        if encode(&mut out, &Reply::Event(OutputEvent::Line(line))).is_err() {
                            return;
                        }
                    }
                    Ok(OutputEvent::Line(_) | OutputEvent::Gap { .. }) => {}
                    Ok(OutputEvent::End(exit)) => {
                        if encode(&mut out, &Reply::Event(OutputEvent::End(exit))).is_ok() {
                            let _ = write_chunk(write, &mut out).await;
                        }
                        return;
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        lagged = true;
                        break;
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        let _ = write_chunk(write, &mut out).await;
                        return;
                    }
                }
                if out.len() >= FOLLOW_CHUNK {
                    break;
                }
                received = match rx.try_recv() {
                    Ok(event) => Ok(event),
                    Err(broadcast::error::TryRecvError::Empty) => break,
                    Err(broadcast::error::TryRecvError::Lagged(n)) => {
                        Err(broadcast::error::RecvError::Lagged(n))
                    }
                    Err(broadcast::error::TryRecvError::Closed) => {
                        Err(broadcast::error::RecvError::Closed)
                    }
                };
            }
            if write_chunk(write, &mut out).await.is_err() {
                return;
            }
            delivered(sent);
        }
    }
}

async fn stdin(
    shim: &Shim,
    input: &[u8],
    quiet: Duration,
    timeout: Duration,
) -> Result<Reply, Reply> {
    let mut guard = shim.stdin.lock().await;
    let Some(sender) = guard.as_mut() else {
        return Err(Reply::error(
            ErrorKind::NoStdin,
            "the replica was not started with stdin",
        ));
    };
    if shim.exit.borrow().is_some() {
        return Err(Reply::error(
            ErrorKind::NotRunning,
            "the replica has exited",
        ));
    }
    let mut rx = shim.events.subscribe();
    let deadline = tokio::time::Instant::now() + timeout;
    match tokio::time::timeout_at(deadline, sender.write_all(input)).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => {
            return Err(Reply::error(
                ErrorKind::Failed,
                format!("cannot write to the replica's stdin: {err}"),
            ))
        }
        Err(_) => {
            return Err(Reply::error(
                ErrorKind::Failed,
                "the replica did not read its stdin in time",
            ))
        }
    }
    let mut output = String::new();
    let mut got_any = false;
    loop {
        let now = tokio::time::Instant::now();
        if now >= deadline {
            break;
        }
        let until = if got_any {
            (now + quiet).min(deadline)
        } else {
            deadline
        };
        match tokio::time::timeout_at(until, rx.recv()).await {
            Ok(Ok(OutputEvent::Line(line))) if line.stream == OutputStream::Stdout => {
                output.push_str(&line.text);
                output.push('\n');
                got_any = true;
            }
            Ok(Ok(OutputEvent::End(_))) | Ok(Err(broadcast::error::RecvError::Closed)) => break,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    Ok(Reply::Output(output))
}

async fn delete(shim: &Shim) -> Result<(), Reply> {
    shim.stop(Duration::ZERO).await?;
    // Blocking, but the shim has nothing else to do any more.
    let deleted = match lock(&shim.sandbox).take() {
        Some(sandbox) => sandbox.delete().map_err(|err| error_chain(&err)),
        // An earlier delete got this far and failed after.
        None => Err("deleted before".to_owned()),
    };
    if let Err(first) = deleted {
        // What is left (processes still dying in a busy cgroup, say) goes
        // the way of a sandbox without its creator: kill what is in the
        // cgroup, wait for it, remove the rest. A few tries.
        tracing::warn!(error = %first, "delete left something; removing what is left");
        let sandboxes = Sandboxes::new(&shim.config.sandboxes_dir, &shim.config.cgroup_parent)
            .map_err(|err| Reply::error(ErrorKind::Failed, error_chain(&err)))?;
        let mut attempt = 0;
        loop {
            match sandboxes.remove(&shim.config.spec.id) {
                Ok(()) => break,
                Err(err) if attempt >= 4 => {
                    return Err(Reply::error(ErrorKind::Failed, error_chain(&err)));
                }
                Err(_) => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
    let _ = std::fs::remove_file(&shim.config.socket);
    std::fs::remove_dir_all(&shim.dir).map_err(|err| {
        Reply::error(
            ErrorKind::Failed,
            format!("cannot remove {}: {err}", shim.dir.display()),
        )
    })
}
