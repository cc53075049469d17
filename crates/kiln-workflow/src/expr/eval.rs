//! Evaluation of the syntax tree.

use super::parser::{Ast, BinOp};
use super::value::{get_property, index, loose_cmp, loose_eq, str_eq_ci, truthy};
use super::{Contexts, StatusFns, Value};

/// An intermediate value: the object filter (`a.*.b`) yields a list that
/// later property accesses map over.
enum Val {
    Plain(Value),
    Filtered(Vec<Value>),
}

impl Val {
    fn into_value(self) -> Value {
        match self {
            Val::Plain(v) => v,
            Val::Filtered(items) => Value::Array(items),
        }
    }
}

pub(crate) fn eval(ast: &Ast, ctx: &Contexts, status: StatusFns) -> Result<Value, String> {
    eval_val(ast, ctx, status).map(Val::into_value)
}

fn elements(v: Value) -> Vec<Value> {
    match v {
        Value::Array(items) => items,
        Value::Object(m) => m.into_iter().map(|(_, v)| v).collect(),
        _ => Vec::new(),
    }
}

/// The value a context or a chain of properties over one names
/// (`github.event.ref`), borrowed from the contexts: evaluating it then
/// copies that value only, not the whole context. `None` when the chain
/// names nothing there (or is not such a chain): evaluated the long way.
fn lookup<'c>(ast: &Ast, ctx: &'c Contexts) -> Option<&'c Value> {
    match ast {
        Ast::Context(name) => Some(match name.as_str() {
            "github" => &ctx.github,
            "env" => &ctx.env,
            "matrix" => &ctx.matrix,
            "needs" => &ctx.needs,
            "steps" => &ctx.steps,
            "job" => &ctx.job,
            "runner" => &ctx.runner,
            "strategy" => &ctx.strategy,
            "secrets" => &ctx.secrets,
            "inputs" => &ctx.inputs,
            "jobs" => &ctx.jobs,
            _ => return None,
        }),
        Ast::Prop(base, key) => match lookup(base, ctx)? {
            Value::Object(m) => {
                m.get(key.as_str()).or_else(|| m.iter().find(|(k, _)| str_eq_ci(k, key)).map(|(_, v)| v))
            }
            _ => None,
        },
        _ => None,
    }
}

fn eval_val(ast: &Ast, ctx: &Contexts, status: StatusFns) -> Result<Val, String> {
    if matches!(ast, Ast::Context(_) | Ast::Prop(..)) {
        if let Some(v) = lookup(ast, ctx) {
            return Ok(Val::Plain(v.clone()));
        }
    }
    Ok(match ast {
        Ast::Lit(v) => Val::Plain(v.clone()),
        Ast::Context(name) => Val::Plain(match name.as_str() {
            "github" => ctx.github.clone(),
            "env" => ctx.env.clone(),
            "matrix" => ctx.matrix.clone(),
            "needs" => ctx.needs.clone(),
            "steps" => ctx.steps.clone(),
            "job" => ctx.job.clone(),
            "runner" => ctx.runner.clone(),
            "strategy" => ctx.strategy.clone(),
            "secrets" => ctx.secrets.clone(),
            "inputs" => ctx.inputs.clone(),
            "jobs" => ctx.jobs.clone(),
            _ => Value::Null,
        }),
        Ast::Prop(base, key) => match eval_val(base, ctx, status)? {
            Val::Plain(v) => Val::Plain(get_property(&v, key)),
            Val::Filtered(items) => Val::Filtered(
                items
                    .iter()
                    .filter(|v| v.is_object())
                    .map(|v| get_property(v, key))
                    .filter(|v| !v.is_null())
                    .collect(),
            ),
        },
        Ast::Index(base, i) => {
            let i = eval(i, ctx, status)?;
            match eval_val(base, ctx, status)? {
                Val::Plain(v) => Val::Plain(index(&v, &i)),
                Val::Filtered(items) => {
                    Val::Filtered(items.iter().map(|v| index(v, &i)).filter(|v| !v.is_null()).collect())
                }
            }
        }
        Ast::Star(base) => match eval_val(base, ctx, status)? {
            Val::Plain(v) => Val::Filtered(elements(v)),
            Val::Filtered(items) => Val::Filtered(items.into_iter().flat_map(elements).collect()),
        },
        Ast::Not(a) => Val::Plain(Value::Bool(!truthy(&eval(a, ctx, status)?))),
        Ast::Bin(BinOp::And, a, b) => {
            let l = eval(a, ctx, status)?;
            if truthy(&l) {
                Val::Plain(eval(b, ctx, status)?)
            } else {
                Val::Plain(l)
            }
        }
        Ast::Bin(BinOp::Or, a, b) => {
            let l = eval(a, ctx, status)?;
            if truthy(&l) {
                Val::Plain(l)
            } else {
                Val::Plain(eval(b, ctx, status)?)
            }
        }
        Ast::Bin(op, a, b) => {
            let l = eval(a, ctx, status)?;
            let r = eval(b, ctx, status)?;
            let ord = loose_cmp(&l, &r);
            let res = match op {
                BinOp::Eq => loose_eq(&l, &r),
                BinOp::Ne => !loose_eq(&l, &r),
                BinOp::Lt => ord.is_some_and(|o| o.is_lt()),
                BinOp::Le => ord.is_some_and(|o| o.is_le()),
                BinOp::Gt => ord.is_some_and(|o| o.is_gt()),
                BinOp::Ge => ord.is_some_and(|o| o.is_ge()),
                BinOp::And | BinOp::Or => false,
            };
            Val::Plain(Value::Bool(res))
        }
        Ast::Call(f, args) => {
            let args = args.iter().map(|a| eval(a, ctx, status)).collect::<Result<Vec<_>, _>>()?;
            Val::Plain(f.call(&args, status)?)
        }
    })
}
