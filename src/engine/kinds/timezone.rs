//! `settings: {timezone: Europe/Berlin}` — the host's time zone. Observed
//! from the /etc/localtime link and /etc/timezone (Debian's copy of the
//! zone's name); set by replacing each with a rename, so neither is ever
//! missing or half written. A run cut between the two leaves /etc/timezone
//! behind, which the next plan sees and puts right.

use super::{ApplyCx, Change, Kind, Need, Observe, PlanCx, ProbeCx, ReadCx, each, managed, step};
use crate::change::{Action, ResourceKind};
use crate::engine::item::Item;
use crate::engine::observed::Observed;
use crate::engine::sh::{Tag, Word};
use crate::model::desired::Confinement;

/// The setting's name under `settings:`.
const NAME: &str = "timezone";
/// Where the zones are.
const ZONEINFO: &str = "/usr/share/zoneinfo/";

/// The host's time zone as a [`Kind`].
pub(crate) struct Timezone;

impl Kind for Timezone {
    fn kind(&self) -> ResourceKind {
        ResourceKind::Setting
    }

    fn setting(&self) -> Option<&'static str> {
        Some(NAME)
    }

    /// One [`Tag::Setting`] record: the name, the link's target and the
    /// first line of /etc/timezone (each empty when missing).
    fn probe(&self, items: &[Item], cx: &ProbeCx) -> String {
        if wanted(items).is_none() {
            return String::new();
        }
        let at = |p: &str| Word::quoted(&format!("{}{p}", cx.root));
        format!(
            "printf '{tag}\\t{NAME}\\t%s\\t%s\\n' \"$(readlink -- {link} 2>/dev/null)\" \"$(head -n 1 -- {file} 2>/dev/null)\"\n",
            tag = Tag::Setting,
            link = at("/etc/localtime"),
            file = at("/etc/timezone"),
        )
    }

    fn tags(&self) -> &'static [Tag] {
        &[Tag::Setting]
    }

    fn read(&self, records: &[(Tag, &str)], _cx: &ReadCx, o: &mut Observed) -> Result<(), String> {
        each(records, |_, record| {
            if let Some(state) = record.strip_prefix(NAME).and_then(|r| r.strip_prefix('\t')) {
                o.settings.insert(NAME.to_string(), state.to_string());
            }
            Ok(())
        })
    }

    /// Its files are under the root like any other.
    fn under_root(&self) -> bool {
        true
    }

    fn plan(&self, item: &Item, cx: &mut PlanCx) -> Result<Option<Need>, String> {
        let Item::Setting { value, .. } = item else {
            return Ok(None);
        };
        let (link, file) = parse(cx.obs.settings.get(NAME).map(String::as_str));
        plan(value, link.as_deref(), file.as_deref())
    }

    fn apply(&self, c: &Change, item: &Item, cx: &mut ApplyCx) -> Vec<(String, String)> {
        let Item::Setting { value, .. } = item else {
            return vec![];
        };
        step(c, apply(cx.root, value))
    }

    fn confine(&self, item: &mut Item, base: &Confinement) -> Observe {
        managed(item, base)
    }

    fn limit(&self, item: &Item, base: &mut Confinement) {
        base.managed.insert((item.kind(), item.id().to_string()));
    }
}

/// The zone the host's items want, if they want one.
fn wanted(items: &[Item]) -> Option<&str> {
    items.iter().find_map(|i| match i {
        Item::Setting { name, value } if name == NAME => Some(value.as_str()),
        _ => None,
    })
}

/// What the probe printed after the name: the zone the /etc/localtime
/// link names, and the one /etc/timezone names (None when missing).
fn parse(state: Option<&str>) -> (Option<String>, Option<String>) {
    let (link, file) = state.unwrap_or("").split_once('\t').unwrap_or(("", ""));
    let zone = |s: &str| {
        let s = s.trim();
        let s = s.split_once("zoneinfo/").map_or(s, |(_, z)| z);
        (!s.is_empty()).then(|| s.to_string())
    };
    (zone(link), zone(file))
}

/// A zone name as zoneinfo has them: `Europe/Berlin`, `Etc/GMT+3`, `UTC`.
fn check(zone: &str) -> Result<(), String> {
    let ok = !zone.is_empty()
        && !zone.starts_with('/')
        && zone
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
        && zone
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_+-/".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "setting timezone: {zone:?} is not a time zone such as Europe/Berlin"
        ))
    }
}

/// What the host needs to have `want`: the link and /etc/timezone, each
/// only when it differs. `Err` for a name that is not a zone's.
fn plan(want: &str, link: Option<&str>, file: Option<&str>) -> Result<Option<Need>, String> {
    check(want)?;
    let to = || Some(want.to_string());
    let action = if link.is_none() && file.is_none() {
        Action::Create
    } else {
        Action::Update
    };
    let mut need = Need::new(action);
    if link != Some(want) {
        need = need.attr(NAME, link.or(file).map(String::from), to());
    }
    if file != Some(want) {
        need = need.attr("/etc/timezone", file.map(String::from), to());
    }
    Ok(need.if_any())
}

