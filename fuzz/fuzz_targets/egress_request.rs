//! The egress proxy's request-head parser (`kiln_egress::http::parse_request`):
//! the first bytes every sandboxed step sends to the host.
//!
//! Invariants: never panics; the head length is within the input and the
//! size cap; the head alone parses the same as the head with anything after
//! it; a forwarded head is a well-formed origin-form HTTP/1.x request that
//! ends `Connection: close` and carries no proxy or hop-by-hop header; a
//! prefix of an incomplete head is incomplete too.
#![no_main]

use kiln_egress::http::{parse_request, Request, MAX_HEAD_BYTES};
use kiln_egress::{check, normalize_host, Policy};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let r = parse_request(data);
    let Ok(Some((req, n))) = r else {
        if let Err(e) = &r {
            let (code, _) = e.status();
            assert!(code == 400 || code == 431);
        }
        return;
    };
    assert!(n <= data.len() && n <= MAX_HEAD_BYTES, "head length {n} out of range");
    assert_eq!(parse_request(&data[..n]), Ok(Some((req.clone(), n))), "the head alone parses differently");

    let target = req.target();
    assert!(!target.host.is_empty());
    let _ = target.to_string();
    // The policy sees the host next: it must not panic on anything the parser accepts.
    let _ = normalize_host(&target.host);
    let _ = check(&Policy::registries(), &target.host, target.port);

    if let Request::Forward { head, method, .. } = &req {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut out = httparse::Request::new(&mut headers);
        match out.parse(head) {
            Ok(httparse::Status::Complete(m)) => assert_eq!(m, head.len(), "bytes after the forwarded head"),
            other => panic!("forwarded head does not parse: {other:?}\n{}", String::from_utf8_lossy(head)),
        }
        assert_eq!(out.method, Some(method.as_str()));
        let path = out.path.unwrap_or_default();
        assert!(path.starts_with('/'), "forwarded target is not origin-form: {path:?}");
        let names: Vec<String> = out.headers.iter().map(|h| h.name.to_ascii_lowercase()).collect();
        assert_eq!(names.iter().filter(|n| *n == "host").count(), 1, "not exactly one Host");
        assert_eq!(names.last().map(String::as_str), Some("connection"));
        for name in &names[..names.len() - 1] {
            assert!(
                !name.starts_with("proxy-")
                    && !["connection", "keep-alive", "te", "trailer", "upgrade"].contains(&name.as_str()),
                "hop-by-hop header `{name}` forwarded"
            );
        }
    }
});
