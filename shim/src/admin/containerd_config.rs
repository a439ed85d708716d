//! Hull's entry in containerd's `config.toml`: finding it (`hull check`) and
//! merging it in (`hull install`) without touching anything else in the file.
//!
//! Plain text in, plain text out; reading and writing the file is the
//! caller's business.

use toml_edit::{DocumentMut, InlineTable, Item, Table, Value};

/// The runtime type containerd resolves to `containerd-shim-hull-v2`.
pub const RUNTIME_TYPE: &str = "io.containerd.hull.v2";
/// The CRI runtime handler (and RuntimeClass handler) Hull registers.
pub const HANDLER: &str = "hull";
/// Where containerd reads its configuration.
pub const DEFAULT_PATH: &str = "/etc/containerd/config.toml";
/// The CRI runtime option that keeps the host's devices out of privileged
/// containers. Without it containerd puts every host device in a privileged
/// container's spec, which a VM cannot have, and Hull refuses the pod; with
/// it the container runs privileged inside the guest.
pub const PRIVILEGED_OPTION: &str = "privileged_without_host_devices";

/// Why a containerd configuration cannot be read or merged into. The
/// messages are fragments: the caller names the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContainerdConfigError {
    #[error("invalid TOML at line {line}: {message}")]
    Syntax { line: usize, message: String },
    #[error("version 1 config, which Hull does not edit: convert it to version 2")]
    Version1,
    #[error("no `version`, so containerd reads it as version 1: convert it to version 2")]
    NoVersion,
    #[error("unsupported `version = {0}`: Hull knows versions 2 and 3")]
    UnknownVersion(String),
    #[error("`{0}` is not a table")]
    NotATable(String),
    #[error(
        "runtime `{HANDLER}` already exists with {0}: remove it, then run `hull install` again"
    )]
    Conflict(String),
}

/// Where the CRI plugin keeps its runtimes, which moved in containerd 2.0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Schema {
    /// containerd 1.x (and 2.x, which still reads it).
    V2,
    /// containerd 2.x.
    V3,
}

impl Schema {
    fn runtimes_path(self) -> [&'static str; 4] {
        let plugin = match self {
            Schema::V2 => "io.containerd.grpc.v1.cri",
            Schema::V3 => "io.containerd.cri.v1.runtime",
        };
        ["plugins", plugin, "containerd", "runtimes"]
    }

    fn version(self) -> i64 {
        match self {
            Schema::V2 => 2,
            Schema::V3 => 3,
        }
    }
}

/// The outcome of merging Hull's runtime into a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registration {
    /// The handler is there already; the text needs no change.
    AlreadyRegistered,
    /// The new text of the file, and the part that was added.
    Added { text: String, snippet: String },
}

fn parse(text: &str) -> Result<DocumentMut, ContainerdConfigError> {
    text.parse::<DocumentMut>()
        .map_err(|err| ContainerdConfigError::Syntax {
            line: err
                .span()
                .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1)
                .unwrap_or(1),
            message: err
                .message()
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty())
                .collect::<Vec<_>>()
                .join("; "),
        })
}

/// The schema the document declares; `None` for a document without any
/// settings (absent, empty or only comments), which Hull may start afresh.
fn schema(doc: &DocumentMut) -> Result<Option<Schema>, ContainerdConfigError> {
    match doc.get("version") {
        None if doc.as_table().is_empty() => Ok(None),
        None => Err(ContainerdConfigError::NoVersion),
        Some(item) => match item.as_integer() {
            Some(1) => Err(ContainerdConfigError::Version1),
            Some(2) => Ok(Some(Schema::V2)),
            Some(3) => Ok(Some(Schema::V3)),
            _ => Err(ContainerdConfigError::UnknownVersion(
                item.to_string().trim().to_owned(),
            )),
        },
    }
}

