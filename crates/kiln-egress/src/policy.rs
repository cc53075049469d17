//! The egress policy: which destinations a step may reach.
//!
//! Pure code, no I/O. The proxy calls [`check`] on the requested `host:port`
//! and, when that says [`Decision::Resolve`], resolves the name once and calls
//! [`select_address`] on the answers; it then connects to exactly the address
//! that function returned (no second lookup, so DNS rebinding gets nothing).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Default cap on concurrent connections of one step.
pub const DEFAULT_MAX_CONNS_PER_STEP: usize = 32;

/// Ports a rule without an explicit port allows.
pub const DEFAULT_PORTS: [u16; 2] = [443, 80];

/// Host names of cloud metadata services, refused before any resolution.
pub const METADATA_HOST_NAMES: &[&str] = &[
    "metadata",
    "metadata.google.internal",
    "metadata.goog",
    "metadata.azure.internal",
    "metadata.ec2.internal",
    "instance-data",
    "instance-data.ec2.internal",
    "metadata.tencentyun.com",
    "metadata.platformequinix.com",
    "metadata.packet.net",
    "kubernetes.default",
    "kubernetes.default.svc",
];

/// An error in an allow-list rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("empty host rule")]
    Empty,
    #[error("invalid port in host rule {0:?}")]
    BadPort(String),
    #[error("invalid host name in host rule {0:?}")]
    BadHost(String),
    #[error("host rule {0:?} is an IP address; operator-opened addresses go in `open` as ip:port")]
    IpLiteral(String),
}

/// One allow-list entry: `registry.npmjs.org`, `*.pythonhosted.org:443`,
/// `crates.io:80`.
///
/// Matching is case-insensitive and ignores a trailing dot. `*.example.org`
/// matches any subdomain at any depth but not `example.org` itself. Without a
/// port, the policy's default ports apply.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostRule {
    /// Lower-case name without trailing dot and without the `*.` prefix.
    domain: String,
    wildcard: bool,
    port: Option<u16>,
}

impl HostRule {
    /// Parse a rule; see the type's documentation for the syntax.
    pub fn parse(s: &str) -> Result<HostRule, RuleError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(RuleError::Empty);
        }
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) => {
                let port: u16 = p.parse().map_err(|_| RuleError::BadPort(s.to_string()))?;
                if port == 0 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(RuleError::BadPort(s.to_string()));
                }
                (h, Some(port))
            }
            None => (s, None),
        };
        let (wildcard, name) = match host.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, host),
        };
        match normalize_host(name) {
            Ok(Host::Name(domain)) => Ok(HostRule { domain, wildcard, port }),
            Ok(Host::Ip(_)) => Err(RuleError::IpLiteral(s.to_string())),
            Err(_) => Err(RuleError::BadHost(s.to_string())),
        }
    }

    /// Whether the (already normalised) host name matches, ignoring ports.
    pub fn matches_host(&self, host: &str) -> bool {
        let host = host.strip_suffix('.').unwrap_or(host);
        if self.wildcard {
            host.len() > self.domain.len() + 1
                && host[host.len() - self.domain.len()..].eq_ignore_ascii_case(&self.domain)
                && host.as_bytes()[host.len() - self.domain.len() - 1] == b'.'
        } else {
            host.eq_ignore_ascii_case(&self.domain)
        }
    }

    /// The explicit port, if any.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// Whether `port` is allowed by this rule under `default_ports`.
    pub fn allows_port(&self, port: u16, default_ports: &[u16]) -> bool {
        match self.port {
            Some(p) => p == port,
            None => default_ports.contains(&port),
        }
    }
}

impl fmt::Display for HostRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            f.write_str("*.")?;
        }
        f.write_str(&self.domain)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

impl FromStr for HostRule {
    type Err = RuleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HostRule::parse(s)
    }
}

impl Serialize for HostRule {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HostRule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        HostRule::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// What a step may reach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Host names that may be reached (after resolution to public addresses).
    pub allow: Vec<HostRule>,
    /// Ports allowed for rules that name none.
    pub default_ports: Vec<u16>,
    /// Operator-opened `ip:port` pairs, matched exactly. The only way to reach
    /// an IP literal or a private/loopback address.
    pub open: Vec<SocketAddr>,
    /// Concurrent connections one step may hold.
    pub max_conns_per_step: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Policy::none()
    }
}

