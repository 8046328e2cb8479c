//! JSON Schemas of the config files, derived from the raw spec, so editors
//! (yaml-language-server: VS Code, Neovim, Helix…) complete keys, show their
//! docs and flag unknown ones while typing. Pure.

use serde_json::Value;

use super::raw;

/// Where `init` puts the schemas in a config repo (and `tidekeeper schema
/// --out` refreshes them).
pub(crate) const DIR: &str = ".tidekeeper/schema";

/// The kinds of config file, with the schema file each is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ConfigFile {
    /// tidekeeper.yaml
    Fleet,
    /// hosts/*.yaml
    Host,
    /// roles/*.yaml
    Role,
    /// schedules.yaml
    Schedules,
}

impl ConfigFile {
    pub const ALL: [ConfigFile; 4] = [
        ConfigFile::Fleet,
        ConfigFile::Host,
        ConfigFile::Role,
        ConfigFile::Schedules,
    ];

    pub fn file_name(self) -> &'static str {
        match self {
            ConfigFile::Fleet => "fleet.json",
            ConfigFile::Host => "host.json",
            ConfigFile::Role => "role.json",
            ConfigFile::Schedules => "schedules.json",
        }
    }

    /// The kind of the config file at `path` (relative to the repo root).
    pub fn of(path: &str) -> Option<ConfigFile> {
        let yaml = path.ends_with(".yaml") || path.ends_with(".yml");
        match path {
            "tidekeeper.yaml" => Some(ConfigFile::Fleet),
            "schedules.yaml" => Some(ConfigFile::Schedules),
            p if yaml && p.strip_prefix("hosts/").is_some_and(|r| !r.contains('/')) => {
                Some(ConfigFile::Host)
            }
            p if yaml && p.strip_prefix("roles/").is_some_and(|r| !r.contains('/')) => {
                Some(ConfigFile::Role)
            }
            _ => None,
        }
    }

    pub fn schema(self) -> Value {
        // Draft 7: what every editor's YAML plugin understands.
        let g = schemars::generate::SchemaSettings::draft07().into_generator();
        let s = match self {
            ConfigFile::Fleet => g.into_root_schema_for::<raw::FleetFile>(),
            ConfigFile::Host => g.into_root_schema_for::<raw::HostFile>(),
            ConfigFile::Role => g.into_root_schema_for::<raw::RoleFile>(),
            ConfigFile::Schedules => g.into_root_schema_for::<raw::SchedulesFile>(),
        };
        let mut v = s.to_value();
        if let Some(o) = v.as_object_mut() {
            o.insert(
                "$id".into(),
                format!("https://tidekeeper.dev/schema/{}", self.file_name()).into(),
            );
        }
        v
    }
}

/// The yaml-language-server modeline for the config file at `path`: the
/// schema by a path relative to the file, so it works in any checkout.
pub(crate) fn modeline(path: &str) -> Option<String> {
    let kind = ConfigFile::of(path)?;
    let up = "../".repeat(path.matches('/').count());
    Some(format!(
        "# yaml-language-server: $schema={up}{DIR}/{}\n",
        kind.file_name()
    ))
}

/// `text` with its modeline first, unless it has one.
pub(crate) fn with_modeline(path: &str, text: &str) -> Option<String> {
    let line = modeline(path)?;
    if text.starts_with("# yaml-language-server:") {
        return None;
    }
    Some(format!("{line}{text}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modelines_point_at_the_schema_relative_to_the_file() {
        assert_eq!(
            modeline("tidekeeper.yaml").unwrap(),
            "# yaml-language-server: $schema=.tidekeeper/schema/fleet.json\n"
        );
        assert_eq!(
            modeline("hosts/web.yaml").unwrap(),
            "# yaml-language-server: $schema=../.tidekeeper/schema/host.json\n"
        );
        assert_eq!(
            modeline("roles/base.yml").unwrap(),
            "# yaml-language-server: $schema=../.tidekeeper/schema/role.json\n"
        );
        assert!(modeline("files/motd").is_none());
        assert!(modeline("roles/sub/x.yaml").is_none());
        assert!(with_modeline("schedules.yaml", "# yaml-language-server: $schema=x\n").is_none());
    }

    #[test]
    fn schemas_reject_unknown_keys_and_carry_the_docs() {
        let fleet = ConfigFile::Fleet.schema();
        assert_eq!(fleet["additionalProperties"], false, "{fleet:#}");
        assert_eq!(fleet["$schema"], "http://json-schema.org/draft-07/schema#");
        assert!(fleet["properties"]["fleet"].is_object());
        let text = fleet.to_string();
        assert!(
            text.contains("Stop applies and maintenance"),
            "field docs become descriptions"
        );
        let role = ConfigFile::Role.schema();
        assert!(role["properties"]["files"].is_object(), "{role:#}");
    }
}
