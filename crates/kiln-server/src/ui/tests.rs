use axum::http::{header, HeaderMap, HeaderValue};

use super::*;

fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(k.clone(), HeaderValue::from_str(v).unwrap());
    }
    h
}

#[test]
fn the_token_cookie_is_found_among_others() {
    let h = headers(&[(header::COOKIE, "a=1; kiln_token=kiln_abc ; b=2")]);
    assert_eq!(cookie(&h, COOKIE), Some("kiln_abc"));
    let h = headers(&[(header::COOKIE, "a=1"), (header::COOKIE, "kiln_token=x")]);
    assert_eq!(cookie(&h, COOKIE), Some("x"));
    assert_eq!(cookie(&headers(&[(header::COOKIE, "kiln_token=")]), COOKIE), None);
    assert_eq!(cookie(&headers(&[(header::COOKIE, "xkiln_token=y")]), COOKIE), None);
}

#[test]
fn a_post_must_come_from_this_origin() {
    let h = |o: Option<&str>| {
        let mut v = vec![(header::HOST, "127.0.0.1:8080")];
        if let Some(o) = o {
            v.push((header::ORIGIN, o));
        }
        headers(&v)
    };
    assert!(same_origin(&h(Some("http://127.0.0.1:8080"))));
    assert!(same_origin(&h(Some("https://127.0.0.1:8080"))));
    assert!(!same_origin(&h(Some("http://evil.example"))));
    assert!(!same_origin(&h(Some("http://127.0.0.1:8081"))));
    assert!(!same_origin(&h(Some("null"))));
    assert!(!same_origin(&h(None)), "no Origin: refused");
}

#[test]
fn the_csp_allows_nothing_inline_and_no_framing() {
    assert!(CSP.contains("default-src 'self'") && CSP.contains("frame-ancestors 'none'"));
    assert!(!CSP.contains("unsafe-inline") && !CSP.contains("unsafe-eval"));
}

#[test]
fn step_anchors_are_safe_ids() {
    let a = pages::step_anchor("<job>", "\"step\" onload=x");
    assert!(a.starts_with("step-") && a[5..].bytes().all(|b| b.is_ascii_hexdigit()), "{a}");
    assert_ne!(a, pages::step_anchor("<job>", "other"));
}

#[test]
fn percentiles_by_nearest_rank() {
    let mut v = vec![5.0, 1.0, 3.0, 2.0, 4.0];
    assert_eq!(pages::percentile(&mut v, 50.0), Some(3.0));
    assert_eq!(pages::percentile(&mut v, 99.0), Some(5.0));
    assert_eq!(pages::percentile(&mut [], 50.0), None);
}
