//! The deployment webhook: a signed JSON POST, retried with backoff.
//!
//! Each attempt sends the same body and the same `Idempotency-Key` (receivers deduplicate on
//! it), with these headers:
//!
//! * `Content-Type: application/json`
//! * `Idempotency-Key: <key>`
//! * `X-Kiln-Timestamp: <unix seconds>` — when this attempt was signed
//! * `X-Kiln-Signature: sha256=<hex>` — HMAC-SHA256 with the shared key over exactly
//!   `<timestamp> "." <body bytes>`: the decimal timestamp as sent in `X-Kiln-Timestamp`, one
//!   `.` byte, then the body exactly as sent.
//!
//! Signing the timestamp lets a receiver refuse replays: verify with [`verify_signature`], then
//! reject timestamps more than a few minutes old, then deduplicate on the idempotency key.
//!
//! Retries: connection errors, timeouts, `408`, `429` and `5xx` are retried; other statuses
//! (`3xx`, `4xx`) are final, redirects are not followed. The delay before attempt `n + 1` is
//! `base_delay * 2^(n-1)` capped at `max_delay`; a `Retry-After: <seconds>` answer lengthens it
//! (still capped). There is no jitter: one webhook per build does not make a thundering herd.

use std::fmt;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use serde::{Serialize, Serializer};
use sha2::Sha256;

use kiln_build::BuildError;

type HmacSha256 = Hmac<Sha256>;

/// How often and how patiently to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included (at least 1 is made).
    pub attempts: u32,
    /// Delay before the second attempt; doubles after each failure.
    pub base_delay: Duration,
    /// Longest delay between two attempts.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// 6 attempts over about a minute.
    fn default() -> Self {
        RetryPolicy { attempts: 6, base_delay: Duration::from_secs(2), max_delay: Duration::from_secs(30) }
    }
}

/// One POST.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attempt {
    /// The HTTP status, when a response came back.
    pub status: Option<u16>,
    /// What went wrong, when no (acceptable) response came back.
    pub error: Option<String>,
    /// When the attempt started (serialised as milliseconds since the Unix epoch).
    #[serde(serialize_with = "unix_ms")]
    pub at: SystemTime,
}

fn unix_ms<S: Serializer>(at: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64))
}

/// The outcome of [`Notifier::deliver`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Delivery {
    /// A `2xx` answer came back.
    pub delivered: bool,
    /// Every attempt, in order.
    pub attempts: Vec<Attempt>,
    /// Stopped because the delivery was handed to someone else (see
    /// [`Notifier::deliver_while`]): theirs is the one to record.
    pub handed_over: bool,
}

/// How often [`Notifier::deliver_while`] asks whether to go on while it
/// waits between attempts.
pub const KEEP_EVERY: Duration = Duration::from_millis(500);

/// Sends signed webhooks to one URL.
pub struct Notifier {
    url: String,
    key: Vec<u8>,
    agent: ureq::Agent,
}

