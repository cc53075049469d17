//! GitHub's value semantics: coercions, truthiness, loose equality and text.

use std::cmp::Ordering;

use super::Value;

/// A JSON number for `n`: integral values become integers, so they print as
/// `1` and not `1.0`. Non-finite values become `null` (JSON has no NaN).
pub fn num_value(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() < 9.0e15 {
        if n == 0.0 {
            return Value::from(0);
        }
        return Value::from(n as i64);
    }
    serde_json::Number::from_f64(n).map(Value::Number).unwrap_or(Value::Null)
}

/// Formats a number as GitHub does (`1`, `1.5`, `NaN`, `Infinity`).
pub fn format_number(n: f64) -> String {
    if n.is_nan() {
        "NaN".to_string()
    } else if n.is_infinite() {
        if n > 0.0 { "Infinity" } else { "-Infinity" }.to_string()
    } else if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}

pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            f != 0.0 && !f.is_nan()
        }
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// Number coercion: null 0, bools 1/0, strings parsed (empty is 0), else NaN.
pub fn to_number(v: &Value) -> f64 {
    match v {
        Value::Null => 0.0,
        Value::Bool(b) => f64::from(u8::from(*b)),
        Value::Number(n) => n.as_f64().unwrap_or(f64::NAN),
        Value::String(s) => {
            let t = s.trim();
            if t.is_empty() {
                0.0
            } else {
                super::lexer::parse_number(t).unwrap_or(f64::NAN)
            }
        }
        Value::Array(_) | Value::Object(_) => f64::NAN,
    }
}

/// Text of a value as interpolated into a template.
pub fn to_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => format_number(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => s.clone(),
        Value::Array(_) | Value::Object(_) => to_json_pretty(v),
    }
}

pub fn to_json_pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

fn fold(s: &str) -> String {
    s.to_uppercase()
}

pub fn str_eq_ci(a: &str, b: &str) -> bool {
    a == b || fold(a) == fold(b)
}

/// Loose equality (`==`).
pub fn loose_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::String(x), Value::String(y)) => str_eq_ci(x, y),
        (Value::Number(_), Value::Number(_)) => to_number(a) == to_number(b),
        (Value::Array(_), Value::Array(_)) | (Value::Object(_), Value::Object(_)) => a == b,
        (Value::Array(_) | Value::Object(_), _) | (_, Value::Array(_) | Value::Object(_)) => false,
        _ => to_number(a) == to_number(b),
    }
}

/// Ordering for `<`, `<=`, `>`, `>=`; `None` when not comparable (any
/// comparison is then false).
pub fn loose_cmp(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::String(x), Value::String(y)) => Some(fold(x).cmp(&fold(y))),
        (Value::Array(_) | Value::Object(_), _) | (_, Value::Array(_) | Value::Object(_)) => None,
        _ => to_number(a).partial_cmp(&to_number(b)),
    }
}

/// Property lookup: exact key first, then case-insensitive (GitHub's
/// contexts are case-insensitive). Missing is `Null`.
pub fn get_property(v: &Value, key: &str) -> Value {
    match v {
        Value::Object(m) => m
            .get(key)
            .or_else(|| m.iter().find(|(k, _)| str_eq_ci(k, key)).map(|(_, v)| v))
            .cloned()
            .unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

/// `a[i]`: arrays by number, objects by text.
pub fn index(v: &Value, i: &Value) -> Value {
    match v {
        Value::Array(items) => {
            let n = to_number(i);
            if n.is_nan() || n < 0.0 || n.fract() != 0.0 {
                return Value::Null;
            }
            items.get(n as usize).cloned().unwrap_or(Value::Null)
        }
        Value::Object(_) => get_property(v, &to_text(i)),
        _ => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_format() {
        assert_eq!(format_number(1.0), "1");
        assert_eq!(format_number(-0.0), "0");
        assert_eq!(format_number(1.5), "1.5");
        assert_eq!(format_number(f64::NAN), "NaN");
        assert_eq!(num_value(3.0).to_string(), "3");
    }

    #[test]
    fn equality() {
        assert!(loose_eq(&json!("ABC"), &json!("abc")));
        assert!(loose_eq(&json!("1"), &json!(1)));
        assert!(loose_eq(&json!(true), &json!(1)));
        assert!(loose_eq(&json!(null), &json!(0)));
        assert!(loose_eq(&json!(""), &json!(0)));
        assert!(!loose_eq(&json!("a"), &json!(0)));
        assert!(!loose_eq(&json!([]), &json!(0)));
        assert!(!loose_eq(&json!(null), &json!("")) || to_number(&json!("")) == 0.0);
    }
}
