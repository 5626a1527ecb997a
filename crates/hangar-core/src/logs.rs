//! Log lines as users read them: a level and a message, parsed from whatever a
//! replica prints, and the records an instance's log is stored as
//! ([`NewLogLine`] in, [`InstanceLogLine`] out, numbered by the store).
//!
//! Agents log in many styles; Hangar recognises the common ones so that
//! `?level=warn` filters work without asking anyone to change their logging:
//!
//! | line | level | message |
//! |---|---|---|
//! | `{"level":"warn","msg":"slow"}` (also `severity`, `lvl`; `message`, `msg`) | WARN | `slow` |
//! | `ERROR something broke` / `ERROR: …` / `error - …` | ERROR | `something broke` |
//! | `[DEBUG] cache miss` / `[warning] …` | DEBUG / WARN | the rest |
//! | `2024-01-15 10:30:00,123 - app - INFO - started` (Python `logging`) | INFO | `started` |
//! | `INFO:root:started` (Python's default format) | INFO | `started` |
//! | `I0115 10:30:00.123 123 main.go:10] started` (glog) | INFO | `started` |
//! | anything else | INFO on stdout, WARN on stderr | the line |
//!
//! stderr defaults to WARN rather than ERROR because many programs (Python's
//! `logging` among them) write all their logs there.

use crate::model::Timestamp;

crate::string_enum! {
    /// Severity of a log line, lowest first.
    pub enum LogLevel {
        /// Diagnostic detail.
        Debug = "DEBUG",
        /// Normal operation.
        Info = "INFO",
        /// Something unexpected that did not fail.
        Warn = "WARN",
        /// A failure.
        Error = "ERROR",
    }
}

impl LogLevel {
    /// Reads a level name in any common spelling (`warning`, `WARN`, `err`,
    /// `fatal`, `critical`, `trace`, …).
    #[must_use]
    pub fn from_name(name: &str) -> Option<LogLevel> {
        Some(match name.trim().to_ascii_lowercase().as_str() {
            "trace" | "debug" | "dbg" | "verbose" => LogLevel::Debug,
            "info" | "information" | "notice" | "log" => LogLevel::Info,
            "warn" | "warning" => LogLevel::Warn,
            "error" | "err" | "fatal" | "critical" | "crit" | "panic" | "alert" | "emergency"
            | "emerg" => LogLevel::Error,
            _ => return None,
        })
    }

    /// Its rank, for "this level and above" filters.
    #[must_use]
    pub fn rank(self) -> u8 {
        match self {
            LogLevel::Debug => 0,
            LogLevel::Info => 1,
            LogLevel::Warn => 2,
            LogLevel::Error => 3,
        }
    }
}

crate::string_enum! {
    /// Which output a line came from.
    pub enum Stream {
        /// Standard output.
        Stdout = "stdout",
        /// Standard error.
        Stderr = "stderr",
    }
}

/// One line of an instance's log as stored: what a replica printed, parsed, with
/// its position in the instance's log.
///
/// `seq` orders the lines of all of an instance's replicas: it is handed out by the
/// store when the line is stored, so it is gapless and strictly increasing per
/// instance, and a reader that remembers the last `seq` it saw can resume exactly
/// there. `timestamp` is when the replica printed it, which replicas' clocks and
/// batching can leave slightly out of `seq` order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceLogLine {
    /// Position in the instance's log, from 1.
    pub seq: i64,
    /// When the replica printed it.
    pub timestamp: Timestamp,
    /// The replica that printed it.
    pub replica_id: String,
    /// Which output it came from.
    pub stream: Stream,
    /// Its level (see [`parse_line`]).
    pub level: LogLevel,
    /// The message without its level marker.
    pub message: String,
}

/// A stored line as it goes out live to an instance's followers: shared by
/// all of them, with room for its wire form, which the first follower to
/// send it renders and the rest reuse (each line is rendered once, however
/// many follow).
#[derive(Debug)]
pub struct LiveLine {
    /// The line.
    pub line: InstanceLogLine,
    /// Its rendering for followers, once one has made it.
    pub rendered: std::sync::OnceLock<String>,
}

