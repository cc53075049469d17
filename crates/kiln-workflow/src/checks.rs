//! Small validators shared by the parser and the engine: names, sizes,
//! paths, and "did you mean" suggestions.

/// The closest of `candidates` to `word`, if it is close enough to be a typo.
pub(crate) fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let w = word.to_lowercase();
    let limit = match w.chars().count() {
        0..=2 => 1,
        3..=5 => 2,
        _ => 3,
    };
    candidates
        .into_iter()
        .map(|c| (levenshtein(&w, &c.to_lowercase()), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        cur[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// `^[A-Za-z_][A-Za-z0-9_-]*$`: job keys, step ids, output names.
pub(crate) fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

pub(crate) fn is_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Checks that a working directory stays inside the workspace: relative, no
/// `..` that climbs out of it.
pub fn check_relative_path(path: &str) -> Result<(), String> {
    if path.contains('\0') {
        return Err(format!("`{path}` contains a NUL byte"));
    }
    if path.starts_with('/') || path.starts_with('~') || path.starts_with('\\') {
        return Err(format!("`{path}` is not inside the workspace: use a path relative to the workspace"));
    }
    let mut depth: i64 = 0;
    for comp in path.split(['/', '\\']) {
        match comp {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return Err(format!("`{path}` escapes the workspace (`..` climbs out of it)"));
                }
            }
            _ => depth += 1,
        }
    }
    Ok(())
}

/// Parses a size: plain bytes, or with a suffix `k`/`M`/`G`/`T` (powers of
/// 1000) or `Ki`/`Mi`/`Gi`/`Ti` (powers of 1024), e.g. `512Mi`, `2G`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    let mult: u64 = match suffix.trim() {
        "" | "B" => 1,
        "k" | "K" | "kB" | "KB" => 1_000,
        "M" | "MB" => 1_000_000,
        "G" | "GB" => 1_000_000_000,
        "T" | "TB" => 1_000_000_000_000,
        "Ki" | "KiB" => 1 << 10,
        "Mi" | "MiB" => 1 << 20,
        "Gi" | "GiB" => 1 << 30,
        "Ti" | "TiB" => 1 << 40,
        other => {
            return Err(format!(
                "invalid size `{text}`: unknown unit `{other}` (use bytes, or k, M, G, T, Ki, Mi, Gi, Ti)"
            ))
        }
    };
    let value: f64 =
        num.parse().map_err(|_| format!("invalid size `{text}`: expected a number like 512Mi or 2G"))?;
    let bytes = value * mult as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(format!("invalid size `{text}`: must be at least one byte"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        let keys = ["needs", "name", "runs-on", "steps"];
        assert_eq!(did_you_mean("neds", keys), Some("needs"));
        assert_eq!(did_you_mean("runs_on", keys), Some("runs-on"));
        assert_eq!(did_you_mean("Steps", keys), Some("steps"));
        assert_eq!(did_you_mean("frobnicate", keys), None);
    }

    #[test]
    fn names() {
        assert!(is_identifier("deploy-prod_2"));
        assert!(is_identifier("_x"));
        assert!(!is_identifier("2x"));
        assert!(!is_identifier("a.b"));
        assert!(!is_identifier(""));
        assert!(is_env_name("A_1"));
        assert!(!is_env_name("A-1"));
    }
}