const REGISTRY_HOSTS: &[&str] = &[
    // npm
    "registry.npmjs.org",
    "registry.yarnpkg.com",
    // PyPI
    "pypi.org",
    "files.pythonhosted.org",
    // crates.io
    "crates.io",
    "index.crates.io",
    "static.crates.io",
    // Go
    "proxy.golang.org",
    "sum.golang.org",
    // RubyGems
    "rubygems.org",
    "index.rubygems.org",
];

impl Policy {
    /// No network at all.
    pub fn none() -> Policy {
        Policy {
            allow: Vec::new(),
            default_ports: DEFAULT_PORTS.to_vec(),
            open: Vec::new(),
            max_conns_per_step: DEFAULT_MAX_CONNS_PER_STEP,
        }
    }

    /// A policy allowing exactly the given rules.
    pub fn allowing<S: AsRef<str>>(rules: &[S]) -> Result<Policy, RuleError> {
        let allow = rules.iter().map(|r| HostRule::parse(r.as_ref())).collect::<Result<Vec<_>, _>>()?;
        Ok(Policy { allow, ..Policy::none() })
    }

    /// The public package registries: npm, PyPI, crates.io, Go, RubyGems.
    pub fn registries() -> Policy {
        let allow = REGISTRY_HOSTS.iter().filter_map(|h| HostRule::parse(h).ok()).collect();
        Policy { allow, ..Policy::none() }
    }

    /// Fetching sources from one forge: the host and its subdomains.
    pub fn source_fetch(repo_host: &str) -> Result<Policy, RuleError> {
        let base = HostRule::parse(repo_host)?;
        if base.wildcard {
            return Ok(Policy { allow: vec![base], ..Policy::none() });
        }
        let sub = HostRule { wildcard: true, ..base.clone() };
        Ok(Policy { allow: vec![base, sub], ..Policy::none() })
    }

    /// Add the rules of `other` (and its opened addresses) to this policy.
    pub fn merge(mut self, other: &Policy) -> Policy {
        for r in &other.allow {
            if !self.allow.contains(r) {
                self.allow.push(r.clone());
            }
        }
        for a in &other.open {
            if !self.open.contains(a) {
                self.open.push(*a);
            }
        }
        self
    }

    /// Open one exact `ip:port` (operator override).
    pub fn with_open(mut self, addr: SocketAddr) -> Policy {
        if !self.open.contains(&addr) {
            self.open.push(addr);
        }
        self
    }

    fn is_open(&self, addr: SocketAddr) -> bool {
        self.open.contains(&addr)
    }
}

/// What to do with a requested destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// An operator-opened IP literal: connect to exactly this address.
    Connect(SocketAddr),
    /// An allowed name: resolve it once, then pass the answers to
    /// [`select_address`].
    Resolve {
        /// Normalised host name (lower case, no trailing dot).
        host: String,
        port: u16,
    },
    /// Refused; `rule` says why, for the audit trail.
    Refuse { rule: String },
}

/// A parsed host: an IP literal in any spelling, or a validated name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Ip(IpAddr),
    /// Lower case, no trailing dot, valid DNS labels.
    Name(String),
}

/// Normalise a host as it appears in a request target.
///
/// Bracketed or colon-containing hosts are IPv6 (zone ids dropped). Anything
/// whose last label starts with a digit is taken to be an IPv4 literal with
/// `inet_aton` semantics, and refused as malformed if it does not parse: no
/// name ends in a numeric label, and a resolver or client may well read it as
/// an address.
pub fn normalize_host(raw: &str) -> Result<Host, &'static str> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err("empty host");
    }
    if let Some(inner) = raw.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or("malformed IP literal")?;
        return parse_ipv6(inner).map(Host::Ip).ok_or("malformed IP literal");
    }
    if raw.contains(':') {
        return parse_ipv6(raw).map(Host::Ip).ok_or("malformed IP literal");
    }
    if !raw.is_ascii() {
        return Err("invalid host name");
    }
    let lower = raw.to_ascii_lowercase();
    let name = lower.strip_suffix('.').unwrap_or(&lower);
    if name.is_empty() {
        return Err("invalid host name");
    }
    let last = name.rsplit('.').next().unwrap_or(name);
    if last.as_bytes().first().is_some_and(u8::is_ascii_digit) {
        return parse_ipv4_aton(name).map(|v4| Host::Ip(IpAddr::V4(v4))).ok_or("malformed IP literal");
    }
    if name.len() > 253 {
        return Err("invalid host name");
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err("invalid host name");
        }
    }
    Ok(Host::Name(name.to_string()))
}