/// A runtime handler of the CRI plugin whose `runtime_type` is Hull's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HullHandler {
    pub name: String,
    /// Whether it sets [`PRIVILEGED_OPTION`], so privileged pods can run.
    pub privileged_without_host_devices: bool,
}

/// The runtimes whose `runtime_type` is Hull's, in file order.
pub fn hull_handlers(text: &str) -> Result<Vec<HullHandler>, ContainerdConfigError> {
    let doc = parse(text)?;
    let Some(schema) = schema(&doc)? else {
        return Ok(Vec::new());
    };
    let mut item = doc.as_item();
    for key in schema.runtimes_path() {
        match item.as_table_like().and_then(|table| table.get(key)) {
            Some(child) => item = child,
            None => return Ok(Vec::new()),
        }
    }
    let Some(runtimes) = item.as_table_like() else {
        return Ok(Vec::new());
    };
    Ok(runtimes
        .iter()
        .filter(|(_, runtime)| runtime_type(runtime) == Some(RUNTIME_TYPE))
        .map(|(name, runtime)| HullHandler {
            name: name.to_owned(),
            privileged_without_host_devices: privileged_option(runtime) == Some(true),
        })
        .collect())
}

fn runtime_type(runtime: &Item) -> Option<&str> {
    runtime.as_table_like()?.get("runtime_type")?.as_str()
}

fn privileged_option(runtime: &Item) -> Option<bool> {
    runtime.as_table_like()?.get(PRIVILEGED_OPTION)?.as_bool()
}

/// Merges the `hull` runtime handler into `text`, keeping every other line,
/// comment and layout as it was. An empty text becomes a version 2 config.
pub fn register(text: &str) -> Result<Registration, ContainerdConfigError> {
    let mut doc = parse(text)?;
    let schema = match schema(&doc)? {
        Some(schema) => schema,
        None => {
            doc.insert("version", toml_edit::value(Schema::V2.version()));
            Schema::V2
        }
    };
    // Comments after the last table go above the new one, which follows it.
    let trailing = doc.trailing().as_str().unwrap_or("").to_owned();
    // Tables created on the way have no position, so this is the file's.
    let after_last = last_position(doc.as_item()).map(|p| p + 1);
    let path = schema.runtimes_path();
    let mut runtimes = doc.as_item_mut();
    for (depth, key) in path.iter().enumerate() {
        runtimes = child_table(runtimes, key, &path[..=depth])?;
    }
    if let Some(existing) = runtimes
        .as_table_like_mut()
        .and_then(|t| t.get_mut(HANDLER))
    {
        match runtime_type(existing) {
            // A handler registered before Hull set the option gets it; one
            // that says `false` is the administrator's choice and stays.
            Some(RUNTIME_TYPE) if privileged_option(existing).is_none() => {
                let handler = existing.as_table_like_mut().ok_or_else(|| {
                    ContainerdConfigError::NotATable(dotted(&[&path[..], &[HANDLER]].concat()))
                })?;
                handler.insert(PRIVILEGED_OPTION, toml_edit::value(true));
            }
            Some(RUNTIME_TYPE) => return Ok(Registration::AlreadyRegistered),
            Some(other) => {
                return Err(ContainerdConfigError::Conflict(format!(
                    "runtime_type = {other:?}"
                )))
            }
            None => return Err(ContainerdConfigError::Conflict("no runtime_type".into())),
        }
        return Ok(Registration::Added {
            text: doc.to_string(),
            snippet: format!("{PRIVILEGED_OPTION} = true, in the existing `{HANDLER}` runtime"),
        });
    }
    if insert_handler(runtimes, after_last, &trailing) {
        doc.set_trailing("");
    }
    Ok(Registration::Added {
        text: doc.to_string(),
        snippet: snippet(schema),
    })
}

