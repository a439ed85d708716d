//! containerd's runtime options for a task: the one Hull reads is
//! `ConfigPath` (CRI's `runtimeoptions.v1.Options`, set with
//! `[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.hull.options]`).
//! Options of any other kind (runc's `BinaryName`, say) would be ignored by
//! Hull, so they are refused rather than dropped in silence.

use protobuf::CodedInputStream;

/// The message Hull takes its options in.
const OPTIONS_TYPE: &str = "runtimeoptions.v1.Options";

/// `config_path` (field 2) of a `runtimeoptions.v1.Options`, if set. An
/// error names what is wrong: options of another type, or bytes that are
/// not that message.
pub fn config_path(type_url: &str, value: &[u8]) -> Result<Option<String>, String> {
    if !type_url.ends_with(OPTIONS_TYPE) {
        return Err(format!(
            "runtime options of type {type_url:?} are not Hull's: Hull takes {OPTIONS_TYPE} \
             (its ConfigPath) and nothing else"
        ));
    }
    let malformed =
        |err: protobuf::Error| format!("runtime options are not a {OPTIONS_TYPE}: {err}");
    let mut input = CodedInputStream::from_bytes(value);
    let mut found = None;
    while let Some(tag) = input.read_raw_tag_or_eof().map_err(malformed)? {
        let (field, wire_type) = (tag >> 3, tag & 7);
        let wire_type = protobuf::rt::WireType::new(wire_type).ok_or_else(|| {
            format!("runtime options are not a {OPTIONS_TYPE}: wire type {wire_type}")
        })?;
        match (field, wire_type) {
            (2, protobuf::rt::WireType::LengthDelimited) => {
                found = Some(input.read_string().map_err(malformed)?)
            }
            _ => input.skip_field(wire_type).map_err(malformed)?,
        }
    }
    Ok(found.filter(|p| !p.is_empty()))
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
            config_path("type.googleapis.com/runtimeoptions.v1.Options", &value),
            Ok(Some("/etc/hull/pod.toml".into()))
        );
        assert_eq!(config_path("runtimeoptions.v1.Options", &[]), Ok(None));
    }

    #[test]
    fn other_options_are_refused_by_name() {
        let value = encode(&[(2, "/x")]);
        let err = config_path("containerd.runc.v1.Options", &value).unwrap_err();
        assert!(err.contains("containerd.runc.v1.Options"), "{err}");
    }

    #[test]
    fn garbage_is_refused() {
        for value in [&[0xff, 0xff, 0xff][..], &[0x12, 0x09, b'/'][..]] {
            let err = config_path("runtimeoptions.v1.Options", value).unwrap_err();
            assert!(err.contains("not a runtimeoptions.v1.Options"), "{err}");
        }
    }
}
