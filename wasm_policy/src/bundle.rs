//! The compiled bundle: its JSON shape (written by `guard-mcp policy compile`) and the in-memory
//! policy it is turned into once, at load.
//!
//! The loader re-checks what the compiler already checked (operators, value types, non-empty
//! lists): a bundle is signed, but the module does not rely on the signer's compiler being right.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::glob::Glob;
use crate::risk::{Category, Tier};

pub const FORMAT: u64 = 1;
const MAX_DEPTH: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    Allow,
    Deny,
    Approve,
}

impl Effect {
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
            Effect::Approve => "approve",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outcome {
    pub effect: Effect,
    pub reason: String,
    pub approvers: Option<String>,
    pub approval_ttl: Option<u64>,
    pub permit_ttl: u64,
    pub step_up: bool,
    // `authenticated`: only a signed-in approver may approve (no in-band answer). Carried for the
    // host, which reads it from the bundle by rule id; the evaluator itself does not use it.
    #[serde(default)]
    pub approval: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    #[serde(default)]
    action: Vec<String>,
    #[serde(default)]
    upstream: Vec<String>,
    #[serde(default)]
    tool: Vec<String>,
    #[serde(default)]
    actor: Vec<String>,
    #[serde(default)]
    group: Vec<String>,
    #[serde(default)]
    category: Vec<Category>,
    #[serde(default)]
    tier: Vec<Tier>,
    #[serde(default)]
    score_min: Option<u32>,
    #[serde(default)]
    score_max: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: String,
    #[serde(rename = "match")]
    matcher: RawMatch,
    when: Option<Value>,
    then: Outcome,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBundle {
    format: u64,
    policy: String,
    version: u64,
    default: Outcome,
    tier_defaults: bool,
    rules: Vec<RawRule>,
}

#[derive(Debug)]
pub struct Matcher {
    pub action: Vec<Glob>,
    pub upstream: Vec<Glob>,
    pub tool: Vec<Glob>,
    pub actor: Vec<Glob>,
    pub group: Vec<Glob>,
    pub category: Vec<Category>,
    pub tier: Vec<Tier>,
    pub score_min: Option<u32>,
    pub score_max: Option<u32>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Scalar {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
}

#[derive(Debug)]
pub enum Op {
    Eq(Scalar),
    Ne(Scalar),
    Lt(f64),
    Le(f64),
    Gt(f64),
    Ge(f64),
    In(Vec<Scalar>),
    NotIn(Vec<Scalar>),
    Prefix(String),
    /// A normalised absolute path (checked at load): the argument, normalised, is it or inside it.
    Under(String),
    Exists(bool),
}

#[derive(Debug)]
pub enum Cond {
    All(Vec<Cond>),
    Any(Vec<Cond>),
    Not(Box<Cond>),
    Test { path: Vec<String>, label: String, op: Op },
}

#[derive(Debug)]
pub struct Rule {
    pub id: String,
    pub matcher: Matcher,
    pub when: Option<Cond>,
    pub then: Outcome,
}

#[derive(Debug)]
pub struct Policy {
    pub name: String,
    pub version: u64,
    pub label: String,
    pub default: Outcome,
    pub tier_defaults: bool,
    pub rules: Vec<Rule>,
}

pub fn parse(bytes: &[u8]) -> Result<Policy, String> {
    let raw: RawBundle = serde_json::from_slice(bytes).map_err(|e| format!("bundle is not valid: {}", e))?;
    if raw.format != FORMAT {
        return Err(format!("bundle format `{}` is not supported (expected {})", raw.format, FORMAT));
    }
    let mut rules = Vec::with_capacity(raw.rules.len());
    for r in raw.rules {
        let when = match r.when {
            None => None,
            Some(v) => Some(cond(&v, 0).map_err(|e| format!("rule `{}`: {}", r.id, e))?),
        };
        let m = r.matcher;
        rules.push(Rule {
            matcher: Matcher {
                action: globs(m.action),
                upstream: globs(m.upstream),
                tool: globs(m.tool),
                actor: globs(m.actor),
                group: globs(m.group),
                category: m.category,
                tier: m.tier,
                score_min: m.score_min,
                score_max: m.score_max,
            },
            when,
            then: r.then,
            id: r.id,
        });
    }
    let label = format!("{}@{}", raw.policy, raw.version);
    Ok(Policy {
        name: raw.policy,
        version: raw.version,
        label,
        default: raw.default,
        tier_defaults: raw.tier_defaults,
        rules,
    })
}

fn globs(patterns: Vec<String>) -> Vec<Glob> {
    patterns.iter().map(|p| Glob::new(p)).collect()
}

fn scalar(v: &Value) -> Result<Scalar, String> {
    match v {
        Value::Null => Ok(Scalar::Null),
        Value::Bool(b) => Ok(Scalar::Bool(*b)),
        Value::Number(n) => n.as_f64().map(Scalar::Num).ok_or_else(|| "number out of range".to_string()),
        Value::String(s) => Ok(Scalar::Str(s.clone())),
        _ => Err("expected a string, number, boolean or null".to_string()),
    }
}

fn number(v: &Value) -> Result<f64, String> {
    match v {
        Value::Number(n) => n.as_f64().ok_or_else(|| "number out of range".to_string()),
        _ => Err("expected a number".to_string()),
    }
}

fn kind(s: &Scalar) -> u8 {
    match s {
        Scalar::Null => 0,
        Scalar::Bool(_) => 1,
        Scalar::Num(_) => 2,
        Scalar::Str(_) => 3,
    }
}

fn list(v: &Value) -> Result<Vec<Scalar>, String> {
    let items = match v {
        Value::Array(items) if !items.is_empty() => items,
        _ => return Err("expected a non-empty list".to_string()),
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let s = scalar(item)?;
        if let Some(first) = out.first() {
            if kind(first) != kind(&s) {
                return Err("list items must all have the same type".to_string());
            }
        }
        out.push(s);
    }
    Ok(out)
}

fn cond_list(v: &Value, depth: usize) -> Result<Vec<Cond>, String> {
    match v {
        Value::Array(items) if !items.is_empty() => items.iter().map(|c| cond(c, depth + 1)).collect(),
        _ => Err("`all` and `any` take a non-empty list".to_string()),
    }
}

fn cond(v: &Value, depth: usize) -> Result<Cond, String> {
    if depth > MAX_DEPTH {
        return Err("conditions are nested too deeply".to_string());
    }
    let obj: &Map<String, Value> = match v {
        Value::Object(o) => o,
        _ => return Err("a condition must be an object".to_string()),
    };
    if obj.len() == 1 {
        if let Some(items) = obj.get("all") {
            return Ok(Cond::All(cond_list(items, depth)?));
        }
        if let Some(items) = obj.get("any") {
            return Ok(Cond::Any(cond_list(items, depth)?));
        }
        if let Some(inner) = obj.get("not") {
            return Ok(Cond::Not(Box::new(cond(inner, depth + 1)?)));
        }
    }
    if obj.len() != 3 {
        return Err("a test needs exactly `arg`, `op` and `value`".to_string());
    }
    let path: Vec<String> = match obj.get("arg") {
        Some(Value::Array(parts)) if !parts.is_empty() => {
            let mut out = Vec::with_capacity(parts.len());
            for p in parts {
                match p {
                    Value::String(s) => out.push(s.clone()),
                    _ => return Err("`arg` must be a list of field names".to_string()),
                }
            }
            out
        }
        _ => return Err("`arg` must be a non-empty list of field names".to_string()),
    };
    let value = obj.get("value").ok_or_else(|| "a test needs `value`".to_string())?;
    let op_name = match obj.get("op") {
        Some(Value::String(s)) => s.as_str(),
        _ => return Err("a test needs `op`".to_string()),
    };
    let op = match op_name {
        "eq" => Op::Eq(scalar(value)?),
        "ne" => Op::Ne(scalar(value)?),
        "lt" => Op::Lt(number(value)?),
        "le" => Op::Le(number(value)?),
        "gt" => Op::Gt(number(value)?),
        "ge" => Op::Ge(number(value)?),
        "in" => Op::In(list(value)?),
        "not_in" => Op::NotIn(list(value)?),
        "prefix" => match value {
            Value::String(s) => Op::Prefix(s.clone()),
            _ => return Err("`prefix` takes a string".to_string()),
        },
        "under" => match value {
            Value::String(s) if crate::eval::normalise_path(s).as_deref() == Some(s.as_str()) => Op::Under(s.clone()),
            _ => return Err("`under` takes a normalised absolute path like `/srv/data`".to_string()),
        },
        "exists" => match value {
            Value::Bool(b) => Op::Exists(*b),
            _ => return Err("`exists` takes true or false".to_string()),
        },
        other => return Err(format!("unknown operator `{}`", other)),
    };
    let label = path.join(".");
    Ok(Cond::Test { path, label, op })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(rules: &str) -> String {
        format!(
            r#"{{"format":1,"policy":"p","version":2,"tier_defaults":false,
            "default":{{"effect":"deny","reason":"no_rule_matched","approvers":null,"approval_ttl":null,"permit_ttl":300,"step_up":false}},
            "rules":[{}]}}"#,
            rules
        )
    }

    const THEN: &str = r#""then":{"effect":"allow","reason":"ok","approvers":null,"approval_ttl":null,"permit_ttl":300,"step_up":false}"#;

    #[test]
    fn parses_a_rule_with_a_condition() {
        let b = bundle(&format!(r#"{{"id":"r","match":{{"action":["a.*"]}},"when":{{"arg":["amount"],"op":"le","value":100}},{}}}"#, THEN));
        let p = parse(b.as_bytes()).unwrap();
        assert_eq!(p.label, "p@2");
        assert_eq!(p.rules.len(), 1);
    }

    #[test]
    fn rejects_an_unknown_operator() {
        let b = bundle(&format!(r#"{{"id":"r","match":{{}},"when":{{"arg":["x"],"op":"matches","value":"a.*"}},{}}}"#, THEN));
        let err = parse(b.as_bytes()).unwrap_err();
        assert!(err.contains("unknown operator `matches`"), "{}", err);
    }

    #[test]
    fn rejects_a_string_where_a_number_is_needed() {
        let b = bundle(&format!(r#"{{"id":"r","match":{{}},"when":{{"arg":["x"],"op":"le","value":"ten"}},{}}}"#, THEN));
        assert!(parse(b.as_bytes()).unwrap_err().contains("expected a number"));
    }

    #[test]
    fn under_takes_only_a_normalised_absolute_path() {
        let ok = bundle(&format!(r#"{{"id":"r","match":{{}},"when":{{"arg":["p"],"op":"under","value":"/srv/data"}},{}}}"#, THEN));
        assert!(parse(ok.as_bytes()).is_ok());
        for bad in ["srv/data", "/srv/../etc", "/srv/data/", "//srv", "/srv/./data", ""] {
            let b = bundle(&format!(r#"{{"id":"r","match":{{}},"when":{{"arg":["p"],"op":"under","value":"{}"}},{}}}"#, bad, THEN));
            assert!(parse(b.as_bytes()).unwrap_err().contains("`under`"), "{}", bad);
        }
    }

    #[test]
    fn rejects_mixed_lists_and_unknown_fields() {
        let b = bundle(&format!(r#"{{"id":"r","match":{{}},"when":{{"arg":["x"],"op":"in","value":[1,"a"]}},{}}}"#, THEN));
        assert!(parse(b.as_bytes()).is_err());
        let b = bundle(&format!(r#"{{"id":"r","match":{{"regex":"x"}},{}}}"#, THEN));
        assert!(parse(b.as_bytes()).is_err());
    }
}
