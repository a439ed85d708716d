//! containerd's runtime options for a task: the one Hull reads is
//! `ConfigPath` (CRI's `runtimeoptions.v1.Options`, set with
//! `[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.hull.options]`).

use protobuf::CodedInputStream;

/// `config_path` (field 2) of a `runtimeoptions.v1.Options`, if `type_url`
/// names that message.
pub fn config_path(type_url: &str, value: &[u8]) -> Option<String> {
    if !type_url.ends_with("runtimeoptions.v1.Options") {
        return None;
    }
    let mut input = CodedInputStream::from_bytes(value);
    let mut found = None;
    while let Ok(Some(tag)) = input.read_raw_tag_or_eof() {
        let (field, wire_type) = (tag >> 3, tag & 7);
        match (field, wire_type) {
            (2, 2) => found = input.read_string().ok(),
            _ => {
                let wire_type = protobuf::rt::WireType::new(wire_type)?;
                input.skip_field(wire_type).ok()?;
            }
        }
    }
    found.filter(|p| !p.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(fields: &[(u32, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (field, text) in fields {
            out.push(((field << 3) | 2) as u8);
            out.push(text.len() as u8);
            out.extend_from_slice(text.as_bytes());
        }
        out
    }

    #[test]
    fn reads_config_path() {
        let value = encode(&[(1, "x"), (2, "/etc/hull/pod.toml"), (3, "body")]);
        assert_eq!(
            config_path("type.googleapis.com/runtimeoptions.v1.Options", &value).as_deref(),
            Some("/etc/hull/pod.toml")
        );
    }

    #[test]
    fn other_options_and_garbage_give_nothing() {
        let value = encode(&[(2, "/x")]);
        assert_eq!(config_path("containerd.runc.v1.Options", &value), None);
        assert_eq!(
            config_path("runtimeoptions.v1.Options", &[0xff, 0xff, 0xff]),
            None
        );
        assert_eq!(config_path("runtimeoptions.v1.Options", &[]), None);
    }
}
