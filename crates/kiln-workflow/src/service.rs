//! `services:` of a job: the service containers GitHub starts beside a job
//! (a database for the tests, most often). kiln runs each as a sandbox on
//! its image for as long as the job runs; the job reaches it by its name
//! and, for a mapped port, on `localhost`.
//!
//! `options:` are docker's flags. The health check ones (`--health-cmd` and
//! its timings) mean something here and are kept; `-e`/`--env` and
//! `--entrypoint` too. Any other flag refuses the job by name: it asks for
//! something of docker's that a kiln sandbox does not have.

use crate::model::{HealthCheck, Refusal, ServicePort, ServiceSpec};
use crate::parse::Cx;
use crate::yaml::{Node, NodeKind};
use crate::Template;
use std::time::Duration;

const SERVICE_KEYS: &[&str] =
    &["image", "env", "ports", "options", "credentials", "volumes", "entrypoint", "command"];

/// Parses `services:`; what the job cannot have goes to `refusals`.
pub(crate) fn parse_services(cx: &mut Cx<'_>, node: &Node, refusals: &mut Vec<Refusal>) -> Vec<ServiceSpec> {
    let mut out = Vec::new();
    let Some(pairs) = cx.map(node, "`services`") else {
        return out;
    };
    for (k, v) in pairs {
        let Some(id) = cx.text(k, "a service name") else { continue };
        if !valid_id(&id) {
            cx.err(
                k.loc,
                format!("invalid service name `{id}` (letters, digits, `-` and `_`, starting with a letter or `_`)"),
            );
            continue;
        }
        if out.iter().any(|s: &ServiceSpec| s.id == id) {
            cx.err(k.loc, format!("service `{id}` is defined twice"));
            continue;
        }
        let mut svc = ServiceSpec {
            id: id.clone(),
            location: k.loc,
            image: Template::literal(""),
            env: Vec::new(),
            ports: Vec::new(),
            entrypoint: None,
            command: None,
            health: None,
        };
        let fields: &[(Node, Node)] = match &v.kind {
            // `services: {redis: redis:7}`: the image alone.
            NodeKind::Scalar { .. } => {
                if let Some(t) = cx.template(v, &format!("service `{id}`")) {
                    svc.image = t;
                }
                out.push(svc);
                continue;
            }
            _ => match cx.map(v, &format!("service `{id}`")) {
                Some(f) => f,
                None => continue,
            },
        };
        let mut image = None;
        for (fk, fv) in fields {
            let Some(name) = cx.text(fk, "a key") else { continue };
            if !SERVICE_KEYS.contains(&name.as_str()) {
                cx.err(
                    fk.loc,
                    format!(
                        "unknown key `{name}` in service `{id}` (expected one of: {})",
                        SERVICE_KEYS.join(", ")
                    ),
                );
                continue;
            }
            match name.as_str() {
                "image" => image = cx.template(fv, &format!("`services.{id}.image`")),
                "env" => svc.env = cx.env(fv, &format!("in service `{id}`")),
                "ports" => ports(cx, &id, fv, &mut svc.ports, refusals),
                "entrypoint" => svc.entrypoint = cx.template(fv, &format!("`services.{id}.entrypoint`")),
                "command" => svc.command = cx.template(fv, &format!("`services.{id}.command`")),
                "options" => {
                    let Some(text) = cx.text(fv, &format!("`services.{id}.options`")) else { continue };
                    if let Err(reason) = options(&text, &mut svc) {
                        refusals.push(Refusal { location: fv.loc, reason: format!("service `{id}`: {reason}") });
                    }
                }
                // Images are never pulled while a job runs (they are built,
                // imported or pulled beforehand), so a registry login has
                // nothing to do.
                "credentials" => {}
                "volumes" if !fv.is_null() => refusals.push(Refusal {
                    location: fk.loc,
                    reason: format!(
                        "`services.{id}.volumes` is not supported: a service runs in kiln's sandbox, not with host volumes"
                    ),
                }),
                _ => {}
            }
        }
        match image {
            Some(t) => svc.image = t,
            None => {
                cx.err(k.loc, format!("service `{id}` has no `image`"));
                continue;
            }
        }
        out.push(svc);
    }
    out
}

fn valid_id(id: &str) -> bool {
    let mut chars = id.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && id.len() <= 63
}

fn ports(cx: &mut Cx<'_>, id: &str, node: &Node, out: &mut Vec<ServicePort>, refusals: &mut Vec<Refusal>) {
    let items: Vec<&Node> = match &node.kind {
        NodeKind::Seq(items) => items.iter().collect(),
        _ if node.is_null() => Vec::new(),
        _ => {
            cx.err(node.loc, format!("`services.{id}.ports` must be a list of ports"));
            return;
        }
    };
    for item in items {
        let Some(text) = cx.text(item, &format!("a port of service `{id}`")) else { continue };
        match parse_port(&text) {
            Ok(Some(p)) => out.push(p),
            Ok(None) => refusals.push(Refusal {
                location: item.loc,
                reason: format!("service `{id}`: port `{text}`: only TCP ports are supported"),
            }),
            Err(e) => cx.err(item.loc, format!("service `{id}`: port `{text}`: {e}")),
        }
    }
}