/// Parse an IP literal in any spelling a resolver or client might accept:
/// dotted quad, `inet_aton` short forms (`127.1`, `169.254.43518`), a single
/// decimal/octal/hex number, per-part octal/hex (`0251.0376.0251.0376`,
/// `0xa9.0xfe.0xa9.0xfe`), and IPv6 with or without brackets and zone id.
/// `None` for names (and for malformed literals; see [`normalize_host`]).
pub fn parse_ip_literal(host: &str) -> Option<IpAddr> {
    match normalize_host(host) {
        Ok(Host::Ip(ip)) => Some(ip),
        _ => None,
    }
}

fn parse_ipv6(s: &str) -> Option<IpAddr> {
    // Zone id: `fe80::1%eth0`, URL-encoded as `%25eth0`.
    let addr = match s.split_once('%') {
        Some((a, zone)) if !zone.is_empty() => a,
        Some(_) => return None,
        None => s,
    };
    if let Ok(v6) = addr.parse::<Ipv6Addr>() {
        return Some(IpAddr::V6(v6));
    }
    None
}

fn parse_aton_part(p: &str) -> Option<u64> {
    if p.is_empty() {
        return None;
    }
    let (digits, radix) = if let Some(h) = p.strip_prefix("0x").or_else(|| p.strip_prefix("0X")) {
        (h, 16)
    } else if p.len() > 1 && p.starts_with('0') {
        (&p[1..], 8)
    } else {
        (p, 10)
    };
    if digits.is_empty() {
        // `0x` alone: zero to inet_aton and the WHATWG URL parser.
        return Some(0);
    }
    if !digits.bytes().all(|b| (b as char).is_digit(radix)) {
        return None;
    }
    let trimmed = digits.trim_start_matches('0');
    if trimmed.len() > 16 {
        return None;
    }
    u64::from_str_radix(if trimmed.is_empty() { "0" } else { trimmed }, radix).ok()
}

/// `inet_aton`: 1–4 dot-separated parts, each decimal, octal (leading 0) or
/// hex (leading 0x); the last part fills all remaining bytes.
fn parse_ipv4_aton(s: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = s.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let nums = parts.iter().map(|p| parse_aton_part(p)).collect::<Option<Vec<u64>>>()?;
    let (last, init) = nums.split_last()?;
    let mut value: u64 = 0;
    for (i, n) in init.iter().enumerate() {
        if *n > 255 {
            return None;
        }
        value |= n << (8 * (3 - i));
    }
    let rest_bits = 8 * (4 - init.len()) as u32;
    if *last >= (1u64 << rest_bits) {
        return None;
    }
    value |= last;
    Some(Ipv4Addr::from(u32::try_from(value).ok()?))
}

/// Why an address may not be reached (unless operator-opened), or `None`
/// for an ordinary public unicast address.
pub fn refused_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => refused_v4(v4),
        IpAddr::V6(v6) => refused_v6(v6),
    }
}

fn refused_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    let n = u32::from(ip);
    let in_net = |net: u32, bits: u32| (n >> (32 - bits)) == (net >> (32 - bits));
    if n == 0 {
        return Some("unspecified");
    }
    if n == u32::MAX {
        return Some("broadcast");
    }
    Some(match o {
        [0, ..] => "this-network",
        [127, ..] => "loopback",
        [10, ..] => "private",
        [172, b, ..] if (16..32).contains(&b) => "private",
        [192, 168, ..] => "private",
        [169, 254, ..] => "link-local",
        [100, b, ..] if (64..128).contains(&b) => "cgnat",
        [192, 0, 0, _] => "ietf-protocol",
        [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _] => "documentation",
        [192, 88, 99, _] => "reserved",
        [198, b, ..] if b == 18 || b == 19 => "benchmarking",
        _ if in_net(0xe000_0000, 4) => "multicast",
        _ if in_net(0xf000_0000, 4) => "reserved",
        _ => return None,
    })
}

fn embedded_v4(seg: &[u16; 8], hi: usize) -> Ipv4Addr {
    Ipv4Addr::from((u32::from(seg[hi]) << 16) | u32::from(seg[hi + 1]))
}

