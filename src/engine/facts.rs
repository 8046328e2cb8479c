//! The host's facts (see [`crate::model::facts`]) as the probe asks for
//! them: a few lines of shell at the start of every probe, and their
//! records read back. Pure.

use crate::model::Facts;
use crate::model::facts::Interface;

use super::sh::Tag;

/// The probe's fragment: one record per fact, from files every Debian has
/// (`uname`, /proc, /etc/os-release) and `ip -o addr` (iproute2).
pub(crate) fn probe() -> String {
    let t = Tag::Fact;
    format!(
        "printf '{t}\\tarch\\t%s\\n' \"$(uname -m)\"\n\
         printf '{t}\\tcpus\\t%s\\n' \"$(nproc)\"\n\
         awk '/^MemTotal:/{{printf \"{t}\\tmemory_kb\\t%s\\n\", $2}}' /proc/meminfo\n\
         awk -F= '/^(ID|VERSION_ID|VERSION_CODENAME)=/{{gsub(/\"/, \"\", $2); printf \"{t}\\t%s\\t%s\\n\", $1, $2}}' /etc/os-release\n\
         [ -f /etc/debian_version ] && printf '{t}\\tdebian_version\\t%s\\n' \"$(cat /etc/debian_version)\"\n\
         ip -o addr show | awk '{{printf \"{t}\\taddr\\t%s\\t%s\\t%s\\n\", $2, $3, $4}}'\n"
    )
}

/// The facts in the probe's fact records (their tag taken off). None when
/// there were none (a probe from before facts were asked for).
pub(crate) fn read<'a>(records: impl IntoIterator<Item = &'a str>) -> Option<Facts> {
    let mut f = Facts::default();
    let mut any = false;
    for r in records {
        any = true;
        let mut fields = r.split('\t');
        let (name, value) = (fields.next().unwrap_or(""), fields.next().unwrap_or(""));
        let value = value.trim();
        match name {
            "arch" => f.arch = value.into(),
            "cpus" => f.cpus = value.parse().unwrap_or(0),
            "memory_kb" => f.memory_mb = value.parse::<u64>().unwrap_or(0) / 1024,
            "ID" => f.os = value.into(),
            "VERSION_ID" => f.release = value.into(),
            "VERSION_CODENAME" => f.codename = value.into(),
            "debian_version" => f.debian_version = value.into(),
            "addr" => address(&mut f, value, fields.next(), fields.next()),
            _ => {} // a fact a newer tidekeeper asks for
        }
    }
    any.then_some(f)
}

/// One line of `ip -o addr`: interface, family, address/prefix.
fn address(f: &mut Facts, name: &str, family: Option<&str>, addr: Option<&str>) {
    // `ip -o` names a VLAN or veth `eth0@if12`: the part before @ is its name.
    let name = name.split('@').next().unwrap_or(name);
    let (Some(family), Some(addr)) = (family, addr) else {
        return;
    };
    let i: &mut Interface = f.interfaces.entry(name.to_string()).or_default();
    match family {
        "inet" => i.ipv4.push(addr.to_string()),
        "inet6" => i.ipv6.push(addr.to_string()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fact_records_of_a_debian_host_read_back() {
        let out = "arch\tx86_64\ncpus\t2\nmemory_kb\t4028120\nID\tdebian\nVERSION_ID\t12\n\
                   VERSION_CODENAME\tbookworm\ndebian_version\t12.7\n\
                   addr\tlo\tinet\t127.0.0.1/8\naddr\tlo\tinet6\t::1/128\n\
                   addr\teth0@if5\tinet\t10.0.0.2/24\naddr\teth0@if5\tinet\t10.0.0.3/24\n\
                   future\tsomething";
        let f = read(out.lines()).unwrap();
        assert_eq!((f.arch.as_str(), f.cpus, f.memory_mb), ("x86_64", 2, 3933));
        assert_eq!(
            (f.os.as_str(), f.release.as_str(), f.codename.as_str()),
            ("debian", "12", "bookworm")
        );
        assert_eq!(f.debian_version, "12.7");
        assert_eq!(f.interfaces["eth0"].ipv4, ["10.0.0.2/24", "10.0.0.3/24"]);
        assert_eq!(f.interfaces["lo"].ipv6, ["::1/128"]);
        assert_eq!(f.interfaces.len(), 2);
    }

    #[test]
    fn no_records_are_no_facts_and_a_garbled_number_is_zero() {
        assert_eq!(read(std::iter::empty()), None);
        let f = read(["cpus\tmany", "addr\teth0"]).unwrap();
        assert_eq!(f.cpus, 0);
        assert!(f.interfaces.is_empty());
    }

    #[test]
    fn the_fragment_is_valid_shell() {
        crate::engine::kinds::sh_n(&probe());
    }
}
