//! The proxy's side of HTTP/1.1: parsing one request head from the client
//! and rewriting an absolute-form request for the origin.

use std::fmt;

/// Largest request head the proxy accepts.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most header fields in a request head.
pub const MAX_HEADERS: usize = 100;

/// Why a request head was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("request head larger than {MAX_HEAD_BYTES} bytes")]
    TooLarge,
    #[error("unsupported request target: {0}")]
    BadTarget(String),
}

impl RequestError {
    /// HTTP status line (code and reason) to answer with.
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            RequestError::TooLarge => (431, "Request Header Fields Too Large"),
            _ => (400, "Bad Request"),
        }
    }
}

/// The destination a request asks for, as written by the client (host not
/// yet normalised; the policy does that).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host as in the request; IPv6 literals keep their brackets.
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') && !self.host.starts_with('[') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// One parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `CONNECT host:port`: a blind tunnel.
    Connect { target: Target },
    /// An absolute-form request (`GET http://host/path`), with the head
    /// already rewritten for the origin.
    Forward {
        target: Target,
        method: String,
        /// The head to send to the origin (origin-form request line,
        /// filtered headers, `Host` and `Connection: close`).
        head: Vec<u8>,
    },
}

impl Request {
    pub fn target(&self) -> &Target {
        match self {
            Request::Connect { target } | Request::Forward { target, .. } => target,
        }
    }
}

/// Parse a request head from the start of `buf`.
///
/// `Ok(None)`: incomplete, read more (the caller enforces
/// [`MAX_HEAD_BYTES`]). `Ok(Some((req, n)))`: the head is `buf[..n]`; bytes
/// after it belong to the body or the tunnel.
pub fn parse_request(buf: &[u8]) -> Result<Option<(Request, usize)>, RequestError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let n = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() >= MAX_HEAD_BYTES {
                return Err(RequestError::TooLarge);
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(RequestError::TooLarge),
        Err(e) => return Err(RequestError::Malformed(e.to_string())),
    };
    if n > MAX_HEAD_BYTES {
        return Err(RequestError::TooLarge);
    }
    let method = req.method.ok_or_else(|| RequestError::Malformed("no method".into()))?;
    let path = req.path.ok_or_else(|| RequestError::Malformed("no target".into()))?;
    let version = req.version.ok_or_else(|| RequestError::Malformed("no version".into()))?;

    if method == "CONNECT" {
        let target = parse_authority(path, None)?;
        return Ok(Some((Request::Connect { target }, n)));
    }

    let rest = strip_prefix_ignore_case(path, "http://").ok_or_else(|| {
        RequestError::BadTarget(format!(
            "{path:?} (the proxy takes absolute-form http:// targets and CONNECT)"
        ))
    })?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, mut origin_form) = rest.split_at(end);
    let target = parse_authority(authority, Some(80))?;
    if let Some(i) = origin_form.find('#') {
        origin_form = &origin_form[..i];
    }

    // Header names listed in `Connection` are hop-by-hop too.
    let mut connection_listed: Vec<String> = Vec::new();
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("connection") {
            let v = String::from_utf8_lossy(h.value);
            connection_listed
                .extend(v.split(',').map(|t| t.trim().to_ascii_lowercase()).filter(|t| !t.is_empty()));
        }
    }

    let mut head = Vec::with_capacity(n + 64);
    head.extend_from_slice(method.as_bytes());
    head.push(b' ');
    if origin_form.is_empty() || origin_form.starts_with('?') {
        head.push(b'/');
    }
    head.extend_from_slice(origin_form.as_bytes());
    head.extend_from_slice(format!(" HTTP/1.{version}\r\n").as_bytes());
    head.extend_from_slice(b"Host: ");
    head.extend_from_slice(authority.as_bytes());
    head.extend_from_slice(b"\r\n");
    for h in req.headers.iter() {
        let lower = h.name.to_ascii_lowercase();
        if lower == "host"
            || lower.starts_with("proxy-")
            || HOP_BY_HOP.contains(&lower.as_str())
            || connection_listed.contains(&lower)
        {
            continue;
        }
        head.extend_from_slice(h.name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(h.value);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"Connection: close\r\n\r\n");
    Ok(Some((Request::Forward { target, method: method.to_string(), head }, n)))
}

/// Hop-by-hop headers dropped when forwarding. `Transfer-Encoding` is kept:
/// the body is relayed as sent, so the origin must decode it the same way.
const HOP_BY_HOP: &[&str] = &["connection", "keep-alive", "te", "trailer", "upgrade"];

