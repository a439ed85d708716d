//! The stdio stream header.
//!
//! Every stdin, stdout or stderr of a container process travels on its own
//! connection to the agent's stdio port. The connection starts with one line
//! naming the stream:
//!
//! ```text
//! HULL-STDIO/1 <stdin|stdout|stderr> <container-id> <exec-id or ->\n
//! ```
//!
//! The agent answers `OK\n`, or `ERR <reason>\n` and closes. After `OK` the
//! connection carries the stream's raw bytes; the end of a stream is a
//! half-close (shutdown of the writing side).

use std::fmt;

const MAGIC: &str = "HULL-STDIO/1";
/// Longest header line accepted, newline included.
pub const MAX_HEADER_LEN: usize = 512;
/// Stands for "no exec id": the container's init process.
const NO_EXEC: &str = "-";

/// Which of a process's streams a connection carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    Stdin,
    Stdout,
    Stderr,
}

impl StreamKind {
    fn as_str(self) -> &'static str {
        match self {
            StreamKind::Stdin => "stdin",
            StreamKind::Stdout => "stdout",
            StreamKind::Stderr => "stderr",
        }
    }
}

impl fmt::Display for StreamKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The header line of a stdio connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHeader {
    pub kind: StreamKind,
    pub container_id: String,
    /// Empty for the container's init process.
    pub exec_id: String,
}

/// Why a header line was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("Stdio header is not one line of at most {MAX_HEADER_LEN} bytes")]
    TooLong,
    #[error("Stdio header does not start with {MAGIC}")]
    BadMagic,
    #[error("Stdio header names an unknown stream")]
    BadStream,
    #[error("Stdio header needs a stream, a container id and an exec id")]
    MissingField,
    #[error("Stdio header has an empty id or one with characters outside [A-Za-z0-9_.-]")]
    BadId,
}

impl StreamHeader {
    /// The header line, newline included.
    pub fn encode(&self) -> String {
        let exec = if self.exec_id.is_empty() {
            NO_EXEC
        } else {
            &self.exec_id
        };
        format!("{MAGIC} {} {} {exec}\n", self.kind, self.container_id)
    }

    /// Parses one header line (with or without its newline).
    pub fn parse(line: &str) -> Result<Self, HeaderError> {
        if line.len() > MAX_HEADER_LEN {
            return Err(HeaderError::TooLong);
        }
        let line = line.strip_suffix('\n').unwrap_or(line);
        if line.contains('\n') {
            return Err(HeaderError::TooLong);
        }
        let mut fields = line.split(' ');
        if fields.next() != Some(MAGIC) {
            return Err(HeaderError::BadMagic);
        }
        let kind = match fields.next().ok_or(HeaderError::MissingField)? {
            "stdin" => StreamKind::Stdin,
            "stdout" => StreamKind::Stdout,
            "stderr" => StreamKind::Stderr,
            _ => return Err(HeaderError::BadStream),
        };
        let container_id = fields.next().ok_or(HeaderError::MissingField)?;
        let exec_id = fields.next().ok_or(HeaderError::MissingField)?;
        if fields.next().is_some() || !valid_id(container_id) {
            return Err(HeaderError::BadId);
        }
        let exec_id = match exec_id {
            NO_EXEC => "",
            id if valid_id(id) => id,
            _ => return Err(HeaderError::BadId),
        };
        Ok(StreamHeader {
            kind,
            container_id: container_id.to_owned(),
            exec_id: exec_id.to_owned(),
        })
    }
}

/// Container and exec ids as containerd allows them, which also keeps them
/// safe as path components.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// The agent's answer line once the stream is attached.
pub const ACCEPTED: &str = "OK\n";

/// The agent's answer line when it refuses a stream.
pub fn refusal(reason: &str) -> String {
    format!("ERR {}\n", reason.replace('\n', " "))
}

/// Reads the agent's answer line: `Ok(())` for `OK`, `Err(reason)` otherwise.
pub fn parse_answer(line: &str) -> Result<(), String> {
    let line = line.trim_end_matches('\n');
    if line == "OK" {
        return Ok(());
    }
    Err(line
        .strip_prefix("ERR ")
        .unwrap_or("agent closed the stream without answering")
        .to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        for (kind, exec) in [(StreamKind::Stdin, ""), (StreamKind::Stderr, "exec-1")] {
            let h = StreamHeader {
                kind,
                container_id: "c1".into(),
                exec_id: exec.into(),
            };
            assert_eq!(StreamHeader::parse(&h.encode()), Ok(h));
        }
    }

    #[test]
    fn header_encoding_is_stable() {
        let h = StreamHeader {
            kind: StreamKind::Stdout,
            container_id: "abc".into(),
            exec_id: String::new(),
        };
        assert_eq!(h.encode(), "HULL-STDIO/1 stdout abc -\n");
    }

    #[test]
    fn bad_headers_are_refused() {
        let cases = [
            ("HULL-STDIO/2 stdout c -", HeaderError::BadMagic),
            ("HULL-STDIO/1 stdio c -", HeaderError::BadStream),
            ("HULL-STDIO/1 stdout c", HeaderError::MissingField),
            ("HULL-STDIO/1 stdout ../x -", HeaderError::BadId),
            ("HULL-STDIO/1 stdout c e extra", HeaderError::BadId),
            ("HULL-STDIO/1 stdout c a/b", HeaderError::BadId),
            ("HULL-STDIO/1 stdout c -\nmore", HeaderError::TooLong),
        ];
        for (line, want) in cases {
            assert_eq!(StreamHeader::parse(line), Err(want), "{line}");
        }
        let long = format!("HULL-STDIO/1 stdout {} -", "a".repeat(600));
        assert_eq!(StreamHeader::parse(&long), Err(HeaderError::TooLong));
    }

    #[test]
    fn answers_parse() {
        assert_eq!(parse_answer(ACCEPTED), Ok(()));
        assert_eq!(
            parse_answer(&refusal("no such\nprocess")),
            Err("no such process".into())
        );
        assert!(parse_answer("").is_err());
    }
}