/// The child table `key` of `parent`, created (as an implicit table, or an
/// inline one inside an inline table) when absent.
fn child_table<'a>(
    parent: &'a mut Item,
    key: &str,
    path: &[&str],
) -> Result<&'a mut Item, ContainerdConfigError> {
    let inline = parent.is_inline_table();
    let not_a_table = || ContainerdConfigError::NotATable(dotted(path));
    let table = parent.as_table_like_mut().ok_or_else(not_a_table)?;
    let child = table.entry(key).or_insert_with(|| {
        if inline {
            Item::Value(Value::InlineTable(InlineTable::new()))
        } else {
            let mut table = Table::new();
            table.set_implicit(true);
            Item::Table(table)
        }
    });
    if child.is_table_like() {
        Ok(child)
    } else {
        Err(not_a_table())
    }
}

/// The highest document position of any table header, so a new table can
/// go at the end of the file rather than amid its parent's children.
fn last_position(item: &Item) -> Option<usize> {
    match item {
        Item::Table(table) => table
            .iter()
            .filter_map(|(_, child)| last_position(child))
            .chain(table.position())
            .max(),
        Item::ArrayOfTables(array) => array
            .iter()
            .flat_map(|table| {
                table
                    .iter()
                    .filter_map(|(_, child)| last_position(child))
                    .chain(table.position())
                    .collect::<Vec<_>>()
            })
            .max(),
        _ => None,
    }
}

/// Adds Hull's table to `runtimes`, at document position `position` when
/// the file has table headers, with `comments` above its header. Returns
/// whether the comments were placed (an inline entry has no header).
fn insert_handler(runtimes: &mut Item, position: Option<usize>, comments: &str) -> bool {
    match runtimes {
        Item::Value(Value::InlineTable(table)) => {
            let mut handler = InlineTable::new();
            handler.insert("runtime_type", RUNTIME_TYPE.into());
            handler.insert(PRIVILEGED_OPTION, true.into());
            table.insert(HANDLER, Value::InlineTable(handler));
            false
        }
        Item::Table(table) => {
            let mut handler = Table::new();
            handler.insert("runtime_type", toml_edit::value(RUNTIME_TYPE));
            handler.insert(PRIVILEGED_OPTION, toml_edit::value(true));
            // A blank line before the new header, as a person would write it.
            let comments = comments.trim_end();
            handler.decor_mut().set_prefix(if comments.is_empty() {
                "\n".to_owned()
            } else {
                format!("{comments}\n\n")
            });
            if let Some(position) = position {
                handler.set_position(position);
            }
            table.insert(HANDLER, Item::Table(handler));
            true
        }
        // `child_table` only hands out table-like items.
        _ => unreachable!("runtimes is a table"),
    }
}

/// The table Hull adds, as it reads in a file of its own.
fn snippet(schema: Schema) -> String {
    let mut doc = DocumentMut::new();
    let mut item = doc.as_item_mut();
    for key in schema.runtimes_path() {
        item = child_table(item, key, &[]).expect("a fresh document has only tables");
    }
    insert_handler(item, None, "");
    doc.to_string().trim().to_owned()
}