impl fmt::Debug for Notifier {
    /// The key never prints, and neither does the URL's path or query (they may hold a token).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let origin = url::Url::parse(&self.url)
            .map(|u| format!("{}://{}", u.scheme(), u.host_str().unwrap_or("")))
            .unwrap_or_default();
        f.debug_struct("Notifier").field("origin", &origin).field("key", &"***").finish()
    }
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(timeout))
        .user_agent(format!("kiln/{}", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

impl Notifier {
    /// A notifier for `url` (`http://` or `https://`) signing with `key` (32 random bytes or
    /// more is the recommendation). Each attempt times out after 30 s.
    pub fn new(url: &str, key: Vec<u8>) -> Result<Notifier, BuildError> {
        let parsed = url::Url::parse(url)
            .map_err(|e| BuildError::WebhookUrl { reason: format!("not a valid URL ({e})") })?;
        match parsed.scheme() {
            "http" => {}
            "https" if cfg!(feature = "https") => {}
            "https" => {
                return Err(BuildError::WebhookUrl {
                    reason: "https needs kiln-build's `https` feature".into(),
                })
            }
            other => {
                return Err(BuildError::WebhookUrl { reason: format!("scheme `{other}:` is not http(s)") })
            }
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(BuildError::WebhookUrl { reason: "no host".into() });
        }
        if key.is_empty() {
            return Err(BuildError::WebhookUrl { reason: "an empty signing key signs nothing".into() });
        }
        Ok(Notifier { url: url.to_string(), key, agent: agent(Duration::from_secs(30)) })
    }

    /// Time limit of one attempt (connect, send, answer).
    pub fn with_timeout(mut self, timeout: Duration) -> Notifier {
        self.agent = agent(timeout);
        self
    }

    /// POST `payload` until it is accepted, a final answer comes back, or the attempts run out.
    /// Blocking: call it from a blocking-friendly thread.
    pub fn deliver(
        &self,
        payload: &serde_json::Value,
        idempotency_key: &str,
        policy: RetryPolicy,
    ) -> Delivery {
        self.deliver_while(payload, idempotency_key, policy, &mut || true)
    }

    /// [`Notifier::deliver`], asking `keep` before each attempt and at
    /// least every [`KEEP_EVERY`] while it waits between attempts: once
    /// it says no (the delivery was handed to someone else), nothing more
    /// is sent and the delivery ends with `handed_over` set.
    pub fn deliver_while(
        &self,
        payload: &serde_json::Value,
        idempotency_key: &str,
        policy: RetryPolicy,
        keep: &mut dyn FnMut() -> bool,
    ) -> Delivery {
        let body = serde_json::to_vec(payload).unwrap_or_default();
        let mut attempts = Vec::new();
        if idempotency_key.is_empty() || !idempotency_key.bytes().all(|b| b.is_ascii_graphic()) {
            attempts.push(Attempt {
                status: None,
                error: Some("the idempotency key must be non-empty visible ASCII".into()),
                at: SystemTime::now(),
            });
            return Delivery { delivered: false, attempts, handed_over: false };
        }
        let mut delay = policy.base_delay;
        for n in 1..=policy.attempts.max(1) {
            if !keep() {
                return Delivery { delivered: false, attempts, handed_over: true };
            }
            let at = SystemTime::now();
            let timestamp = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()).to_string();
            let result = self
                .agent
                .post(&self.url)
                .header("Content-Type", "application/json")
                .header("Idempotency-Key", idempotency_key)
                .header("X-Kiln-Timestamp", &timestamp)
                .header("X-Kiln-Signature", sign(&self.key, &timestamp, &body))
                .send(&body[..]);
            let (retry, retry_after) = match result {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let retry_after = response
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    let ok = (200..300).contains(&status);
                    attempts.push(Attempt {
                        status: Some(status),
                        error: (!ok).then(|| format!("answered {status}")),
                        at,
                    });
                    if ok {
                        return Delivery { delivered: true, attempts, handed_over: false };
                    }
                    (status == 408 || status == 429 || status >= 500, retry_after)
                }
                Err(e) => {
                    attempts.push(Attempt { status: None, error: Some(e.to_string()), at });
                    (true, None)
                }
            };
            if !retry || n == policy.attempts.max(1) {
                break;
            }
            let wait = delay.max(retry_after.unwrap_or_default()).min(policy.max_delay);
            let until = std::time::Instant::now() + wait;
            loop {
                let left = until.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                thread::sleep(left.min(KEEP_EVERY));
                if !keep() {
                    return Delivery { delivered: false, attempts, handed_over: true };
                }
            }
            delay = delay.saturating_mul(2).min(policy.max_delay);
        }
        Delivery { delivered: false, attempts, handed_over: false }
    }
}

fn mac(key: &[u8], timestamp: &str, body: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The webhook HMAC key in `path` (hex), made on first use: 32 random
/// bytes in a file only its owner reads.
pub fn load_or_create_key(path: &std::path::Path) -> Result<Vec<u8>, String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Ok(text) = std::fs::read_to_string(path) {
        return hex::decode(text.trim()).map_err(|_| format!("{}: not a hex key", path.display()));
    }
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|e| format!("random key: {e}"))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("creating {}: {e}", path.display()))?;
    writeln!(f, "{}", hex::encode(key)).map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(key.to_vec())
}