/// `s` without `prefix` (ASCII, any case). Never slices inside a
/// character: a target such as `http:/Ҽ` from a step is not a prefix
/// match, where slicing by bytes panicked.
fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    match (s.get(..prefix.len()), s.get(prefix.len()..)) {
        (Some(head), Some(rest)) if head.eq_ignore_ascii_case(prefix) => Some(rest),
        _ => None,
    }
}

/// `host:port`, `[v6]:port`, or (with a default port) `host` / `[v6]`.
fn parse_authority(a: &str, default_port: Option<u16>) -> Result<Target, RequestError> {
    let bad = || RequestError::BadTarget(format!("{a:?}"));
    if a.is_empty() || a.contains('@') {
        return Err(bad());
    }
    let (host, port) = if a.starts_with('[') {
        let close = a.find(']').ok_or_else(bad)?;
        let host = &a[..=close];
        match &a[close + 1..] {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':').ok_or_else(bad)?)),
        }
    } else {
        match a.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (a, None),
        }
    };
    if host.is_empty() || host.contains(':') && !host.starts_with('[') {
        return Err(bad());
    }
    let port = match port {
        Some(p) if !p.is_empty() => {
            if !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            p.parse::<u16>().map_err(|_| bad())?
        }
        _ => default_port.ok_or_else(bad)?,
    };
    Ok(Target { host: host.to_string(), port })
}