impl LiveLine {
    /// A line not rendered yet.
    #[must_use]
    pub fn new(line: InstanceLogLine) -> Self {
        Self {
            line,
            rendered: std::sync::OnceLock::new(),
        }
    }
}

/// A line of a replica's output to store; the store gives it its `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewLogLine {
    /// When the replica printed it.
    pub timestamp: Timestamp,
    /// Which output it came from.
    pub stream: Stream,
    /// Its level (see [`parse_line`]).
    pub level: LogLevel,
    /// The message without its level marker.
    pub message: String,
}

/// A line's level and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// The level found, or the stream's default.
    pub level: LogLevel,
    /// The message without its level marker.
    pub message: String,
}

/// Parses one line (without its newline).
#[must_use]
pub fn parse_line(line: &str, stream: Stream) -> Parsed {
    let default = match stream {
        Stream::Stdout => LogLevel::Info,
        Stream::Stderr => LogLevel::Warn,
    };
    let trimmed = line.trim_end_matches(['\r', '\n']);
    parse_json(trimmed)
        .or_else(|| parse_bracketed(trimmed))
        .or_else(|| parse_python(trimmed))
        .or_else(|| parse_glog(trimmed))
        .or_else(|| parse_leading_word(trimmed))
        .unwrap_or_else(|| Parsed {
            level: default,
            message: trimmed.to_owned(),
        })
}

