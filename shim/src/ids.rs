//! containerd's identifier grammar, which every id that becomes part of a
//! host path (container, exec and sandbox ids, the last from a CRI
//! annotation anyone who can run `ctr run --annotation` controls) must
//! follow: letters and digits, in runs separated by single `.`, `_` or `-`,
//! at most 76 characters (containerd's `identifiers.Validate`). So no `/`,
//! no `..`, nothing empty.

/// containerd's limit on an identifier's length.
pub const MAX_ID_LENGTH: usize = 76;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {shown}: {reason}")]
pub struct InvalidId {
    what: &'static str,
    /// The id as given, escaped and shortened for the message.
    shown: String,
    reason: &'static str,
}

/// A hash that stays the same across builds and hosts (FNV-1a), for names
/// derived from other names; not for anything an attacker picks to collide.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Checks `id` against containerd's grammar; `what` names it in the error
/// ("container id", "sandbox id (annotation io.kubernetes.cri.sandbox-id)").
pub fn validate(what: &'static str, id: &str) -> Result<(), InvalidId> {
    let invalid = |reason| InvalidId {
        what,
        shown: crate::guest_text::quoted(id, MAX_ID_LENGTH + 8),
        reason,
    };
    if id.is_empty() {
        return Err(invalid("it is empty"));
    }
    if id.len() > MAX_ID_LENGTH {
        return Err(invalid("it is longer than 76 characters"));
    }
    let mut previous_separator = true;
    for c in id.chars() {
        match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' => previous_separator = false,
            '.' | '_' | '-' if !previous_separator => previous_separator = true,
            '.' | '_' | '-' => {
                return Err(invalid(
                    "'.', '_' and '-' may only separate letters and digits",
                ))
            }
            _ => {
                return Err(invalid(
                    "only letters, digits, '.', '_' and '-' are allowed",
                ))
            }
        }
    }
    if previous_separator {
        return Err(invalid("it must end with a letter or digit"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_ids_pass() {
        for id in [
            "a",
            "demo-hull",
            "c1.exec_2",
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            &"a".repeat(76),
        ] {
            assert_eq!(validate("container id", id), Ok(()), "{id}");
        }
    }

    #[test]
    fn paths_and_oddities_are_refused_naming_the_id() {
        for id in [
            "",
            "../x",
            "..",
            "/",
            "a/b",
            ".hidden",
            "x.",
            "a..b",
            "a b",
            "a\nb",
            "ü",
            &"a".repeat(77),
        ] {
            let err = validate("sandbox id", id).unwrap_err().to_string();
            assert!(err.starts_with("invalid sandbox id "), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
        let err = validate("exec id", "../../etc").unwrap_err().to_string();
        assert!(err.contains("\"../../etc\""), "{err}");
    }
}