/// A complete response with a one-line text body, ending the exchange.
pub fn simple_response(code: u16, reason: &str, marker: &str, body_line: &str) -> Vec<u8> {
    let body = format!("{body_line}\n");
    format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\nX-Kiln-Egress: {marker}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forward(raw: &str) -> (Target, String, usize) {
        match parse_request(raw.as_bytes()).unwrap().unwrap() {
            (Request::Forward { target, head, .. }, n) => (target, String::from_utf8(head).unwrap(), n),
            other => panic!("{other:?}"),
        }
    }

    /// Found by the `egress_request` fuzz target: a multi-byte character
    /// where the `http://` prefix is looked for panicked the proxy's
    /// connection task (slicing a `str` inside a character).
    #[test]
    fn bug_a_target_with_a_multibyte_character_panicked_the_parser() {
        for raw in [
            &b"GET http:/\xd2\xbc HTTP/1.1\r\n\r\n"[..],
            b"GET \xd2\xbc HTTP/1.1\r\n\r\n",
            b"GET https:\xf0\x9f\x98\x80/ HTTP/1.1\r\n\r\n",
            b"GET h\xc3\xa9 HTTP/1.1\r\n\r\n",
        ] {
            // Refused (or not a request at all), never a panic.
            assert!(!matches!(parse_request(raw), Ok(Some((Request::Forward { .. }, _)))), "{raw:?}");
        }
        assert_eq!(strip_prefix_ignore_case("HTTP://x", "http://"), Some("x"));
        assert_eq!(strip_prefix_ignore_case("http:/Ҽ", "http://"), None);
        assert_eq!(strip_prefix_ignore_case("ht", "http://"), None);
    }

    #[test]
    fn connect_targets() {
        let raw = b"CONNECT crates.io:443 HTTP/1.1\r\nHost: crates.io:443\r\n\r\nxyz";
        let (r, n) = parse_request(raw).unwrap().unwrap();
        assert_eq!(n, raw.len() - 3);
        assert_eq!(r, Request::Connect { target: Target { host: "crates.io".into(), port: 443 } });
        let (r, _) = parse_request(b"CONNECT [::1]:8443 HTTP/1.1\r\n\r\n").unwrap().unwrap();
        assert_eq!(r.target().to_string(), "[::1]:8443");
        for bad in [
            "CONNECT crates.io HTTP/1.1\r\n\r\n",
            "CONNECT crates.io:99999 HTTP/1.1\r\n\r\n",
            "CONNECT crates.io:x HTTP/1.1\r\n\r\n",
            "CONNECT :443 HTTP/1.1\r\n\r\n",
            "CONNECT u@crates.io:443 HTTP/1.1\r\n\r\n",
            "CONNECT ::1:443 HTTP/1.1\r\n\r\n",
            "CONNECT [::1]x443 HTTP/1.1\r\n\r\n",
        ] {
            assert!(parse_request(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn absolute_form_is_rewritten() {
        let (t, head, _) = forward(
            "GET http://Example.org:8080/a/b?q=1#frag HTTP/1.1\r\n\
             Host: wrong.example\r\nProxy-Authorization: Basic eA==\r\n\
             Proxy-Connection: keep-alive\r\nConnection: keep-alive, X-Secret\r\n\
             X-Secret: 1\r\nKeep-Alive: 300\r\nUpgrade: h2c\r\nTE: trailers\r\n\
             Accept: */*\r\nUser-Agent: t\r\n\r\n",
        );
        assert_eq!(t.host, "Example.org");
        assert_eq!(t.port, 8080);
        assert_eq!(
            head,
            "GET /a/b?q=1 HTTP/1.1\r\nHost: Example.org:8080\r\nAccept: */*\r\n\
             User-Agent: t\r\nConnection: close\r\n\r\n"
        );
        let (t, head, _) = forward("POST HTTP://h.example HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc");
        assert_eq!(t.port, 80);
        assert!(head.starts_with("POST / HTTP/1.0\r\nHost: h.example\r\n"), "{head}");
        assert!(head.contains("Content-Length: 3\r\n"));
        let (_, head, _) = forward("GET http://h.example?x=1 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(head.starts_with("GET /?x=1 HTTP/1.1\r\n"), "{head}");
        assert!(head.contains("Transfer-Encoding: chunked\r\n"));
        let (t, _, _) = forward("GET http://[::1]:81/ HTTP/1.1\r\n\r\n");
        assert_eq!((t.host.as_str(), t.port), ("[::1]", 81));
        let (t, _, _) = forward("GET http://h.example:/ HTTP/1.1\r\n\r\n");
        assert_eq!(t.port, 80);
    }

    #[test]
    fn rejected_targets() {
        for bad in [
            "GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET https://crates.io/ HTTP/1.1\r\n\r\n",
            "GET http://allowed.example@evil.example/ HTTP/1.1\r\n\r\n",
            "GET http:/// HTTP/1.1\r\n\r\n",
            "GET ftp://x/ HTTP/1.1\r\n\r\n",
            "GET http://x:y/ HTTP/1.1\r\n\r\n",
        ] {
            let e = parse_request(bad.as_bytes()).unwrap_err();
            assert_eq!(e.status().0, 400, "{bad:?}");
        }
        assert!(parse_request(b"GET http://x/ HTTP/1.1\r\nA: b\r\n").unwrap().is_none());
        assert!(parse_request(b"\x16\x03\x01\x02\x00").is_err());
        let big = format!("GET http://x/ HTTP/1.1\r\nA: {}\r\n", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(parse_request(big.as_bytes()).unwrap_err(), RequestError::TooLarge);
        let many: String = (0..MAX_HEADERS + 1).map(|i| format!("H{i}: v\r\n")).collect();
        let req = format!("GET http://x/ HTTP/1.1\r\n{many}\r\n");
        assert_eq!(parse_request(req.as_bytes()).unwrap_err().status().0, 431);
    }

    #[test]
    fn response_shape() {
        let r =
            String::from_utf8(simple_response(403, "Forbidden", "blocked", "kiln egress: blocked a:1 (x)"))
                .unwrap();
        assert!(r.starts_with("HTTP/1.1 403 Forbidden\r\n"));
        assert!(r.contains("X-Kiln-Egress: blocked\r\n"));
        assert!(r.ends_with("\r\n\r\nkiln egress: blocked a:1 (x)\n"));
    }

    proptest::proptest! {
        #[test]
        fn parser_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = parse_request(&bytes);
        }

        #[test]
        fn parser_never_panics_on_requestish(
            method in "(GET|CONNECT|POST|[A-Z]{1,8})",
            target in "[ -~]{0,60}",
            hdrs in proptest::collection::vec(("[!-9;-~]{1,12}", "[ -~]{0,30}"), 0..6),
        ) {
            let mut s = format!("{method} {target} HTTP/1.1\r\n");
            for (k, v) in hdrs { s.push_str(&format!("{k}: {v}\r\n")); }
            s.push_str("\r\n");
            if let Ok(Some((Request::Forward { head, .. }, _))) = parse_request(s.as_bytes()) {
                // The rewritten head must itself be a complete, parseable head.
                let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS + 2];
                let mut r = httparse::Request::new(&mut h);
                proptest::prop_assert!(matches!(r.parse(&head), Ok(httparse::Status::Complete(_))));
            }
        }
    }
}