fn parse_json(line: &str) -> Option<Parsed> {
    if !line.starts_with('{') {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let obj = v.as_object()?;
    let level = ["level", "severity", "lvl", "levelname", "log.level"]
        .iter()
        .find_map(|k| {
            obj.get(*k)
                .and_then(|l| l.as_str())
                .and_then(LogLevel::from_name)
        })?;
    let message = ["message", "msg", "event", "text"]
        .iter()
        .find_map(|k| obj.get(*k).and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or_else(|| line.to_owned());
    Some(Parsed { level, message })
}

fn parse_bracketed(line: &str) -> Option<Parsed> {
    let rest = line.strip_prefix('[')?;
    let (name, after) = rest.split_once(']')?;
    let level = LogLevel::from_name(name)?;
    Some(Parsed {
        level,
        message: after.trim_start_matches([' ', ':', '-']).to_owned(),
    })
}

/// `… - LEVEL - message` (Python's `%(asctime)s - %(name)s - %(levelname)s -
/// %(message)s`) and `LEVEL:logger:message` (Python's default).
fn parse_python(line: &str) -> Option<Parsed> {
    if let Some((head, message)) = line
        .split_once(':')
        .and_then(|(level, rest)| rest.split_once(':').map(|(_, m)| (level, m)))
    {
        if head.chars().all(|c| c.is_ascii_uppercase()) {
            if let Some(level) = LogLevel::from_name(head) {
                return Some(Parsed {
                    level,
                    message: message.to_owned(),
                });
            }
        }
    }
    let parts: Vec<&str> = line.splitn(4, " - ").collect();
    for (i, part) in parts.iter().enumerate().take(3) {
        if i + 1 < parts.len() && part.chars().all(|c| c.is_ascii_uppercase()) {
            if let Some(level) = LogLevel::from_name(part) {
                return Some(Parsed {
                    level,
                    message: parts[i + 1..].join(" - "),
                });
            }
        }
    }
    None
}

/// glog/klog: `I0115 10:30:00.123456 1234 file.go:10] message`.
fn parse_glog(line: &str) -> Option<Parsed> {
    let mut chars = line.chars();
    let level = match chars.next()? {
        'I' => LogLevel::Info,
        'W' => LogLevel::Warn,
        'E' | 'F' => LogLevel::Error,
        _ => return None,
    };
    let rest = chars.as_str();
    if rest.len() < 4 || !rest[..4].chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let (_, message) = rest.split_once("] ")?;
    Some(Parsed {
        level,
        message: message.to_owned(),
    })
}

/// `ERROR something`, `ERROR: something`, `warning - something`.
fn parse_leading_word(line: &str) -> Option<Parsed> {
    let end = line.find(|c: char| !c.is_ascii_alphabetic())?;
    let (word, rest) = line.split_at(end);
    let level = LogLevel::from_name(word)?;
    // A bare "Error" inside prose ("Error handling is …") is too weak a signal
    // unless the word is uppercase or followed by a separator.
    let separated = rest.starts_with(':') || rest.starts_with(" -") || rest.starts_with(" |");
    if !(word.chars().all(|c| c.is_ascii_uppercase()) || separated) {
        return None;
    }
    Some(Parsed {
        level,
        message: rest.trim_start_matches([' ', ':', '-', '|']).to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(line: &str) -> (LogLevel, String) {
        let parsed = parse_line(line, Stream::Stdout);
        (parsed.level, parsed.message)
    }

    #[test]
    fn json_logs() {
        assert_eq!(
            p(r#"{"level":"warn","msg":"slow request"}"#),
            (LogLevel::Warn, "slow request".into())
        );
        assert_eq!(
            p(r#"{"severity":"ERROR","message":"boom","x":1}"#),
            (LogLevel::Error, "boom".into())
        );
        assert_eq!(
            p(r#"{"levelname":"DEBUG","event":"cache miss"}"#),
            (LogLevel::Debug, "cache miss".into())
        );
        assert_eq!(
            p(r#"{"msg":"no level"}"#).0,
            LogLevel::Info,
            "no level field: the stream's default"
        );
    }

    #[test]
    fn text_styles() {
        assert_eq!(
            p("INFO Agent started successfully"),
            (LogLevel::Info, "Agent started successfully".into())
        );
        assert_eq!(
            p("ERROR: database down"),
            (LogLevel::Error, "database down".into())
        );
        assert_eq!(
            p("[ERROR] database down"),
            (LogLevel::Error, "database down".into())
        );
        assert_eq!(
            p("[warning] disk at 90%"),
            (LogLevel::Warn, "disk at 90%".into())
        );
        assert_eq!(
            p("2024-01-15 10:30:00,123 - market - INFO - Processing market data..."),
            (LogLevel::Info, "Processing market data...".into())
        );
        assert_eq!(
            p("INFO:root:Generated 5 trading signals"),
            (LogLevel::Info, "Generated 5 trading signals".into())
        );
        assert_eq!(
            p("CRITICAL:app:out of memory"),
            (LogLevel::Error, "out of memory".into())
        );
        assert_eq!(
            p("W0115 10:30:00.123456   42 main.go:10] retrying"),
            (LogLevel::Warn, "retrying".into())
        );
        assert_eq!(
            p("fatal - cannot continue"),
            (LogLevel::Error, "cannot continue".into())
        );
    }

    #[test]
    fn prose_is_not_mistaken_for_a_level() {
        assert_eq!(p("Error handling is described below").0, LogLevel::Info);
        assert_eq!(p("Information about the model: gpt").0, LogLevel::Info);
        assert_eq!(p("I love this product").0, LogLevel::Info);
        assert_eq!(p("").0, LogLevel::Info);
        assert_eq!(
            parse_line("Traceback (most recent call last):", Stream::Stderr).level,
            LogLevel::Warn
        );
        assert_eq!(
            parse_line("plain line\r\n", Stream::Stdout).message,
            "plain line"
        );
    }

    #[test]
    fn levels_rank_and_read_aliases() {
        assert!(LogLevel::Error.rank() > LogLevel::Warn.rank());
        assert_eq!(LogLevel::from_name("Warning"), Some(LogLevel::Warn));
        assert_eq!(LogLevel::from_name("crit"), Some(LogLevel::Error));
        assert_eq!(LogLevel::from_name("loud"), None);
    }

    #[test]
    fn stored_spellings_read_back() {
        for level in LogLevel::ALL {
            assert_eq!(level.as_str().parse::<LogLevel>(), Ok(*level));
        }
        for stream in Stream::ALL {
            assert_eq!(stream.as_str().parse::<Stream>(), Ok(*stream));
        }
        assert_eq!(Stream::Stderr.as_str(), "stderr");
        assert_eq!(
            serde_json::to_string(&Stream::Stdout).expect("serializes"),
            r#""stdout""#,
            "the wire spelling is unchanged"
        );
        assert!("warn".parse::<LogLevel>().is_err(), "stored text is exact");
    }
}