fn dotted(path: &[&str]) -> String {
    path.iter()
        .map(|key| {
            if key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                (*key).to_owned()
            } else {
                format!("\"{key}\"")
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.hull]";

    fn names(text: &str) -> Vec<String> {
        hull_handlers(text)
            .unwrap()
            .into_iter()
            .map(|h| h.name)
            .collect()
    }

    fn added(text: &str) -> (String, String) {
        match register(text).unwrap() {
            Registration::Added { text, snippet } => (text, snippet),
            Registration::AlreadyRegistered => panic!("nothing added to {text:?}"),
        }
    }

    #[test]
    fn an_empty_file_becomes_a_version_2_config() {
        let (text, snippet) = added("");
        assert!(text.starts_with("version = 2\n"), "{text}");
        assert!(text.contains(TABLE), "{text}");
        assert!(text.contains("runtime_type = \"io.containerd.hull.v2\""));
        assert_eq!(
            snippet,
            format!("{TABLE}\nruntime_type = \"io.containerd.hull.v2\"\nprivileged_without_host_devices = true")
        );
        assert_eq!(names(&text), ["hull"]);
        // What was written parses as the same structure containerd reads.
        let value: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(
            value["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["hull"]
                ["runtime_type"]
                .as_str(),
            Some(RUNTIME_TYPE)
        );
    }

    #[test]
    fn other_runtimes_and_settings_stay_as_they_were() {
        let original = "\
version = 2
root = \"/var/lib/containerd\"

[plugins]
  [plugins.\"io.containerd.grpc.v1.cri\"]
    sandbox_image = \"registry.k8s.io/pause:3.9\"
    [plugins.\"io.containerd.grpc.v1.cri\".containerd]
      default_runtime_name = \"runc\"
      [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]
        runtime_type = \"io.containerd.runc.v2\"
        [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]
          SystemdCgroup = true
      [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.kata]
        runtime_type = \"io.containerd.kata.v2\"
";
        let (text, _) = added(original);
        assert!(text.starts_with(original), "{text}");
        assert!(text[original.len()..].contains(TABLE), "{text}");
        let value: toml::Value = toml::from_str(&text).unwrap();
        let runtimes = &value["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"];
        assert_eq!(
            runtimes["runc"]["options"]["SystemdCgroup"].as_bool(),
            Some(true)
        );
        assert_eq!(
            runtimes["kata"]["runtime_type"].as_str(),
            Some("io.containerd.kata.v2")
        );
        assert_eq!(
            runtimes["hull"]["runtime_type"].as_str(),
            Some(RUNTIME_TYPE)
        );
    }

    #[test]
    fn the_new_table_goes_at_the_end_of_the_file() {
        let original = "\
version = 2

[plugins]
  [plugins.\"io.containerd.grpc.v1.cri\"]
    [plugins.\"io.containerd.grpc.v1.cri\".cni]
      bin_dir = \"/usr/lib/cni\"
  [plugins.\"io.containerd.internal.v1.opt\"]
    path = \"/var/lib/containerd/opt\"
";
        let (text, snippet) = added(original);
        assert_eq!(text, format!("{original}\n{snippet}\n"));
    }

    #[test]
    fn registering_twice_changes_nothing() {
        let (once, _) = added("version = 2\n");
        assert_eq!(register(&once).unwrap(), Registration::AlreadyRegistered);
    }

    #[test]
    fn comments_and_layout_are_kept() {
        let original = "\
# Managed by hand; keep this comment.
version = 2

[plugins]
  # The CRI plugin.
  [plugins.\"io.containerd.grpc.v1.cri\"]
    enable_selinux = false   # trailing comment
# The end.
";
        let (text, _) = added(original);
        assert!(text.starts_with(original), "{text}");
    }

    #[test]
    fn a_comment_only_file_gets_a_version() {
        let (text, snippet) = added("# nothing here yet\n");
        assert_eq!(
            text,
            format!("version = 2\n# nothing here yet\n\n{snippet}\n")
        );
        assert!(text.contains("version = 2"), "{text}");
        assert_eq!(names(&text), ["hull"]);
    }

    #[test]
    fn version_3_uses_the_containerd_2_plugin() {
        let (text, snippet) = added("version = 3\n");
        assert!(
            snippet
                .starts_with("[plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.hull]"),
            "{snippet}"
        );
        assert_eq!(names(&text), ["hull"]);
    }

    #[test]
    fn inline_tables_get_an_inline_entry() {
        let original = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\nruntimes = { runc = { runtime_type = \"io.containerd.runc.v2\" } }\n";
        let (text, _) = added(original);
        let value: toml::Value = toml::from_str(&text).unwrap();
        let runtimes = &value["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"];
        assert_eq!(
            runtimes["hull"]["runtime_type"].as_str(),
            Some(RUNTIME_TYPE)
        );
        assert!(runtimes.get("runc").is_some());
    }

    #[test]
    fn version_1_and_unversioned_configs_are_refused() {
        let v1 = "version = 1\n[plugins.cri]\n";
        assert_eq!(register(v1).unwrap_err(), ContainerdConfigError::Version1);
        assert_eq!(
            hull_handlers(v1).unwrap_err(),
            ContainerdConfigError::Version1
        );
        assert_eq!(
            register("root = \"/var/lib/containerd\"\n").unwrap_err(),
            ContainerdConfigError::NoVersion
        );
        assert!(matches!(
            register("version = 7\n").unwrap_err(),
            ContainerdConfigError::UnknownVersion(v) if v == "7"
        ));
    }

    #[test]
    fn broken_toml_is_refused_with_its_line() {
        let err = register("version = 2\n[plugins\nfoo = 1\n").unwrap_err();
        assert!(
            matches!(err, ContainerdConfigError::Syntax { line: 2, .. }),
            "{err:?}"
        );
        assert!(!err.to_string().contains('\n'), "{err}");
    }

    #[test]
    fn a_different_hull_runtime_is_a_conflict() {
        let text = format!("version = 2\n{TABLE}\nruntime_type = \"io.containerd.runc.v2\"\n");
        let err = register(&text).unwrap_err();
        assert!(err.to_string().contains("io.containerd.runc.v2"), "{err}");
    }

    #[test]
    fn a_non_table_on_the_path_is_named() {
        let err = register("version = 2\nplugins = 3\n").unwrap_err();
        assert_eq!(err, ContainerdConfigError::NotATable("plugins".into()));
    }

    #[test]
    fn finds_hull_under_any_handler_name() {
        let text = format!(
            "version = 2\n{}\nruntime_type = \"io.containerd.hull.v2\"\n{}\nruntime_type = \"io.containerd.runc.v2\"\n",
            TABLE.replace(".hull]", ".fast]"),
            TABLE.replace(".hull]", ".runc]"),
        );
        assert_eq!(names(&text), ["fast"]);
        assert!(hull_handlers("").unwrap().is_empty());
        assert!(hull_handlers("version = 2\n").unwrap().is_empty());
    }

    #[test]
    fn the_handler_keeps_host_devices_out_of_privileged_pods() {
        let (text, _) = added("version = 2\n");
        assert_eq!(
            hull_handlers(&text).unwrap(),
            [HullHandler {
                name: "hull".into(),
                privileged_without_host_devices: true
            }]
        );
        let value: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(
            value["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["hull"]
                [PRIVILEGED_OPTION]
                .as_bool(),
            Some(true)
        );
        let inline =
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\nruntimes = {}\n";
        let (text, _) = added(inline);
        assert!(hull_handlers(&text).unwrap()[0].privileged_without_host_devices);
    }

    #[test]
    fn an_older_registration_gets_the_option_and_keeps_the_rest() {
        let old = format!(
            "version = 2\n{TABLE}\nruntime_type = \"io.containerd.hull.v2\"\n  # kept\n  pod_annotations = [\"a\"]\n"
        );
        assert!(!hull_handlers(&old).unwrap()[0].privileged_without_host_devices);
        let (text, snippet) = added(&old);
        assert!(snippet.contains(PRIVILEGED_OPTION), "{snippet}");
        assert!(text.starts_with(&old), "{text}");
        assert!(hull_handlers(&text).unwrap()[0].privileged_without_host_devices);
        assert_eq!(register(&text).unwrap(), Registration::AlreadyRegistered);

        // `false` is a choice, which install leaves and check reports.
        let declined = format!("{old}{PRIVILEGED_OPTION} = false\n");
        assert_eq!(
            register(&declined).unwrap(),
            Registration::AlreadyRegistered
        );
        assert!(!hull_handlers(&declined).unwrap()[0].privileged_without_host_devices);
    }
}
