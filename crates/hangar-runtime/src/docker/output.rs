//! The engine's output frames (chunks of stdout or stderr, multiplexed on
//! one stream; log frames also carry a timestamp and are cut at 16 KiB)
//! turned into what Hangar keeps: numbered lines for [`Driver::follow`],
//! bounded byte buffers for [`Driver::exec`].
//!
//! Not here: asking the engine for the frames (the [`Driver`] verbs in the
//! parent module); this is plain data handling, tested without an engine.
//!
//! [`Driver`]: crate::driver::Driver
//! [`Driver::follow`]: crate::driver::Driver::follow
//! [`Driver::exec`]: crate::driver::Driver::exec

use std::pin::Pin;

use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use futures_util::{Stream, StreamExt};

use super::parse_time_ms;
use crate::driver::{now_ms, OutputLine, OutputStream, MAX_LINE_BYTES};

/// Turns the engine's log frames into numbered lines: frames are cut at
/// 16 KiB by the engine and carry a timestamp each; lines are joined again,
/// then cut at [`MAX_LINE_BYTES`].
#[derive(Default)]
pub(super) struct LineSplitter {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    seq: u64,
}

impl LineSplitter {
    pub(super) fn push(&mut self, frame: LogOutput, mut emit: impl FnMut(OutputLine)) {
        let (stream, bytes) = match frame {
            LogOutput::StdOut { message } => (OutputStream::Stdout, message),
            LogOutput::StdErr { message } => (OutputStream::Stderr, message),
            LogOutput::Console { message } => (OutputStream::Stdout, message),
            LogOutput::StdIn { .. } => return,
        };
        // "<RFC 3339 nano> <text>"
        let (at_ms, text) = match bytes.iter().position(|&b| b == b' ') {
            Some(space) => match std::str::from_utf8(&bytes[..space])
                .ok()
                .and_then(parse_time_ms)
            {
                Some(at) => (at, &bytes[space + 1..]),
                None => (now_ms(), &bytes[..]),
            },
            None => (now_ms(), &bytes[..]),
        };
        let buffer = match stream {
            OutputStream::Stdout => &mut self.stdout,
            OutputStream::Stderr => &mut self.stderr,
        };
        buffer.extend_from_slice(text);
        loop {
            let cut = match buffer.iter().position(|&b| b == b'\n') {
                Some(newline) if newline <= MAX_LINE_BYTES => Some((newline, newline + 1)),
                _ if buffer.len() > MAX_LINE_BYTES => Some((MAX_LINE_BYTES, MAX_LINE_BYTES)),
                _ => None,
            };
            let Some((end, skip)) = cut else {
                break;
            };
            let mut line: Vec<u8> = buffer.drain(..skip).collect();
            line.truncate(end);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            self.seq += 1;
            emit(OutputLine {
                seq: self.seq,
                at_ms,
                stream,
                text: String::from_utf8_lossy(&line).into_owned(),
            });
        }
    }

    /// What is left without a newline at the end of the output.
    pub(super) fn finish(&mut self, mut emit: impl FnMut(OutputLine)) {
        for stream in [OutputStream::Stdout, OutputStream::Stderr] {
            let buffer = match stream {
                OutputStream::Stdout => &mut self.stdout,
                OutputStream::Stderr => &mut self.stderr,
            };
            if buffer.is_empty() {
                continue;
            }
            let line = std::mem::take(buffer);
            self.seq += 1;
            emit(OutputLine {
                seq: self.seq,
                at_ms: now_ms(),
                stream,
                text: String::from_utf8_lossy(&line).into_owned(),
            });
        }
    }
}

pub(super) type OutputFrames = Pin<Box<dyn Stream<Item = Result<LogOutput, DockerError>> + Send>>;

/// Reads an exec's or attach's frames into stdout and stderr, each up to
/// `limit` bytes.
pub(super) async fn collect(
    output: &mut OutputFrames,
    stdout: &mut Vec<u8>,
    stderr: &mut Vec<u8>,
    limit: usize,
) -> bool {
    let mut truncated = false;
    while let Some(Ok(frame)) = output.next().await {
        let (buffer, bytes) = match frame {
            LogOutput::StdOut { message } | LogOutput::Console { message } => {
                (&mut *stdout, message)
            }
            LogOutput::StdErr { message } => (&mut *stderr, message),
            LogOutput::StdIn { .. } => continue,
        };
        let room = limit.saturating_sub(buffer.len());
        if bytes.len() > room {
            truncated = true;
        }
        buffer.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }
    truncated
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(text: &str) -> LogOutput {
        LogOutput::StdOut {
            message: bytes::Bytes::from(format!("2026-12-04T11:48:26.259675256Z {text}")),
        }
    }

    #[test]
    fn frames_become_numbered_lines_with_the_engine_time() {
        let mut splitter = LineSplitter::default();
        let mut lines = Vec::new();
        splitter.push(frame("one\n"), |l| lines.push(l));
        splitter.push(frame("two, cut "), |l| lines.push(l));
        splitter.push(frame("in two\n"), |l| lines.push(l));
        splitter.push(
            LogOutput::StdErr {
                message: bytes::Bytes::from_static(b"2026-12-04T11:48:27Z oops\r\n"),
            },
            |l| lines.push(l),
        );
        splitter.push(frame("no newline"), |l| lines.push(l));
        splitter.finish(|l| lines.push(l));
        let got: Vec<_> = lines
            .iter()
            .map(|l| (l.seq, l.stream, l.text.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (1, OutputStream::Stdout, "one"),
                (2, OutputStream::Stdout, "two, cut in two"),
                (3, OutputStream::Stderr, "oops"),
                (4, OutputStream::Stdout, "no newline"),
            ]
        );
        assert_eq!(lines[0].at_ms, 1_796_384_906_259);
    }

    #[test]
    fn long_lines_are_cut() {
        let mut splitter = LineSplitter::default();
        let mut lines = Vec::new();
        splitter.push(
            frame(&format!("{}\n", "x".repeat(MAX_LINE_BYTES + 5))),
            |l| lines.push(l),
        );
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].text.len(), MAX_LINE_BYTES);
        assert_eq!(lines[1].text, "xxxxx");
    }
}