fn refused_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    // IPv4-mapped ::ffff:a.b.c.d — treated as the IPv4 address it carries.
    if s[..5] == [0; 5] && s[5] == 0xffff {
        return refused_v4(embedded_v4(&s, 6));
    }
    // SIIT ::ffff:0:a.b.c.d.
    if s[..4] == [0; 4] && s[4] == 0xffff && s[5] == 0 {
        return refused_v4(embedded_v4(&s, 6));
    }
    // IPv4-compatible ::a.b.c.d (deprecated; refused whatever it carries).
    if s[..6] == [0; 6] {
        return Some(refused_v4(embedded_v4(&s, 6)).unwrap_or("ipv4-compatible"));
    }
    // NAT64 well-known prefix 64:ff9b::/96.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return refused_v4(embedded_v4(&s, 6));
    }
    // NAT64 local-use 64:ff9b:1::/48.
    if s[..3] == [0x64, 0xff9b, 1] {
        return Some("private");
    }
    // 6to4 2002:a.b.c.d::/48.
    if s[0] == 0x2002 {
        return refused_v4(embedded_v4(&s, 1));
    }
    // Teredo 2001:0::/32: tunnels to arbitrary IPv4 hosts.
    if s[0] == 0x2001 && s[1] == 0 {
        return Some("teredo");
    }
    let first = s[0];
    if first & 0xff00 == 0xff00 {
        return Some("multicast");
    }
    if first & 0xffc0 == 0xfe80 {
        return Some("link-local");
    }
    if first & 0xffc0 == 0xfec0 {
        return Some("site-local");
    }
    if first & 0xfe00 == 0xfc00 {
        return Some("unique-local");
    }
    if first == 0x2001 && s[1] == 0x0db8 {
        return Some("documentation");
    }
    if first == 0x3fff && s[1] & 0xf000 == 0 {
        return Some("documentation");
    }
    if s[..4] == [0x100, 0, 0, 0] {
        return Some("discard-only");
    }
    // Only 2000::/3 is allocated global unicast.
    if first & 0xe000 != 0x2000 {
        return Some("reserved");
    }
    None
}

/// Whether `name` (normalised) is a cloud metadata service name.
pub fn is_metadata_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    METADATA_HOST_NAMES.iter().any(|m| m.eq_ignore_ascii_case(name))
}

fn is_local_name(name: &str) -> bool {
    name == "localhost"
        || name.ends_with(".localhost")
        || name.ends_with(".local")
        || name.ends_with(".internal")
        || name == "localdomain"
        || name.ends_with(".localdomain")
}

/// Decide on a requested `host:port`, before any resolution.
pub fn check(policy: &Policy, host: &str, port: u16) -> Decision {
    let refuse = |rule: &str| Decision::Refuse { rule: rule.to_string() };
    if port == 0 {
        return refuse("port 0 not allowed");
    }
    let host = match normalize_host(host) {
        Ok(h) => h,
        Err(why) => return refuse(why),
    };
    match host {
        Host::Ip(ip) => {
            let addr = SocketAddr::new(ip, port);
            if policy.is_open(addr) {
                return Decision::Connect(addr);
            }
            match refused_reason(ip) {
                Some(why) => refuse(why),
                None => refuse("IP literal not opened by the operator"),
            }
        }
        Host::Name(name) => {
            if is_metadata_name(&name) {
                return refuse("metadata host name");
            }
            if is_local_name(&name) {
                return refuse("local host name");
            }
            let mut matched = false;
            for rule in policy.allow.iter().filter(|r| r.matches_host(&name)) {
                matched = true;
                if rule.allows_port(port, &policy.default_ports) {
                    return Decision::Resolve { host: name, port };
                }
            }
            if matched {
                refuse(&format!("port {port} not allowed"))
            } else {
                refuse("not on the allow-list")
            }
        }
    }
}

