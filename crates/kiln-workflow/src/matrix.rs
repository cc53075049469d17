//! `strategy.matrix`: parsing and GitHub's expansion (product, exclude,
//! include).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::diagnostic::Location;
use crate::model::Strategy;
use crate::parse::{matrix_value, Cx};
use crate::yaml::{Node, NodeKind};

/// GitHub's limit on the legs of one matrix.
pub(crate) const MAX_LEGS: usize = 256;

const DYNAMIC: &str =
    "dynamic matrices are not supported: the matrix must be written in the file, not computed with `${{ }}`";

/// Parses `strategy:`; returns it with the location of its matrix.
pub(crate) fn parse_strategy(cx: &mut Cx<'_>, node: &Node) -> Option<(Strategy, Location)> {
    let pairs = cx.map(node, "`strategy`")?;
    let mut strategy = Strategy {
        axes: Vec::new(),
        include: Vec::new(),
        exclude: Vec::new(),
        fail_fast: true,
        max_parallel: None,
    };
    let mut matrix_loc = None;
    let errors_before = cx.errors.len();
    for (k, v) in pairs {
        let Some(key) = cx.text(k, "a key") else {
            continue;
        };
        match key.as_str() {
            "matrix" => {
                matrix_loc = Some(v.loc);
                parse_matrix(cx, v, &mut strategy);
            }
            "fail-fast" => match v.as_bool() {
                Some(b) => strategy.fail_fast = b,
                None => cx.err(v.loc, "`fail-fast` must be `true` or `false`"),
            },
            "max-parallel" => {
                strategy.max_parallel =
                    cx.positive_int(v, "`max-parallel`").map(|n| u32::try_from(n).unwrap_or(u32::MAX));
            }
            _ => cx.unknown_key(
                k.loc,
                &key,
                ["matrix", "fail-fast", "max-parallel"].into_iter(),
                "in `strategy`",
            ),
        }
    }
    let Some(loc) = matrix_loc else {
        cx.err(node.loc, "`strategy` has no `matrix`");
        return None;
    };
    if cx.errors.len() != errors_before {
        return None;
    }
    if strategy.axes.is_empty() && strategy.include.is_empty() {
        cx.err(loc, "the matrix is empty: give it at least one axis or `include` entry");
        return None;
    }
    match expand(&strategy) {
        Ok(legs) if legs.is_empty() => {
            cx.err(loc, "the matrix has no combinations left after `exclude`");
            None
        }
        Ok(_) => Some((strategy, loc)),
        Err(e) => {
            cx.err(loc, e);
            None
        }
    }
}

fn parse_matrix(cx: &mut Cx<'_>, node: &Node, strategy: &mut Strategy) {
    if node.as_scalar().is_some_and(|s| s.contains("${{")) {
        cx.err(node.loc, DYNAMIC);
        return;
    }
    let Some(pairs) = cx.map(node, "`matrix`") else {
        return;
    };
    for (k, v) in pairs {
        let Some(key) = cx.text(k, "a matrix key") else {
            continue;
        };
        match key.as_str() {
            "include" | "exclude" => {
                let Some(entries) = entry_list(cx, &key, v) else {
                    continue;
                };
                if key == "include" {
                    strategy.include = entries;
                } else {
                    strategy.exclude = entries;
                }
            }
            _ => match &v.kind {
                NodeKind::Seq(items) if items.is_empty() => {
                    cx.err(v.loc, format!("matrix axis `{key}` has no values"));
                }
                NodeKind::Seq(items) => {
                    let values: Option<Vec<Value>> = items.iter().map(|i| matrix_value(cx, i)).collect();
                    if let Some(values) = values {
                        strategy.axes.push((key, values));
                    }
                }
                _ if v.as_scalar().is_some_and(|s| s.contains("${{")) => cx.err(v.loc, DYNAMIC),
                _ => cx.err(v.loc, format!("matrix axis `{key}` must be a list of values")),
            },
        }
    }
}

fn entry_list(cx: &mut Cx<'_>, key: &str, node: &Node) -> Option<Vec<BTreeMap<String, Value>>> {
    if node.as_scalar().is_some_and(|s| s.contains("${{")) {
        cx.err(node.loc, DYNAMIC);
        return None;
    }
    let NodeKind::Seq(items) = &node.kind else {
        cx.err(node.loc, format!("matrix `{key}` must be a list of mappings"));
        return None;
    };
    let mut out = Vec::new();
    for item in items {
        let NodeKind::Map(_) = &item.kind else {
            cx.err(item.loc, format!("each matrix `{key}` entry must be a mapping"));
            return None;
        };
        let Value::Object(m) = matrix_value(cx, item)? else {
            return None;
        };
        out.push(m.into_iter().collect());
    }
    Some(out)
}