/// docker's `[HOST_IP:][HOST_PORT:]PORT[/PROTO]`; `Ok(None)` for a UDP port.
pub(crate) fn parse_port(text: &str) -> Result<Option<ServicePort>, String> {
    let text = text.trim();
    if text.contains("${{") {
        return Err("expressions are not supported in ports".into());
    }
    let (spec, proto) = match text.split_once('/') {
        Some((s, p)) => (s, p),
        None => (text, "tcp"),
    };
    match proto {
        "tcp" => {}
        "udp" | "sctp" => return Ok(None),
        other => return Err(format!("unknown protocol `{other}`")),
    }
    let num = |s: &str| -> Result<u16, String> {
        match s.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("`{s}` is not a port number (1-65535)")),
        }
    };
    let parts: Vec<&str> = spec.split(':').collect();
    match parts.as_slice() {
        [c] => Ok(Some(ServicePort { container: num(c)?, host: None })),
        [h, c] => Ok(Some(ServicePort { container: num(c)?, host: Some(num(h)?) })),
        // The host address is the job's own loopback here, whatever it says.
        [_ip, h, c] if !h.is_empty() => Ok(Some(ServicePort { container: num(c)?, host: Some(num(h)?) })),
        [_ip, _, c] => Ok(Some(ServicePort { container: num(c)?, host: None })),
        _ => Err("expected `PORT`, `HOST_PORT:PORT` or `IP:HOST_PORT:PORT`".into()),
    }
}

/// The docker flags of `options:` kiln keeps; an error names the first one
/// it does not.
pub(crate) fn options(text: &str, svc: &mut ServiceSpec) -> Result<(), String> {
    let words = shlex::split(text).ok_or_else(|| format!("options `{text}`: unbalanced quotes"))?;
    let mut it = words.into_iter();
    let mut health: Option<HealthCheck> = None;
    let mut timings: Vec<(String, String)> = Vec::new();
    while let Some(word) = it.next() {
        let (flag, inline) = match word.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (word.clone(), None),
        };
        let value = |it: &mut std::vec::IntoIter<String>| -> Result<String, String> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => it.next().ok_or_else(|| format!("option `{flag}` needs a value")),
            }
        };
        match flag.as_str() {
            "--health-cmd" => health = Some(HealthCheck::new(value(&mut it)?)),
            "--health-interval" | "--health-timeout" | "--health-retries" | "--health-start-period" => {
                let v = value(&mut it)?;
                timings.push((flag.clone(), v));
            }
            // No health check: as if there were none.
            "--no-healthcheck" => health = None,
            "-e" | "--env" => {
                let v = value(&mut it)?;
                let (k, val) = v.split_once('=').unwrap_or((v.as_str(), ""));
                svc.env.push((k.to_string(), Template::literal(val)));
            }
            "--entrypoint" => svc.entrypoint = Some(Template::literal(&value(&mut it)?)),
            f if f.starts_with('-') => {
                return Err(format!(
                    "option `{f}` is not supported (a service runs in kiln's sandbox, not with docker's flags; kiln keeps --health-*, -e/--env and --entrypoint)"
                ))
            }
            other => return Err(format!("options: unexpected `{other}`")),
        }
    }
    if let Some(h) = health.as_mut() {
        for (flag, v) in timings {
            match flag.as_str() {
                "--health-retries" => {
                    h.retries = v.parse().map_err(|_| format!("`--health-retries {v}` is not a number"))?
                }
                _ => {
                    let d = parse_duration(&v).ok_or_else(|| format!("`{flag} {v}` is not a duration"))?;
                    match flag.as_str() {
                        "--health-interval" => h.interval = d,
                        "--health-timeout" => h.timeout = d,
                        _ => h.start_period = d,
                    }
                }
            }
        }
    }
    svc.health = health;
    Ok(())
}

/// Go's duration syntax, as docker reads it: `10s`, `1m30s`, `500ms`.
pub(crate) fn parse_duration(text: &str) -> Option<Duration> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let n: f64 = rest[..end].parse().ok()?;
        rest = &rest[end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += n * scale;
        rest = &rest[unit_end..];
    }
    (total.is_finite() && total < 86400.0 * 365.0).then(|| Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc() -> ServiceSpec {
        ServiceSpec {
            id: "pg".into(),
            location: Default::default(),
            image: Template::literal("postgres"),
            env: Vec::new(),
            ports: Vec::new(),
            entrypoint: None,
            command: None,
            health: None,
        }
    }

    #[test]
    fn ports_read_as_docker_reads_them() {
        assert_eq!(parse_port("5432").unwrap(), Some(ServicePort { container: 5432, host: None }));
        assert_eq!(
            parse_port("15432:5432").unwrap(),
            Some(ServicePort { container: 5432, host: Some(15432) })
        );
        assert_eq!(parse_port("6379/tcp").unwrap(), Some(ServicePort { container: 6379, host: None }));
        assert_eq!(
            parse_port("127.0.0.1:8080:80").unwrap(),
            Some(ServicePort { container: 80, host: Some(8080) })
        );
        assert_eq!(parse_port("53/udp").unwrap(), None);
        for bad in ["0", "70000", "x:1", "1:2:3:4", "${{ env.P }}", "80/quic"] {
            assert!(parse_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn health_options_are_kept_and_other_flags_named() {
        let mut s = svc();
        options(
            "--health-cmd \"pg_isready -U postgres\" --health-interval 10s --health-timeout=5s --health-retries 5 -e A=b",
            &mut s,
        )
        .unwrap();
        let h = s.health.clone().unwrap();
        assert_eq!(h.command, "pg_isready -U postgres");
        assert_eq!(h.interval, Duration::from_secs(10));
        assert_eq!(h.timeout, Duration::from_secs(5));
        assert_eq!(h.retries, 5);
        assert_eq!(s.env.len(), 1);
        let err = options("--health-cmd x --privileged", &mut svc()).unwrap_err();
        assert!(err.contains("`--privileged`"), "{err}");
        assert!(options("--health-cmd 'x", &mut svc()).unwrap_err().contains("quotes"));
        assert!(options("--health-cmd x --health-interval soon", &mut svc()).is_err());
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        for bad in ["", "10", "s", "10x", "1e9h"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }
}
