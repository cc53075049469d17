//! Timestamps and build ids.

use std::time::{SystemTime, UNIX_EPOCH};

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Now as RFC 3339 with milliseconds, UTC (`2026-11-23T14:45:12.345Z`).
pub fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}

/// A system time as RFC 3339 with milliseconds, UTC.
pub fn rfc3339(t: SystemTime) -> String {
    let dt = OffsetDateTime::from(t);
    let ms = dt.millisecond();
    // Every job's start and end is stamped: written digit by digit into
    // one allocation (`format!` padding costs more than the rest), for
    // the years RFC 3339 has (all of them, in practice).
    if (0..=9999).contains(&dt.year()) {
        let mut s = String::with_capacity(24);
        let mut digits = |n: u32, width: u32, sep: char| {
            for p in (0..width).rev() {
                s.push(char::from(b'0' + (n / 10u32.pow(p) % 10) as u8));
            }
            s.push(sep);
        };
        digits(dt.year() as u32, 4, '-');
        digits(u8::from(dt.month()).into(), 2, '-');
        digits(dt.day().into(), 2, 'T');
        digits(dt.hour().into(), 2, ':');
        digits(dt.minute().into(), 2, ':');
        digits(dt.second().into(), 2, '.');
        digits(ms.into(), 3, 'Z');
        return s;
    }
    let dt = dt.replace_nanosecond(0).unwrap_or(dt);
    let base = dt.format(&Rfc3339).unwrap_or_default();
    // `base` ends in `Z` and has no fraction: insert the milliseconds.
    match base.strip_suffix('Z') {
        Some(b) => format!("{b}.{ms:03}Z"),
        None => base,
    }
}

/// Reads an RFC 3339 timestamp (as [`rfc3339`] writes them).
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok().map(SystemTime::from)
}

/// A new build id: sortable by time and readable (`20261123T144512Z-3fa9c1`).
pub fn new_build_id() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let dt = OffsetDateTime::from(SystemTime::now());
    let rand = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z-{}{:02}",
        dt.year(),
        u8::from(dt.month()),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second(),
        &rand[..4],
        now.subsec_millis() % 100
    )
}

/// Seconds as a short human duration: `850 ms`, `1.24 s`, `2m 05s`.
pub fn human_duration(secs: f64) -> String {
    if secs < 1.0 {
        format!("{:.0} ms", secs * 1000.0)
    } else if secs < 60.0 {
        format!("{secs:.2} s")
    } else {
        let s = secs.round() as u64;
        format!("{}m {:02}s", s / 60, s % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_has_milliseconds() {
        let t = UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn rfc3339_reads_back_and_matches_the_time_crate() {
        for millis in [0u64, 999, 1_700_000_000_123, 951_782_400_007, 4_102_444_799_999] {
            let t = UNIX_EPOCH + std::time::Duration::from_millis(millis);
            let dt = OffsetDateTime::from(t);
            let whole = dt.replace_nanosecond(0).unwrap().format(&Rfc3339).unwrap();
            let expected = format!("{}.{:03}Z", whole.strip_suffix('Z').unwrap(), dt.millisecond());
            assert_eq!(rfc3339(t), expected);
            assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t));
        }
    }

    #[test]
    fn build_ids_sort_by_time_and_differ() {
        let a = new_build_id();
        let b = new_build_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), b.len());
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human_duration(0.25), "250 ms");
        assert_eq!(human_duration(1.236), "1.24 s");
        assert_eq!(human_duration(125.0), "2m 05s");
    }
}