/// Expands a matrix to its legs, GitHub's way: the product of the axes in
/// file order, minus `exclude`, plus `include`.
pub(crate) fn expand(strategy: &Strategy) -> Result<Vec<Map<String, Value>>, String> {
    let mut raw: usize = 1;
    for (_, values) in &strategy.axes {
        raw = raw.saturating_mul(values.len());
    }
    let too_many = |n: usize| {
        format!("the matrix expands to {n} combinations; GitHub's (and kiln's) limit is {MAX_LEGS}")
    };
    // Excludes cannot plausibly remove more than this; refuse before building.
    if raw > MAX_LEGS * 64 {
        return Err(too_many(raw));
    }
    let mut combos: Vec<Map<String, Value>> =
        if strategy.axes.is_empty() { Vec::new() } else { vec![Map::new()] };
    for (axis, values) in &strategy.axes {
        let mut next = Vec::with_capacity(combos.len() * values.len());
        for c in &combos {
            for v in values {
                let mut c = c.clone();
                c.insert(axis.clone(), v.clone());
                next.push(c);
            }
        }
        combos = next;
    }
    combos.retain(|c| !strategy.exclude.iter().any(|ex| ex.iter().all(|(k, v)| c.get(k) == Some(v))));
    let original = combos.len();
    let is_axis = |k: &str| strategy.axes.iter().any(|(a, _)| a == k);
    for inc in &strategy.include {
        let mut merged = false;
        for c in combos.iter_mut().take(original) {
            let fits = inc.iter().all(|(k, v)| !is_axis(k) || c.get(k) == Some(v));
            if fits {
                for (k, v) in inc {
                    c.insert(k.clone(), v.clone());
                }
                merged = true;
            }
        }
        if !merged {
            combos.push(inc.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
        }
    }
    if combos.len() > MAX_LEGS {
        return Err(too_many(combos.len()));
    }
    Ok(combos)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn strategy(axes: Value, include: Value, exclude: Value) -> Strategy {
        let axes = axes
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_array().unwrap().clone()))
            .collect();
        let entries = |v: Value| {
            v.as_array()
                .unwrap()
                .iter()
                .map(|e| e.as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .collect()
        };
        Strategy {
            axes,
            include: entries(include),
            exclude: entries(exclude),
            fail_fast: true,
            max_parallel: None,
        }
    }

    fn legs(s: &Strategy) -> Vec<Value> {
        expand(s).unwrap().into_iter().map(Value::Object).collect()
    }

    #[test]
    fn product_in_file_order() {
        let s = strategy(json!({"os": ["a", "b"], "v": [1, 2]}), json!([]), json!([]));
        assert_eq!(
            legs(&s),
            vec![
                json!({"os": "a", "v": 1}),
                json!({"os": "a", "v": 2}),
                json!({"os": "b", "v": 1}),
                json!({"os": "b", "v": 2}),
            ]
        );
    }

    #[test]
    fn exclude_partial_match() {
        let s = strategy(
            json!({"os": ["mac", "win"], "v": [12, 14, 16], "env": ["x", "y"]}),
            json!([]),
            json!([{"os": "mac", "v": 12}, {"env": "y", "os": "win"}]),
        );
        // 12 combinations, minus 2 (mac,12,*), minus 3 (win,*,y)
        assert_eq!(legs(&s).len(), 7);
    }

    /// The example of GitHub's documentation.
    #[test]
    fn include_github_docs_example() {
        let s = strategy(
            json!({"fruit": ["apple", "pear"], "animal": ["cat", "dog"]}),
            json!([
                {"color": "green"},
                {"color": "pink", "animal": "cat"},
                {"fruit": "apple", "shape": "circle"},
                {"fruit": "banana"},
                {"fruit": "banana", "animal": "cat"}
            ]),
            json!([]),
        );
        assert_eq!(
            legs(&s),
            vec![
                json!({"fruit": "apple", "animal": "cat", "color": "pink", "shape": "circle"}),
                json!({"fruit": "apple", "animal": "dog", "color": "green", "shape": "circle"}),
                json!({"fruit": "pear", "animal": "cat", "color": "pink"}),
                json!({"fruit": "pear", "animal": "dog", "color": "green"}),
                json!({"fruit": "banana"}),
                json!({"fruit": "banana", "animal": "cat"}),
            ]
        );
    }

    #[test]
    fn include_only() {
        let s = strategy(json!({}), json!([{"a": 1}, {"a": 2}]), json!([]));
        assert_eq!(legs(&s), vec![json!({"a": 1}), json!({"a": 2})]);
    }

    #[test]
    fn limit() {
        let many: Vec<i32> = (0..257).collect();
        let s = strategy(json!({ "n": many }), json!([]), json!([]));
        assert!(expand(&s).unwrap_err().contains("257"));
        let ok: Vec<i32> = (0..256).collect();
        assert_eq!(legs(&strategy(json!({ "n": ok }), json!([]), json!([]))).len(), 256);
        let s = strategy(
            json!({"a": (0..100).collect::<Vec<_>>(), "b": (0..100).collect::<Vec<_>>(), "c": (0..100).collect::<Vec<_>>()}),
            json!([]),
            json!([]),
        );
        assert!(expand(&s).is_err());
    }
}
