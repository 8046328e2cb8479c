//! Checks of single values: paths, modes, ports, addresses, durations, keys.
//!
//! Each returns a message that completes "… is invalid: <message>" style
//! errors; the caller adds the location.

use std::net::IpAddr;
use std::time::Duration;

/// An absolute, normalised path on a host: `/etc/ssh/sshd_config`.
pub(crate) fn host_path(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("path {p:?} must be absolute (start with /)"));
    }
    if p == "/" {
        return Err("path \"/\" cannot be managed".into());
    }
    if p.ends_with('/') {
        return Err(format!("path {p:?} must not end with /"));
    }
    if p.chars().any(char::is_control) {
        return Err(format!(
            "path {p:?} contains a control character (newline, tab, escape, …)"
        ));
    }
    for part in p[1..].split('/') {
        match part {
            "" => return Err(format!("path {p:?} contains an empty component (//)")),
            "." | ".." => {
                return Err(format!(
                    "path {p:?} contains {part:?}; write the path without it"
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// A path inside a directory of the config repo (`files/`, `templates/`…):
/// relative, no `..`, no absolute paths.
pub(crate) fn repo_relative(p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Err("the path is empty".into());
    }
    if p.starts_with('/') {
        return Err(format!(
            "{p:?} is an absolute path; paths are relative to their directory in the config repo"
        ));
    }
    if p.split('/').any(|c| c == "..") {
        return Err(format!(
            "{p:?} escapes its directory with \"..\"; files must live inside the config repo"
        ));
    }
    if p.split('/').any(|c| c.is_empty() || c == ".") {
        return Err(format!("{p:?} has an empty or \".\" component"));
    }
    Ok(())
}

/// Octal file mode, written as a string: `"0644"`, `"755"`, `"1777"`.
pub(crate) fn mode(m: &str) -> Result<u32, String> {
    let digits = m.trim();
    let ok = (3..=4).contains(&digits.len()) && digits.chars().all(|c| ('0'..='7').contains(&c));
    if !ok {
        return Err(format!(
            "mode {m:?} is not an octal mode such as \"0644\" or \"0755\" (quote it in YAML)"
        ));
    }
    u32::from_str_radix(digits, 8).map_err(|e| e.to_string())
}

/// A name that reaches a shell command as one word (a unit, a command's
/// name): no control characters, no leading dash (it would read as an option).
pub(crate) fn shell_word(what: &str, n: &str) -> Result<(), String> {
    if n.is_empty() {
        return Err(format!("{what} name is empty"));
    }
    if n.chars().any(char::is_control) {
        return Err(format!(
            "{what} name {n:?} contains a control character (newline, tab, escape, …)"
        ));
    }
    if n.starts_with('-') {
        return Err(format!(
            "{what} name {n:?} starts with \"-\", which commands would read as an option"
        ));
    }
    Ok(())
}

/// A systemd unit name: one word, no slash or space.
pub(crate) fn unit_name(n: &str) -> Result<(), String> {
    shell_word("unit", n)?;
    if n.contains('/') || n.chars().any(char::is_whitespace) {
        return Err(format!("{n:?} is not a systemd unit name (no / or spaces)"));
    }
    Ok(())
}

/// The name of a timer or cron entry: it names unit files and a file in
/// /etc/cron.d, where cron ignores names with a dot.
pub(crate) fn schedule_name(what: &str, n: &str) -> Result<(), String> {
    let ok = !n.is_empty()
        && n.len() <= 64
        && !n.starts_with('-')
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} name {n:?} must be 1-64 letters, digits, _ and -, not starting with - (it names files on the host)"
        ))
    }
}

/// A Debian package name: lowercase letters, digits and `+-.`, starting
/// with a letter or digit (Debian policy 5.6.1); `:arch` and `=version` allowed.
pub(crate) fn package_name(n: &str) -> Result<(), String> {
    let ok = n
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.:=~".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!("{n:?} is not a Debian package name"))
    }
}

/// A user or group name as `useradd` accepts it.
pub(crate) fn account_name(n: &str) -> Result<(), String> {
    let mut chars = n.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok = n
        .chars()
        .skip(1)
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !first_ok || !rest_ok || n.len() > 32 {
        return Err(format!(
            "{n:?} is not a valid user or group name (lowercase letters, digits, _ and -, starting with a letter or _, at most 32)"
        ));
    }
    Ok(())
}