/// Pick the address to connect to from a name's resolution: the first
/// candidate that is operator-opened or not refused. `Err(rule)` when none
/// passes (the rule names the first refusal, e.g.
/// `private (resolved from evil.example)`).
pub fn select_address(policy: &Policy, host: &str, candidates: &[SocketAddr]) -> Result<SocketAddr, String> {
    let mut first_refusal: Option<&'static str> = None;
    for &addr in candidates {
        if policy.is_open(addr) {
            return Ok(addr);
        }
        match refused_reason(addr.ip()) {
            None => return Ok(addr),
            Some(why) => {
                first_refusal.get_or_insert(why);
            }
        }
    }
    Err(match first_refusal {
        Some(why) => format!("{why} (resolved from {host})"),
        None => format!("no addresses (resolved from {host})"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn rules_parse_and_display() {
        for s in ["registry.npmjs.org", "*.pythonhosted.org:443", "crates.io:80"] {
            assert_eq!(HostRule::parse(s).unwrap().to_string(), s);
        }
        assert_eq!(HostRule::parse("Crates.IO.").unwrap().to_string(), "crates.io");
        assert_eq!(HostRule::parse("x.org:8443").unwrap().port(), Some(8443));
        for bad in ["", "x.org:0", "x.org:99999", "x.org:+1", "x.org:", "a b.org", "*.", "-a.org", "a..org"] {
            assert!(HostRule::parse(bad).is_err(), "{bad:?}");
        }
        assert!(matches!(HostRule::parse("10.0.0.1"), Err(RuleError::IpLiteral(_))));
        assert!(matches!(HostRule::parse("[::1]:80"), Err(RuleError::IpLiteral(_))));
    }

    #[test]
    fn rule_matching() {
        let exact = HostRule::parse("crates.io").unwrap();
        assert!(exact.matches_host("crates.io"));
        assert!(exact.matches_host("CRATES.IO"));
        assert!(exact.matches_host("crates.io."));
        assert!(!exact.matches_host("index.crates.io"));
        assert!(!exact.matches_host("evilcrates.io"));

        let wild = HostRule::parse("*.pythonhosted.org").unwrap();
        assert!(wild.matches_host("files.pythonhosted.org"));
        assert!(wild.matches_host("a.b.c.pythonhosted.org"));
        assert!(wild.matches_host("Files.PythonHosted.org."));
        assert!(!wild.matches_host("pythonhosted.org"));
        assert!(!wild.matches_host("evilpythonhosted.org"));
        assert!(!wild.matches_host(".pythonhosted.org"));
        assert!(!wild.matches_host("pythonhosted.org.evil.com"));

        let ported = HostRule::parse("crates.io:80").unwrap();
        assert!(ported.allows_port(80, &DEFAULT_PORTS));
        assert!(!ported.allows_port(443, &DEFAULT_PORTS));
        assert!(exact.allows_port(443, &DEFAULT_PORTS));
        assert!(exact.allows_port(80, &DEFAULT_PORTS));
        assert!(!exact.allows_port(22, &DEFAULT_PORTS));
    }

    #[test]
    fn rules_roundtrip_through_serde() {
        let p = Policy::registries().with_open("127.0.0.1:5000".parse().unwrap());
        let json = serde_json::to_string(&p).unwrap();
        assert!(json.contains("\"registry.npmjs.org\""));
        let back: Policy = serde_json::from_str(&json).unwrap();
        assert_eq!(back, p);
        assert!(serde_json::from_str::<HostRule>("\"a b\"").is_err());
    }

    #[test]
    fn classification_v4() {
        let cases = [
            ("127.0.0.1", Some("loopback")),
            ("127.255.255.254", Some("loopback")),
            ("10.0.0.5", Some("private")),
            ("172.16.0.1", Some("private")),
            ("172.31.255.255", Some("private")),
            ("172.32.0.1", None),
            ("172.15.255.255", None),
            ("192.168.1.1", Some("private")),
            ("100.64.0.1", Some("cgnat")),
            ("100.127.255.255", Some("cgnat")),
            ("100.100.100.200", Some("cgnat")),
            ("100.128.0.1", None),
            ("169.254.169.254", Some("link-local")),
            ("224.0.0.1", Some("multicast")),
            ("239.255.255.250", Some("multicast")),
            ("0.0.0.0", Some("unspecified")),
            ("0.1.2.3", Some("this-network")),
            ("255.255.255.255", Some("broadcast")),
            ("240.0.0.1", Some("reserved")),
            ("192.0.0.170", Some("ietf-protocol")),
            ("192.0.2.1", Some("documentation")),
            ("198.51.100.1", Some("documentation")),
            ("203.0.113.9", Some("documentation")),
            ("198.18.0.1", Some("benchmarking")),
            ("8.8.8.8", None),
            ("151.101.1.63", None),
            ("1.1.1.1", None),
        ];
        for (a, want) in cases {
            assert_eq!(refused_reason(ip(a)), want, "{a}");
        }
    }

    #[test]
    fn classification_v6() {
        let cases = [
            ("::", Some("unspecified")),
            ("::1", Some("loopback")),
            ("fe80::1", Some("link-local")),
            ("febf::1", Some("link-local")),
            ("fec0::1", Some("site-local")),
            ("fc00::1", Some("unique-local")),
            ("fd00::1", Some("unique-local")),
            ("ff02::1", Some("multicast")),
            ("2001:db8::1", Some("documentation")),
            ("100::1", Some("discard-only")),
            ("2001::1", Some("teredo")),
            ("64:ff9b:1::1", Some("private")),
            ("4000::1", Some("reserved")),
            ("2606:4700::1111", None),
            ("2a04:4e42::223", None),
        ];
        for (a, want) in cases {
            assert_eq!(refused_reason(ip(a)), want, "{a}");
        }
    }

    #[test]
    fn classification_of_embedded_v4() {
        let refused_v4 = [
            ("169.254.169.254", "link-local"),
            ("127.0.0.1", "loopback"),
            ("10.1.2.3", "private"),
            ("192.168.0.1", "private"),
            ("100.64.1.1", "cgnat"),
            ("0.0.0.0", "unspecified"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "broadcast"),
        ];
        for (v4, why) in refused_v4 {
            let o: Ipv4Addr = v4.parse().unwrap();
            let [a, b, c, d] = o.octets();
            let hi = u16::from_be_bytes([a, b]);
            let lo = u16::from_be_bytes([c, d]);
            let forms = [
                format!("::ffff:{v4}"),
                format!("::ffff:{hi:x}:{lo:x}"),
                format!("::ffff:0:{v4}"),
                format!("64:ff9b::{v4}"),
                format!("64:ff9b::{hi:x}:{lo:x}"),
                format!("2002:{hi:x}:{lo:x}::1"),
                format!("2002:{hi:x}:{lo:x}:ffff::"),
            ];
            for f in forms {
                assert_eq!(refused_reason(ip(&f)), Some(why), "{f}");
            }
            if o != Ipv4Addr::UNSPECIFIED && v4 != "0.0.0.1" {
                let compat = format!("::{v4}");
                if compat != "::0.0.0.0" {
                    assert!(refused_reason(ip(&compat)).is_some(), "{compat}");
                }
            }
        }
        assert_eq!(refused_reason(ip("::169.254.169.254")), Some("link-local"));
        assert_eq!(refused_reason(ip("::10.0.0.1")), Some("private"));
        assert_eq!(refused_reason(ip("::8.8.8.8")), Some("ipv4-compatible"));
        // Public IPv4 in mapped / NAT64 / 6to4 form is fine.
        assert_eq!(refused_reason(ip("::ffff:8.8.8.8")), None);
        assert_eq!(refused_reason(ip("64:ff9b::8.8.8.8")), None);
        assert_eq!(refused_reason(ip("2002:0808:0808::1")), None);
    }

    #[test]
    fn literal_spellings_of_the_metadata_address() {
        let meta = ip("169.254.169.254");
        for s in [
            "169.254.169.254",
            "169.254.169.254.",
            "2852039166",
            "0xA9FEA9FE",
            "0xa9fea9fe",
            "0XA9FEA9FE",
            "025177524776",
            "0251.0376.0251.0376",
            "0xa9.0xfe.0xa9.0xfe",
            "0xA9.254.0251.0xfe",
            "169.254.43518",
            "169.16689662",
            "0xa9.0xfea9fe",
            "0251.0376.0xa9fe",
            "00000169.254.169.254",
        ] {
            // "00000169" is octal 0o169 -> invalid (9 is not octal) -> None.
            let got = parse_ip_literal(s);
            if s.starts_with("00000169") {
                assert_eq!(got, None, "{s}");
                assert_eq!(normalize_host(s), Err("malformed IP literal"));
            } else {
                assert_eq!(got, Some(meta), "{s}");
            }
        }
        for s in [
            "[::ffff:169.254.169.254]",
            "::ffff:169.254.169.254",
            "[::ffff:a9fe:a9fe]",
            "[0:0:0:0:0:ffff:169.254.169.254]",
        ] {
            let got = parse_ip_literal(s).unwrap();
            assert_eq!(refused_reason(got), Some("link-local"), "{s}");
        }
    }

    #[test]
    fn literal_short_forms_and_ipv6() {
        assert_eq!(parse_ip_literal("127.1"), Some(ip("127.0.0.1")));
        assert_eq!(parse_ip_literal("127.0.1"), Some(ip("127.0.0.1")));
        assert_eq!(parse_ip_literal("0"), Some(ip("0.0.0.0")));
        assert_eq!(parse_ip_literal("0x7f000001"), Some(ip("127.0.0.1")));
        assert_eq!(parse_ip_literal("017700000001"), Some(ip("127.0.0.1")));
        assert_eq!(parse_ip_literal("0x"), Some(ip("0.0.0.0")));
        assert_eq!(parse_ip_literal("10.0x10.0.1"), Some(ip("10.16.0.1")));
        assert_eq!(parse_ip_literal("[::1]"), Some(ip("::1")));
        assert_eq!(parse_ip_literal("[fe80::1%eth0]"), Some(ip("fe80::1")));
        assert_eq!(parse_ip_literal("[fe80::1%25eth0]"), Some(ip("fe80::1")));
        assert_eq!(parse_ip_literal("fe80::1%eth0"), Some(ip("fe80::1")));
        assert_eq!(parse_ip_literal("[FD00::1]"), Some(ip("fd00::1")));
        // Names are not literals.
        assert_eq!(parse_ip_literal("crates.io"), None);
        assert_eq!(parse_ip_literal("1password.com"), None);
        assert_eq!(parse_ip_literal("0x.example"), None);
        // Ambiguous numeric-looking hosts are refused as malformed literals.
        for s in [
            "256.1.1.1",
            "1.2.3.4.5",
            "1.2.3.256",
            "1.2.65536",
            "4294967296",
            "08.1.1.1",
            "0xg.1.1.1",
            "1..1",
            "example.123",
            "a.0x1",
            "99999999999999999999999",
            "[::1",
            "[zz::1]",
            "[fe80::1%]",
            "::1::2",
        ] {
            assert_eq!(parse_ip_literal(s), None, "{s}");
            assert!(matches!(check(&Policy::registries(), s, 443), Decision::Refuse { .. }), "{s}");
        }
        assert_eq!(parse_ip_literal("255.255.255.255"), Some(ip("255.255.255.255")));
        assert_eq!(parse_ip_literal("4294967295"), Some(ip("255.255.255.255")));
    }

    fn rule_of(d: Decision) -> String {
        match d {
            Decision::Refuse { rule } => rule,
            other => panic!("expected refusal, got {other:?}"),
        }
    }

    #[test]
    fn decisions_for_names() {
        let p = Policy::registries();
        assert_eq!(
            check(&p, "registry.npmjs.org", 443),
            Decision::Resolve { host: "registry.npmjs.org".into(), port: 443 }
        );
        assert_eq!(
            check(&p, "Registry.NPMJS.org.", 80),
            Decision::Resolve { host: "registry.npmjs.org".into(), port: 80 }
        );
        assert_eq!(rule_of(check(&p, "registry.npmjs.org", 22)), "port 22 not allowed");
        assert_eq!(rule_of(check(&p, "evil.example", 443)), "not on the allow-list");
        assert_eq!(rule_of(check(&p, "npmjs.org", 443)), "not on the allow-list");
        assert_eq!(rule_of(check(&p, "crates.io", 0)), "port 0 not allowed");
        assert_eq!(rule_of(check(&p, "bad host", 443)), "invalid host name");
        for s in [
            "static.crates.io",
            "index.crates.io",
            "crates.io",
            "pypi.org",
            "files.pythonhosted.org",
            "proxy.golang.org",
            "sum.golang.org",
            "rubygems.org",
            "index.rubygems.org",
            "registry.yarnpkg.com",
        ] {
            assert!(matches!(check(&p, s, 443), Decision::Resolve { .. }), "{s}");
        }
        assert_eq!(rule_of(check(&Policy::none(), "crates.io", 443)), "not on the allow-list");

        let gh = Policy::source_fetch("github.com").unwrap();
        assert!(matches!(check(&gh, "github.com", 443), Decision::Resolve { .. }));
        assert!(matches!(check(&gh, "codeload.github.com", 443), Decision::Resolve { .. }));
        assert_eq!(rule_of(check(&gh, "crates.io", 443)), "not on the allow-list");
        assert!(Policy::source_fetch("not a host").is_err());
    }

    #[test]
    fn metadata_and_local_names_refused_even_if_allowed() {
        let p = Policy::allowing(&[
            "metadata.google.internal",
            "metadata",
            "*.internal",
            "localhost",
            "instance-data",
        ])
        .unwrap();
        for n in [
            "metadata.google.internal",
            "METADATA.GOOGLE.INTERNAL.",
            "metadata",
            "metadata.goog",
            "instance-data",
            "instance-data.ec2.internal",
        ] {
            assert_eq!(rule_of(check(&p, n, 80)), "metadata host name", "{n}");
        }
        assert_eq!(rule_of(check(&p, "localhost", 80)), "local host name");
        assert_eq!(rule_of(check(&p, "foo.internal", 80)), "local host name");
    }

    #[test]
    fn decisions_for_literals() {
        let open: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let p = Policy::registries().with_open(open);
        assert_eq!(check(&p, "127.0.0.1", 8080), Decision::Connect(open));
        assert_eq!(check(&p, "127.1", 8080), Decision::Connect(open));
        assert_eq!(check(&p, "2130706433", 8080), Decision::Connect(open));
        assert_eq!(rule_of(check(&p, "127.0.0.1", 8081)), "loopback");
        assert_eq!(rule_of(check(&p, "[::ffff:127.0.0.1]", 8080)), "loopback");
        assert_eq!(rule_of(check(&p, "169.254.169.254", 80)), "link-local");
        assert_eq!(rule_of(check(&p, "0xA9FEA9FE", 80)), "link-local");
        assert_eq!(rule_of(check(&p, "10.0.0.5", 443)), "private");
        assert_eq!(rule_of(check(&p, "8.8.8.8", 443)), "IP literal not opened by the operator");
        let v6: SocketAddr = "[::1]:9000".parse().unwrap();
        let p = p.with_open(v6);
        assert_eq!(check(&p, "[::1]", 9000), Decision::Connect(v6));
    }

    #[test]
    fn address_selection() {
        let p = Policy::registries().with_open("127.0.0.1:9".parse().unwrap());
        let sa = |s: &str| -> SocketAddr { s.parse().unwrap() };
        assert_eq!(
            select_address(&p, "evil.example", &[sa("10.0.0.5:443")]),
            Err("private (resolved from evil.example)".into())
        );
        assert_eq!(
            select_address(&p, "e", &[sa("169.254.169.254:80"), sa("[fd00::1]:80")]),
            Err("link-local (resolved from e)".into())
        );
        assert_eq!(
            select_address(&p, "e", &[sa("169.254.169.254:80"), sa("151.101.1.63:80"), sa("1.1.1.1:80")]),
            Ok(sa("151.101.1.63:80"))
        );
        assert_eq!(select_address(&p, "e", &[sa("127.0.0.1:9")]), Ok(sa("127.0.0.1:9")));
        assert_eq!(select_address(&p, "e", &[sa("127.0.0.1:10")]), Err("loopback (resolved from e)".into()));
        assert_eq!(select_address(&p, "e", &[]), Err("no addresses (resolved from e)".into()));
        assert_eq!(
            select_address(&p, "e", &[sa("[::ffff:10.0.0.1]:443")]),
            Err("private (resolved from e)".into())
        );
    }

    proptest::proptest! {
        #[test]
        fn normalize_never_panics(s in "\\PC{0,40}") {
            let _ = normalize_host(&s);
            let _ = check(&Policy::registries(), &s, 443);
        }

        #[test]
        fn dotted_quads_roundtrip(a: u8, b: u8, c: u8, d: u8) {
            let s = format!("{a}.{b}.{c}.{d}");
            proptest::prop_assert_eq!(parse_ip_literal(&s), Some(IpAddr::V4(Ipv4Addr::new(a, b, c, d))));
            let n = u32::from(Ipv4Addr::new(a, b, c, d));
            proptest::prop_assert_eq!(parse_ip_literal(&n.to_string()), Some(IpAddr::V4(Ipv4Addr::new(a, b, c, d))));
            proptest::prop_assert_eq!(parse_ip_literal(&format!("{n:#x}")), Some(IpAddr::V4(Ipv4Addr::new(a, b, c, d))));
            proptest::prop_assert_eq!(parse_ip_literal(&format!("0{n:o}")), Some(IpAddr::V4(Ipv4Addr::new(a, b, c, d))));
        }
    }
}