/// Apply: the zone must exist; then a new link beside /etc/localtime and a
/// new /etc/timezone beside the old, each renamed over its place.
fn apply(root: &str, zone: &str) -> String {
    let at = |p: &str| Word::quoted(&format!("{root}{p}"));
    let zoneinfo = format!("{ZONEINFO}{zone}");
    format!(
        "[ -f {have} ] || {{ echo {missing} >&2; return 1; }}\n\
         t={etc}/.tidekeeper.localtime.$$; rm -f \"$t\"; ln -s {target} \"$t\" && mv -Tf \"$t\" {link} || return\n\
         t={etc}/.tidekeeper.timezone.$$; printf '%s\\n' {name} > \"$t\" && chmod 644 \"$t\" && mv -f \"$t\" {file} || return\n",
        have = at(&zoneinfo),
        missing = Word::quoted(&format!(
            "no time zone {zone} in {ZONEINFO} (is the tzdata package installed?)"
        )),
        etc = at("/etc"),
        target = Word::quoted(&zoneinfo),
        link = at("/etc/localtime"),
        name = Word::quoted(zone),
        file = at("/etc/timezone"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::kinds::{sh_n, sh_n_step};

    #[test]
    fn a_zone_is_set_only_where_the_link_or_etc_timezone_differs() {
        let berlin = Some("Europe/Berlin");
        assert_eq!(plan("Europe/Berlin", berlin, berlin), Ok(None));
        let need = plan("Europe/Berlin", Some("Etc/UTC"), Some("Etc/UTC"))
            .unwrap()
            .unwrap();
        assert_eq!(need.action, Action::Update);
        let shown: Vec<_> = need
            .attrs
            .iter()
            .map(|a| (a.name.as_str(), a.before.as_deref(), a.after.as_deref()))
            .collect();
        assert_eq!(
            shown,
            [
                ("timezone", Some("Etc/UTC"), berlin),
                ("/etc/timezone", Some("Etc/UTC"), berlin)
            ]
        );
        // The link is right, Debian's copy of its name is not.
        let need = plan("Europe/Berlin", berlin, Some("Etc/UTC"))
            .unwrap()
            .unwrap();
        assert_eq!(need.attrs.len(), 1);
        assert_eq!(need.attrs[0].name, "/etc/timezone");
        // Neither there: made.
        let need = plan("UTC", None, None).unwrap().unwrap();
        assert_eq!(need.action, Action::Create);
        assert_eq!(need.attrs[0].before, None);
    }

    #[test]
    fn a_name_that_is_not_a_zone_is_refused() {
        for bad in [
            "../../etc/shadow",
            "/etc/passwd",
            "Europe//Berlin",
            "a b",
            "x;reboot",
            "",
        ] {
            assert!(plan(bad, None, None).is_err(), "{bad}");
        }
        for good in [
            "UTC",
            "Etc/GMT+3",
            "America/Argentina/Buenos_Aires",
            "America/Port-au-Prince",
        ] {
            assert!(plan(good, None, None).is_ok(), "{good}");
        }
    }

    #[test]
    fn the_probe_record_reads_back_to_both_zones() {
        assert_eq!(
            parse(Some("/usr/share/zoneinfo/Europe/Berlin\tEurope/Berlin")),
            (Some("Europe/Berlin".into()), Some("Europe/Berlin".into()))
        );
        assert_eq!(
            parse(Some("../usr/share/zoneinfo/Etc/UTC\t")),
            (Some("Etc/UTC".into()), None)
        );
        assert_eq!(parse(None), (None, None));
        let mut o = Observed::default();
        let cx = ReadCx {
            root: "",
            items: &[],
        };
        Timezone
            .read(
                &[
                    (Tag::Setting, "hostname\tx"),
                    (Tag::Setting, "timezone\t/usr/share/zoneinfo/UTC\tUTC"),
                ],
                &cx,
                &mut o,
            )
            .unwrap();
        assert_eq!(o.settings.len(), 1);
        assert_eq!(o.settings[NAME], "/usr/share/zoneinfo/UTC\tUTC");
    }

    #[test]
    fn its_script_fragments_parse_as_sh_and_quote_the_root() {
        let items = [Item::Setting {
            name: NAME.into(),
            value: "Europe/Berlin".into(),
        }];
        let cx = ProbeCx {
            root: "/tmp/a b",
            content: Default::default(),
        };
        let probe = Timezone.probe(&items, &cx);
        assert!(
            probe.contains("readlink -- '/tmp/a b/etc/localtime'"),
            "{probe}"
        );
        sh_n(&probe);
        assert_eq!(Timezone.probe(&[], &cx), "");
        let body = apply("/tmp/a b", "Europe/Berlin");
        assert!(
            body.contains("ln -s /usr/share/zoneinfo/Europe/Berlin \"$t\" && mv -Tf \"$t\" '/tmp/a b/etc/localtime'"),
            "{body}"
        );
        sh_n_step(&body);
    }
}