/// A host name: a DNS label of lowercase letters, digits and dashes.
pub(crate) fn host_name(n: &str) -> Result<(), String> {
    let ok = !n.is_empty()
        && n.len() <= 63
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !n.starts_with('-')
        && !n.ends_with('-');
    if !ok {
        return Err(format!(
            "{n:?} is not a valid host name (1-63 lowercase letters, digits and dashes, not starting or ending with a dash)"
        ));
    }
    Ok(())
}

/// A PostgreSQL database name tidekeeper dumps and restores: plain
/// characters only, since it reaches a shell script (quoted there too).
pub(crate) fn database_name(n: &str) -> bool {
    (1..=63).contains(&n.len())
        && n.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"_-.".contains(&c))
        && !n.starts_with('-')
}

/// A container a job reaches: its name, or `STACK/SERVICE` of a compose
/// stack (Docker's name rules: they reach a shell script, quoted there too).
pub(crate) fn container_ref(c: &str) -> bool {
    let part = |p: &str| {
        (1..=128).contains(&p.len())
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
            && p.as_bytes()[0].is_ascii_alphanumeric()
    };
    match c.split_once('/') {
        Some((stack, service)) => part(stack) && part(service),
        None => part(c),
    }
}

/// The `USER@HOST` and port of a restic sftp repository, written
/// `sftp:USER@HOST:/PATH` or `sftp://USER@HOST[:PORT]//PATH`.
pub(crate) fn sftp_target(repository: &str) -> Option<(String, Option<u16>)> {
    let plain = |t: &str| {
        !t.is_empty()
            && t.contains('@')
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"@._-".contains(&b))
            && !t.starts_with('-')
    };
    if let Some(rest) = repository.strip_prefix("sftp://") {
        let (authority, _) = rest.split_once('/')?;
        let (target, port) = match authority.rsplit_once(':') {
            Some((t, p)) => (t, Some(p.parse::<u16>().ok().filter(|p| *p > 0)?)),
            None => (authority, None),
        };
        return plain(target).then(|| (target.to_string(), port));
    }
    let rest = repository.strip_prefix("sftp:")?;
    let (target, _) = rest.split_once(':')?;
    plain(target).then(|| (target.to_string(), None))
}

/// A jump host written `[user@]address[:port]`: (user, address, port).
/// The address is an IP or a DNS name (IPv6 in brackets when a port follows).
pub(crate) fn jump_address(s: &str) -> Result<(Option<&str>, String, u16), String> {
    let (user, rest) = match s.rsplit_once('@') {
        Some((u, r)) => (Some(u), r),
        None => (None, s),
    };
    let (addr, port) = if let Some(r) = rest.strip_prefix('[') {
        let (a, after) = r
            .split_once(']')
            .ok_or_else(|| format!("{s:?}: an IPv6 address opened with [ is not closed"))?;
        (a, after.strip_prefix(':'))
    } else if rest.matches(':').count() == 1 {
        let (a, p) = rest.split_once(':').unwrap_or((rest, ""));
        (a, Some(p))
    } else {
        (rest, None)
    };
    let port = match port {
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err(format!("{s:?}: the port {p:?} is not 1 to 65535")),
        },
        None => 22,
    };
    let ok = !addr.is_empty()
        && addr.len() <= 253
        && (addr.parse::<std::net::IpAddr>().is_ok()
            || addr
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'));
    if !ok || addr.starts_with('-') {
        return Err(format!("{s:?}: {addr:?} is not an IP address or DNS name"));
    }
    Ok((user, addr.to_string(), port))
}

/// A port or a port range: `22`, `8000:8100` (ufw's syntax).
pub(crate) fn port_spec(p: &str) -> Result<(u16, u16), String> {
    let one = |s: &str| -> Result<u16, String> {
        match s.trim().parse::<u32>() {
            Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
            _ => Err(format!(
                "port {p:?} is not a port number from 1 to 65535 or a range such as 8000:8100"
            )),
        }
    };
    match p.split_once(':') {
        Some((a, b)) => {
            let (a, b) = (one(a)?, one(b)?);
            if a > b {
                return Err(format!("port range {p:?} starts after it ends"));
            }
            Ok((a, b))
        }
        None => one(p).map(|n| (n, n)),
    }
}