/// The `X-Kiln-Signature` value for a body sent at `timestamp`: `sha256=<hex>`.
pub fn sign(key: &[u8], timestamp: &str, body: &[u8]) -> String {
    format!("sha256={}", hex::encode(mac(key, timestamp, body).finalize().into_bytes()))
}

/// For receivers: whether `header` (`X-Kiln-Signature`) is the signature of `body` sent with
/// `timestamp` (`X-Kiln-Timestamp`). The comparison takes the same time wherever the
/// signatures differ. Check the timestamp's age separately.
pub fn verify_signature(key: &[u8], timestamp: &str, body: &[u8], header: &str) -> bool {
    let Some(hex_sig) = header.trim().strip_prefix("sha256=") else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    mac(key, timestamp, body).verify_slice(&sig).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::mpsc;

    #[derive(Debug)]
    struct Received {
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Received {
        fn header(&self, name: &str) -> &str {
            self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map_or("", |(_, v)| v.as_str())
        }
    }

    /// A receiver on 127.0.0.1 answering each request with the next status of `script`
    /// (the last one repeats), recording what it received.
    fn receiver(script: Vec<u16>) -> (String, mpsc::Receiver<Received>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hooks/deploy?token=abc", listener.local_addr().unwrap());
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for (i, conn) in listener.incoming().enumerate() {
                let Ok(conn) = conn else { return };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let mut headers = Vec::new();
                loop {
                    line.clear();
                    reader.read_line(&mut line).unwrap();
                    let l = line.trim_end();
                    if l.is_empty() {
                        break;
                    }
                    let (k, v) = l.split_once(':').unwrap();
                    headers.push((k.trim().to_string(), v.trim().to_string()));
                }
                let len: usize = headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .map_or(0, |(_, v)| v.parse().unwrap());
                let mut body = vec![0; len];
                reader.read_exact(&mut body).unwrap();
                let status = script[i.min(script.len() - 1)];
                let mut conn = conn;
                write!(conn, "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .unwrap();
                conn.flush().unwrap();
                if tx.send(Received { headers, body }).is_err() {
                    return;
                }
            }
        });
        (url, rx)
    }

    fn quick(attempts: u32) -> RetryPolicy {
        RetryPolicy { attempts, base_delay: Duration::from_millis(1), max_delay: Duration::from_millis(5) }
    }

    #[test]
    fn a_delivery_handed_over_sends_nothing_more() {
        let (url, rx) = receiver(vec![503, 503, 200]);
        let n = Notifier::new(&url, b"0123456789abcdef0123456789abcdef".to_vec()).unwrap();
        let policy = RetryPolicy {
            attempts: 3,
            base_delay: Duration::from_millis(1200),
            max_delay: Duration::from_secs(2),
        };
        let mut asked = 0;
        // Yes before the first attempt, no at the first check while waiting.
        let d = n.deliver_while(&serde_json::json!({}), "b:1", policy, &mut || {
            asked += 1;
            asked == 1
        });
        assert!(d.handed_over && !d.delivered, "{d:?}");
        assert_eq!(d.attempts.len(), 1);
        assert_eq!(asked, 2, "asked while waiting, not only before the next attempt");
        assert_eq!(rx.try_iter().count(), 1);
    }

    #[test]
    fn retries_5xx_until_accepted_with_one_key_and_valid_signatures() {
        let (url, rx) = receiver(vec![503, 503, 200]);
        let key = b"0123456789abcdef0123456789abcdef".to_vec();
        let notifier = Notifier::new(&url, key.clone()).unwrap();
        let payload = serde_json::json!({"build": "b-42", "artifact": "sha256:abc", "status": "succeeded"});
        let delivery = notifier.deliver(&payload, "build-b-42-deploy", quick(5));
        assert!(delivery.delivered);
        let statuses: Vec<Option<u16>> = delivery.attempts.iter().map(|a| a.status).collect();
        assert_eq!(statuses, [Some(503), Some(503), Some(200)]);
        assert_eq!(delivery.attempts[2].error, None);

        let got: Vec<Received> = rx.iter().take(3).collect();
        for r in &got {
            assert_eq!(r.header("Idempotency-Key"), "build-b-42-deploy");
            assert_eq!(r.header("Content-Type"), "application/json");
            let ts = r.header("X-Kiln-Timestamp");
            assert!(ts.parse::<u64>().is_ok(), "{ts}");
            assert!(verify_signature(&key, ts, &r.body, r.header("X-Kiln-Signature")));
            assert!(!verify_signature(b"another key", ts, &r.body, r.header("X-Kiln-Signature")));
            assert_eq!(serde_json::from_slice::<serde_json::Value>(&r.body).unwrap(), payload);
        }
        assert!(got.iter().all(|r| r.body == got[0].body));
    }

    #[test]
    fn a_4xx_answer_is_final() {
        let (url, rx) = receiver(vec![400]);
        let notifier = Notifier::new(&url, b"k".to_vec()).unwrap();
        let delivery = notifier.deliver(&serde_json::json!({"x": 1}), "k1", quick(5));
        assert!(!delivery.delivered);
        assert_eq!(delivery.attempts.len(), 1);
        assert_eq!(delivery.attempts[0].status, Some(400));
        assert_eq!(rx.iter().take(1).count(), 1);
    }

    #[test]
    fn retries_429_408_and_5xx_until_attempts_run_out() {
        let (url, _rx) = receiver(vec![429, 408, 500]);
        let delivery =
            Notifier::new(&url, b"k".to_vec()).unwrap().deliver(&serde_json::json!({}), "k2", quick(4));
        assert!(!delivery.delivered);
        let statuses: Vec<Option<u16>> = delivery.attempts.iter().map(|a| a.status).collect();
        assert_eq!(statuses, [Some(429), Some(408), Some(500), Some(500)]);
    }

    #[test]
    fn connection_errors_are_retried() {
        // A port that was bound and released: nothing listens there.
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let notifier = Notifier::new(&format!("http://127.0.0.1:{port}/"), b"k".to_vec()).unwrap();
        let delivery = notifier.deliver(&serde_json::json!({}), "k3", quick(3));
        assert!(!delivery.delivered);
        assert_eq!(delivery.attempts.len(), 3);
        assert!(delivery.attempts.iter().all(|a| a.status.is_none() && a.error.is_some()));
        let json = serde_json::to_value(&delivery).unwrap();
        assert!(json["attempts"][0]["at"].as_u64().unwrap() > 0);
    }

    #[test]
    fn signatures() {
        let sig = sign(b"key", "1700000000", b"{\"a\":1}");
        assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64);
        assert!(verify_signature(b"key", "1700000000", b"{\"a\":1}", &sig));
        // The timestamp and every body byte are signed.
        assert!(!verify_signature(b"key", "1700000001", b"{\"a\":1}", &sig));
        assert!(!verify_signature(b"key", "1700000000", b"{\"a\":2}", &sig));
        for bad in ["", "sha256=", "sha256=zz", "md5=00", &sig[7..], &sig[..sig.len() - 2]] {
            assert!(!verify_signature(b"key", "1700000000", b"{\"a\":1}", bad), "{bad}");
        }
        // Exactly `<timestamp>.<body>` is signed (expected value computed independently).
        assert_eq!(sig, "sha256=a438e398bfafc57e4396bb7fc2304422f0f768e965d073ca313cb52e22e6ad03");
    }

    #[test]
    fn bad_urls_keys_and_idempotency_keys() {
        assert!(Notifier::new("ftp://x/", b"k".to_vec()).is_err());
        assert!(Notifier::new("not a url", b"k".to_vec()).is_err());
        assert!(Notifier::new("http://x/", Vec::new()).is_err());
        let n = Notifier::new("http://127.0.0.1:9/secret-path?token=t", b"super-secret".to_vec()).unwrap();
        let debug = format!("{n:?}");
        assert!(!debug.contains("secret") && !debug.contains("token"), "{debug}");
        let d = n.deliver(&serde_json::json!({}), "bad key\n", quick(3));
        assert!(!d.delivered && d.attempts.len() == 1);
    }
}
