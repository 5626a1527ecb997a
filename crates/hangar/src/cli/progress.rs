//! What `hangar deploy` shows while it waits: on a terminal, a spinner line
//! under the build's log saying which step it is in and for how long; when
//! stdout is not a terminal (CI, a pipe, a file), plain lines only, so logs
//! of a deploy stay readable and free of escape codes.

use std::io::{IsTerminal, Write};
use std::time::Instant;

const FRAMES: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

/// The progress display of one command.
#[derive(Debug)]
pub struct Progress {
    tty: bool,
    status: Option<String>,
    since: Instant,
    frame: usize,
}

impl Progress {
    /// A display on stdout, animated when stdout is a terminal.
    pub fn new() -> Self {
        Self {
            tty: std::io::stdout().is_terminal(),
            status: None,
            since: Instant::now(),
            frame: 0,
        }
    }

    /// Whether the spinner is animated (callers tick it then).
    pub fn animated(&self) -> bool {
        self.tty
    }

    /// A new step: the spinner's text, or one plain line.
    pub fn step(&mut self, text: &str) {
        self.since = Instant::now();
        if self.tty {
            self.status = Some(text.to_owned());
            self.redraw();
        } else {
            println!("{text}");
        }
    }

    /// A line of output above the spinner.
    pub fn line(&mut self, text: &str) {
        let mut out = std::io::stdout().lock();
        if self.tty {
            let _ = write!(out, "\r\x1b[2K");
        }
        let _ = writeln!(out, "{text}");
        drop(out);
        if self.tty {
            self.redraw();
        }
    }

    /// Advances the spinner.
    pub fn tick(&mut self) {
        if self.tty {
            self.frame = (self.frame + 1) % FRAMES.len();
            self.redraw();
        }
    }

    /// Removes the spinner line.
    pub fn clear(&mut self) {
        if self.tty && self.status.take().is_some() {
            let mut out = std::io::stdout().lock();
            let _ = write!(out, "\r\x1b[2K");
            let _ = out.flush();
        }
    }

    fn redraw(&self) {
        if let Some(status) = &self.status {
            let mut out = std::io::stdout().lock();
            let _ = write!(
                out,
                "\r\x1b[2K{} {status} ({}s)",
                FRAMES[self.frame],
                self.since.elapsed().as_secs()
            );
            let _ = out.flush();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.clear();
    }
}