pub(crate) fn proto(p: &str) -> Result<(), String> {
    match p {
        "tcp" | "udp" | "any" => Ok(()),
        _ => Err(format!("protocol {p:?} is not one of tcp, udp, any")),
    }
}

/// A network interface name as Linux allows it (`eth0`, `tailscale0`,
/// `wg0`): up to 15 characters, no `/`, whitespace or leading dash.
pub(crate) fn interface(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 15
        && !s.starts_with('-')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@' | '+'));
    ok.then_some(()).ok_or_else(|| {
        format!("interface {s:?} is not an interface name (up to 15 letters, digits, -_.@+)")
    })
}

/// An address or network: `10.0.0.2`, `10.0.0.0/16`, `2001:db8::1/128`, or `any`.
pub(crate) fn cidr(s: &str) -> Result<(), String> {
    if s == "any" {
        return Ok(());
    }
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("{s:?} is not an IP address or CIDR network such as 10.0.0.0/16"))?;
    if let Some(p) = prefix {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        match p.parse::<u8>() {
            Ok(n) if n <= max => {}
            _ => {
                return Err(format!(
                    "{s:?} has prefix length {p:?}; it must be 0 to {max}"
                ));
            }
        }
    }
    Ok(())
}

/// A parsed network (`10.0.0.0/16`, or one address as its /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Net {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Net {
    /// `any` is the whole IPv4 internet (use [`Net::any_v6`] for IPv6).
    pub(crate) fn parse(s: &str) -> Option<Net> {
        if s == "any" {
            return Some(Net {
                addr: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                prefix: 0,
            });
        }
        let (a, p) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = a.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = if p.is_empty() { max } else { p.parse().ok()? };
        (prefix <= max).then_some(Net { addr, prefix })
    }

    fn bits(a: IpAddr) -> (u128, u8) {
        match a {
            IpAddr::V4(v) => (u32::from(v) as u128, 32),
            IpAddr::V6(v) => (u128::from(v), 128),
        }
    }

    /// Is all of `inner` inside this network?
    pub(crate) fn contains(&self, inner: &Net) -> bool {
        let ((a, w), (b, w2)) = (Self::bits(self.addr), Self::bits(inner.addr));
        if w != w2 || inner.prefix < self.prefix {
            return false;
        }
        let shift = (w - self.prefix) as u32;
        shift >= 128 || (a >> shift) == (b >> shift)
    }
}

impl Net {
    /// The network itself: host bits cleared (`10.20.0.5/16` is
    /// `10.20.0.0/16`), as cloud APIs store it.
    pub(crate) fn network(&self) -> Net {
        let (a, w) = Self::bits(self.addr);
        let host = w - self.prefix;
        let masked = if host >= 128 { 0 } else { (a >> host) << host };
        let addr = match self.addr {
            IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::from(masked as u32)),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::from(masked)),
        };
        Net {
            addr,
            prefix: self.prefix,
        }
    }
}

/// Is `addr` one of the five addresses AWS keeps in every subnet (the
/// network, router, DNS, a spare, and the last)?
pub(crate) fn aws_reserved(subnet: &Net, addr: &Net) -> bool {
    let (IpAddr::V4(net), IpAddr::V4(a)) = (subnet.network().addr, addr.addr) else {
        return false;
    };
    let offset = u32::from(a).wrapping_sub(u32::from(net));
    let last = (1u64 << (32 - subnet.prefix as u32)) - 1;
    offset < 4 || u64::from(offset) == last
}

/// The address tidekeeper gives a NAT gateway in `subnet`: its last usable
/// one (below the broadcast address AWS keeps), so the hosts' fixed
/// addresses, usually low, stay free.
pub(crate) fn nat_address(subnet: &str) -> Option<String> {
    let n = Net::parse(subnet)?;
    let IpAddr::V4(net) = n.network().addr else {
        return None;
    };
    let size = 1u64 << (32 - u32::from(n.prefix));
    let last = u32::from(net).checked_add(u32::try_from(size.checked_sub(2)?).ok()?)?;
    Some(std::net::Ipv4Addr::from(last).to_string())
}

