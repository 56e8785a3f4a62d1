//! SMTP replies (RFC 5321 §4.2) with enhanced status codes (RFC 3463).

use std::fmt::Write;

/// A reply: a code, an enhanced status (omitted for 220/221-style greetings when empty) and
/// one or more text lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub status: &'static str,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn new(code: u16, status: &'static str, text: impl Into<String>) -> Self {
        Self {
            code,
            status,
            lines: vec![text.into()],
        }
    }

    pub fn multiline(code: u16, lines: Vec<String>) -> Self {
        Self {
            code,
            status: "",
            lines,
        }
    }

    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    /// Wire form: `code-text` for every line but the last, `code text` for the last.
    /// Text is stripped of CR and LF so a reply can never inject a line.
    pub fn to_wire(&self) -> String {
        let mut out = String::new();
        let n = self.lines.len().max(1);
        for i in 0..n {
            let text = self.lines.get(i).map(String::as_str).unwrap_or("");
            let text: String = text.chars().filter(|c| *c != '\r' && *c != '\n').collect();
            let sep = if i + 1 == n { ' ' } else { '-' };
            let _ = if self.status.is_empty() {
                write!(out, "{}{}{}\r\n", self.code, sep, text)
            } else {
                write!(out, "{}{}{} {}\r\n", self.code, sep, self.status, text)
            };
        }
        out
    }

    // Common replies, named for what they mean.
    pub fn ok() -> Self {
        Self::new(250, "2.0.0", "OK")
    }
    pub fn syntax(text: &str) -> Self {
        Self::new(501, "5.5.4", text)
    }
    pub fn bad_sequence(text: &str) -> Self {
        Self::new(503, "5.5.1", text)
    }
    pub fn unrecognized() -> Self {
        Self::new(500, "5.5.2", "Error: command not recognized")
    }
    pub fn line_too_long() -> Self {
        Self::new(500, "5.5.2", "Error: line too long")
    }
    pub fn temp_failure() -> Self {
        Self::new(451, "4.3.0", "Temporary failure, please try again later")
    }
    /// The server cannot hold the message now (RFC 3463 4.3.1): the in-flight memory
    /// budget is spent. Temporary, so the sender retries later.
    pub fn insufficient_resources() -> Self {
        Self::new(452, "4.3.1", "Insufficient system resources")
    }
    pub fn too_many_errors() -> Self {
        Self::new(421, "4.7.0", "Too many errors, closing connection")
    }
    pub fn timeout() -> Self {
        Self::new(421, "4.4.2", "Timeout exceeded, closing connection")
    }
    pub fn shutting_down() -> Self {
        Self::new(421, "4.3.2", "Service shutting down, closing connection")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_forms() {
        assert_eq!(Reply::ok().to_wire(), "250 2.0.0 OK\r\n");
        assert_eq!(
            Reply::multiline(250, vec!["a".into(), "b".into()]).to_wire(),
            "250-a\r\n250 b\r\n"
        );
        assert_eq!(
            Reply::new(550, "5.1.1", "x\r\n250 injected").to_wire(),
            "550 5.1.1 x250 injected\r\n"
        );
    }
}
