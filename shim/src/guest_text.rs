//! Text that came from the guest (agent error messages, versions, ids in
//! events) or from another untrusted source, made safe to put in a log line
//! or an error: control characters and quotes escaped, and cut to a bound,
//! so a compromised guest cannot forge log lines or flood them.

/// The most of a guest message kept in an error or a log line.
pub const MAX_GUEST_TEXT: usize = 1024;

/// `text` with control characters escaped (`\n`, `\u{1b}`, ...), cut after
/// `max` characters with `...` marking the cut.
pub fn sanitize(text: &str, max: usize) -> String {
    let mut out = String::new();
    for (count, c) in text.chars().enumerate() {
        if count == max {
            out.push_str("...");
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// `text` sanitized to the default bound.
pub fn guest(text: &str) -> String {
    sanitize(text, MAX_GUEST_TEXT)
}

/// `text` in double quotes, with quotes and backslashes escaped too.
pub fn quoted(text: &str, max: usize) -> String {
    let cut = sanitize(&text.replace('\\', "\\\\").replace('"', "\\\""), max);
    format!("\"{cut}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_cannot_forge_log_lines() {
        let forged = "oops\n2026-12-03 INFO all good\r\u{1b}[2J";
        let clean = guest(forged);
        assert!(!clean.chars().any(char::is_control), "{clean}");
        assert!(
            clean.contains("\\n2026") && clean.contains("\\u{1b}"),
            "{clean}"
        );
    }

    #[test]
    fn long_text_is_cut_and_marked() {
        let long = "x".repeat(100_000);
        let clean = guest(&long);
        assert_eq!(clean.len(), MAX_GUEST_TEXT + 3);
        assert!(clean.ends_with("..."));
        assert_eq!(sanitize("short", 10), "short");
        assert_eq!(quoted("a\"b", 10), "\"a\\\"b\"");
    }
}