/// A checked address or network in the one form cloud firewalls store and
/// list it: a network with its prefix, host bits cleared, IPv6 in its
/// short lowercase form; `any` is both whole internets. So what the config
/// says and what the provider lists compare equal. None when not valid
/// (see [`cidr`]).
pub(crate) fn cloud_networks(s: &str) -> Option<Vec<String>> {
    if s == "any" {
        return Some(vec!["0.0.0.0/0".into(), "::/0".into()]);
    }
    Net::parse(s).map(|n| vec![n.network().to_string()])
}

impl std::fmt::Display for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A duration such as `90s`, `10m`, `2h`, `1d`, or combined `1h30m`.
pub(crate) fn duration(s: &str) -> Result<Duration, String> {
    let err =
        || format!("duration {s:?} is not like \"500ms\", \"30s\", \"10m\", \"2h\" or \"1h30m\"");
    let mut total: u64 = 0;
    let mut num = String::new();
    let mut seen_unit = false;
    let mut chars = s.trim().chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        // In milliseconds.
        let unit = match c {
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                1
            }
            's' => 1_000,
            'm' => 60_000,
            'h' => 3_600_000,
            'd' => 86_400_000,
            _ => return Err(err()),
        };
        let n: u64 = num.parse().map_err(|_| err())?;
        total = total
            .checked_add(n.checked_mul(unit).ok_or_else(err)?)
            .ok_or_else(err)?;
        num.clear();
        seen_unit = true;
    }
    if !num.is_empty() || !seen_unit {
        return Err(err());
    }
    Ok(Duration::from_millis(total))
}

const KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// A public key line: `ssh-ed25519 AAAA… comment`. Returns (type, base64 blob).
pub(crate) fn public_key(line: &str) -> Result<(String, String), String> {
    let mut parts = line.split_whitespace();
    let (Some(kind), Some(blob)) = (parts.next(), parts.next()) else {
        return Err(
            "expected \"<type> <base64 key> [comment]\", e.g. \"ssh-ed25519 AAAAC3… you@laptop\""
                .into(),
        );
    };
    if !KEY_TYPES.contains(&kind) {
        return Err(format!(
            "key type {kind:?} is not one of {}",
            KEY_TYPES.join(", ")
        ));
    }
    let b64_ok = blob.len() >= 16
        && blob.len() % 4 == 0
        && blob
            .trim_end_matches('=')
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/');
    if !b64_ok {
        return Err(format!("the {kind} key is not valid base64"));
    }
    Ok((kind.to_string(), blob.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloud_networks_are_written_as_providers_list_them() {
        let one = |s: &str| cloud_networks(s).unwrap();
        assert_eq!(one("2001:DB8:0:0::/32"), ["2001:db8::/32"]);
        assert_eq!(one("10.20.0.5/16"), ["10.20.0.0/16"]);
        assert_eq!(one("10.20.13.140"), ["10.20.13.140/32"]);
        assert_eq!(one("2001:db8::42"), ["2001:db8::42/128"]);
        assert_eq!(one("any"), ["0.0.0.0/0", "::/0"]);
        assert_eq!(one("0.0.0.0/0"), ["0.0.0.0/0"]);
        assert_eq!(cloud_networks("10.0.0.0/33"), None);
    }

    #[test]
    fn one_duration_parser_reads_every_unit_and_refuses_bare_numbers() {
        let ms = |s: &str| duration(s).map(|d| d.as_millis());
        assert_eq!(ms("500ms"), Ok(500));
        assert_eq!(ms("1h30m"), Ok(5_400_000));
        assert_eq!(ms("1m30s"), Ok(90_000));
        assert_eq!(ms("2d"), Ok(172_800_000));
        assert_eq!(ms("1s500ms"), Ok(1_500));
        for bad in ["90", "", "10 minutes", "5x", "m", "18446744073709551615h"] {
            assert!(duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sftp_repositories_name_their_login_and_nothing_else_reaches_ssh() {
        let t = |r: &str| sftp_target(r);
        assert_eq!(
            t("sftp:u1@u1.your-storagebox.de:/backups/web"),
            Some(("u1@u1.your-storagebox.de".into(), None))
        );
        assert_eq!(
            t("sftp://u1@box.example:23//backups"),
            Some(("u1@box.example".into(), Some(23)))
        );
        for bad in [
            "/srv/restic",
            "s3:https://x/y",
            "sftp:box:/path",
            "sftp:-oProxyCommand=x@h:/p",
            "sftp:u@h;reboot:/p",
            "sftp://u@h:0//p",
            "sftp://u@h:99999//p",
        ] {
            assert_eq!(t(bad), None, "{bad}");
        }
        assert!(container_ref("app-db-1") && container_ref("app/db"));
        for bad in ["", "a/b/c", "-x", "a b", "a;b", "/db", "app/"] {
            assert!(!container_ref(bad), "{bad}");
        }
    }

    #[test]
    fn modes_accept_octal_strings_only() {
        assert_eq!(mode("0644"), Ok(0o644));
        assert_eq!(mode("755"), Ok(0o755));
        assert_eq!(mode("1777"), Ok(0o1777));
        assert!(mode("0849").is_err());
        assert!(mode("rw-r--r--").is_err());
        assert!(mode("12345").is_err());
    }

    #[test]
    fn host_paths_must_be_absolute_and_normal() {
        assert!(host_path("/etc/ssh/sshd_config").is_ok());
        assert!(host_path("etc/x").is_err());
        assert!(host_path("/etc/../shadow").is_err());
        assert!(host_path("/etc//x").is_err());
        assert!(host_path("/").is_err());
    }

    #[test]
    fn repo_paths_stay_inside() {
        assert!(repo_relative("nginx/site.conf").is_ok());
        assert!(repo_relative("../secrets").is_err());
        assert!(repo_relative("/etc/passwd").is_err());
        assert!(repo_relative("a/./b").is_err());
    }

    #[test]
    fn ports_and_ranges() {
        assert_eq!(port_spec("22"), Ok((22, 22)));
        assert_eq!(port_spec("8000:8100"), Ok((8000, 8100)));
        assert!(port_spec("0").is_err());
        assert!(port_spec("65536").is_err());
        assert!(port_spec("9:8").is_err());
    }

    #[test]
    fn cidrs() {
        assert!(cidr("10.0.0.0/16").is_ok());
        assert!(cidr("2001:db8::1/128").is_ok());
        assert!(cidr("any").is_ok());
        assert!(cidr("10.0.0.0/33").is_err());
        assert!(cidr("10.0.0").is_err());
    }

    #[test]
    fn a_nat_gateway_takes_the_last_usable_address() {
        assert_eq!(nat_address("10.20.0.0/24").as_deref(), Some("10.20.0.254"));
        assert_eq!(nat_address("10.20.0.16/28").as_deref(), Some("10.20.0.30"));
    }

    #[test]
    fn aws_keeps_the_first_four_and_the_last_address_of_a_subnet() {
        let sub = Net::parse("10.20.13.0/24").unwrap();
        let at = |a: &str| aws_reserved(&sub, &Net::parse(a).unwrap());
        for a in ["10.20.13.0", "10.20.13.1", "10.20.13.3", "10.20.13.255"] {
            assert!(at(a), "{a}");
        }
        for a in ["10.20.13.4", "10.20.13.140", "10.20.13.254"] {
            assert!(!at(a), "{a}");
        }
        let small = Net::parse("10.20.0.16/28").unwrap();
        assert!(aws_reserved(&small, &Net::parse("10.20.0.31").unwrap()));
        assert!(!aws_reserved(&small, &Net::parse("10.20.0.30").unwrap()));
    }

    #[test]
    fn networks_contain_networks_of_their_family() {
        let n = |s: &str| Net::parse(s).unwrap();
        assert!(n("10.0.0.0/16").contains(&n("10.0.1.0/24")));
        assert!(n("10.0.0.0/16").contains(&n("10.0.255.7")));
        assert!(!n("10.0.0.0/16").contains(&n("10.1.0.2")));
        assert!(!n("10.0.1.0/24").contains(&n("10.0.0.0/16")));
        assert!(n("0.0.0.0/0").contains(&n("203.0.113.9")));
        assert!(n("any").contains(&n("203.0.113.9")));
        assert!(!n("0.0.0.0/0").contains(&n("2001:db8::1")));
        assert!(n("::/0").contains(&n("2001:db8::1")));
        assert!(Net::parse("10.0.0.0/33").is_none());
    }

    #[test]
    fn durations() {
        assert_eq!(duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(duration("10").is_err());
        assert!(duration("5 minutes").is_err());
        assert!(duration("99999999999999999999d").is_err());
    }
}
