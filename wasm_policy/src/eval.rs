//! Deciding one request against a loaded policy: first matching rule wins.
//!
//! Conditions use three-valued logic. A test on an argument that is missing, or whose type does
//! not fit the operator, is *undecided*; `not` keeps it undecided, `all`/`any` follow Kleene's
//! rules, and a rule applies only when its condition is definitely true. So a missing field can
//! never make a rule match, and negating a test on it cannot either.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::bundle::{Cond, Matcher, Op, Outcome, Policy, Scalar};
use crate::glob::any_matches;
use crate::risk::{self, BlastRadius, Category, Reversibility, Risk, Sensitivity, Tier};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub action: String,
    pub upstream: String,
    pub tool: String,
    pub actor: String,
    /// The principal's groups, from the identity provider's token (empty without one).
    #[serde(default)]
    pub groups: Vec<String>,
    pub category: Category,
    pub reversibility: Reversibility,
    pub blast_radius: BlastRadius,
    pub sensitivity: Sensitivity,
    #[serde(default)]
    pub arguments: Map<String, Value>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tri {
    True,
    False,
    Undecided,
}

#[derive(Serialize, Debug, PartialEq)]
pub struct TraceEntry {
    pub rule: String,
    pub matched: bool,
    pub why: String,
}

#[derive(Serialize)]
pub struct RiskOut {
    pub score: u32,
    pub tier: &'static str,
    pub factors: Factors,
}

#[derive(Serialize)]
pub struct Factors {
    pub category: u32,
    pub reversibility: u32,
    pub blast_radius: u32,
    pub sensitivity: u32,
}

#[derive(Serialize)]
pub struct DecisionOut<'a> {
    pub policy: &'a str,
    pub risk: RiskOut,
    pub effect: &'static str,
    pub rule: Option<&'a str>,
    pub reason: &'a str,
    pub approvers: Option<&'a str>,
    pub approval_ttl: Option<u64>,
    pub permit_ttl: u64,
    pub step_up: bool,
    pub trace: Vec<TraceEntry>,
    pub skipped: usize,
}

fn tier_default(tier: Tier) -> Outcome {
    let (effect, reason, step_up) = match tier {
        Tier::Low => (crate::bundle::Effect::Allow, "tier_default_low", false),
        Tier::Medium => (crate::bundle::Effect::Approve, "tier_default_medium", false),
        Tier::High => (crate::bundle::Effect::Approve, "tier_default_high", true),
    };
    Outcome {
        effect,
        reason: reason.to_string(),
        approvers: None,
        approval_ttl: None,
        permit_ttl: 300,
        step_up,
        approval: None,
    }
}

fn lookup<'v>(args: &'v Map<String, Value>, path: &[String]) -> Option<&'v Value> {
    let mut current = args.get(&path[0])?;
    for part in &path[1..] {
        current = match current {
            Value::Object(o) => o.get(part)?,
            _ => return None,
        };
    }
    Some(current)
}

/// Equality of two scalars of the same type; None when the types differ.
fn same_type_eq(a: &Value, b: &Scalar) -> Option<bool> {
    match (a, b) {
        (Value::Null, Scalar::Null) => Some(true),
        (Value::Bool(x), Scalar::Bool(y)) => Some(x == y),
        (Value::Number(x), Scalar::Num(y)) => x.as_f64().map(|x| x == *y),
        (Value::String(x), Scalar::Str(y)) => Some(x == y),
        _ => None,
    }
}

fn tri(b: bool) -> Tri {
    if b {
        Tri::True
    } else {
        Tri::False
    }
}

fn compare(v: &Value, bound: f64, f: fn(f64, f64) -> bool) -> Tri {
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(x) => tri(f(x, bound)),
            None => Tri::Undecided,
        },
        _ => Tri::Undecided,
    }
}

fn member(v: &Value, items: &[Scalar]) -> Option<bool> {
    // Lists are homogeneous (checked at load), so a value of another type is undecided.
    let mut any_same_type = false;
    for item in items {
        if let Some(eq) = same_type_eq(v, item) {
            any_same_type = true;
            if eq {
                return Some(true);
            }
        }
    }
    if any_same_type {
        Some(false)
    } else {
        None
    }
}

/// `path` with `.`, empty segments and `..` resolved the way POSIX `normpath` does (`..` at the root
/// stays at the root), and several leading slashes made one. None for a relative path or one with a
/// NUL: what it names depends on where the upstream stands, so no rule can say it is inside anything.
pub fn normalise_path(path: &str) -> Option<String> {
    if !path.starts_with('/') || path.contains('\0') {
        return None;
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    Some(format!("/{}", parts.join("/")))
}

fn under(value: &str, root: &str) -> Tri {
    match normalise_path(value) {
        Some(p) => tri(root == "/" || p == root || (p.starts_with(root) && p.as_bytes().get(root.len()) == Some(&b'/'))),
        None => Tri::Undecided,
    }
}

fn test(args: &Map<String, Value>, path: &[String], op: &Op) -> Tri {
    let found = lookup(args, path);
    if let Op::Exists(want) = op {
        return tri(found.is_some() == *want);
    }
    let v = match found {
        Some(v) => v,
        None => return Tri::Undecided,
    };
    match op {
        Op::Eq(s) => same_type_eq(v, s).map(tri).unwrap_or(Tri::Undecided),
        Op::Ne(s) => same_type_eq(v, s).map(|e| tri(!e)).unwrap_or(Tri::Undecided),
        Op::Lt(b) => compare(v, *b, |x, y| x < y),
        Op::Le(b) => compare(v, *b, |x, y| x <= y),
        Op::Gt(b) => compare(v, *b, |x, y| x > y),
        Op::Ge(b) => compare(v, *b, |x, y| x >= y),
        Op::In(items) => member(v, items).map(tri).unwrap_or(Tri::Undecided),
        Op::NotIn(items) => member(v, items).map(|m| tri(!m)).unwrap_or(Tri::Undecided),
        Op::Prefix(p) => match v {
            Value::String(s) => tri(s.starts_with(p.as_str())),
            _ => Tri::Undecided,
        },
        Op::Under(root) => match v {
            Value::String(s) => under(s, root),
            _ => Tri::Undecided,
        },
        Op::Exists(_) => Tri::Undecided,
    }
}

/// Evaluate a condition; `undecided_on` records the first argument that left it undecided.
pub fn eval_cond<'c>(c: &'c Cond, args: &Map<String, Value>, undecided_on: &mut Option<&'c str>) -> Tri {
    match c {
        Cond::Test { path, label, op } => {
            let r = test(args, path, op);
            if r == Tri::Undecided && undecided_on.is_none() {
                *undecided_on = Some(label.as_str());
            }
            r
        }
        Cond::Not(inner) => match eval_cond(inner, args, undecided_on) {
            Tri::True => Tri::False,
            Tri::False => Tri::True,
            Tri::Undecided => Tri::Undecided,
        },
        Cond::All(items) => {
            let mut out = Tri::True;
            for item in items {
                match eval_cond(item, args, undecided_on) {
                    Tri::False => return Tri::False,
                    Tri::Undecided => out = Tri::Undecided,
                    Tri::True => {}
                }
            }
            out
        }
        Cond::Any(items) => {
            let mut out = Tri::False;
            for item in items {
                match eval_cond(item, args, undecided_on) {
                    Tri::True => return Tri::True,
                    Tri::Undecided => out = Tri::Undecided,
                    Tri::False => {}
                }
            }
            out
        }
    }
}

/// Which part of `match` rejected the request, if any.
fn mismatch(m: &Matcher, req: &Request, risk: &Risk) -> Option<&'static str> {
    if !any_matches(&m.action, &req.action) {
        return Some("action does not match");
    }
    if !any_matches(&m.upstream, &req.upstream) {
        return Some("upstream does not match");
    }
    if !any_matches(&m.tool, &req.tool) {
        return Some("tool does not match");
    }
    if !any_matches(&m.actor, &req.actor) {
        return Some("actor does not match");
    }
    // A rule naming groups applies to a caller in at least one of them; a caller with none never matches it.
    if !m.group.is_empty() && !req.groups.iter().any(|g| any_matches(&m.group, g)) {
        return Some("group does not match");
    }
    if !m.category.is_empty() && !m.category.contains(&req.category) {
        return Some("category does not match");
    }
    if !m.tier.is_empty() && !m.tier.contains(&risk.tier) {
        return Some("tier does not match");
    }
    if m.score_min.map_or(false, |lo| risk.score < lo) || m.score_max.map_or(false, |hi| risk.score > hi) {
        return Some("score out of range");
    }
    None
}

pub fn risk_of(req: &Request) -> Risk {
    risk::score(req.category, req.reversibility, req.blast_radius, req.sensitivity)
}

/// Decide `req`. With `full_trace` every rule is listed; otherwise only the rules whose `match`
/// fitted the request (the ones a reader wants to see), and `skipped` counts the rest.
pub fn decide<'p>(policy: &'p Policy, req: &Request, full_trace: bool) -> (Risk, Outcome, Option<&'p str>, Vec<TraceEntry>, usize) {
    let risk = risk_of(req);
    let mut trace = Vec::new();
    let mut skipped = 0usize;
    for rule in &policy.rules {
        if let Some(why) = mismatch(&rule.matcher, req, &risk) {
            if full_trace {
                trace.push(TraceEntry { rule: rule.id.clone(), matched: false, why: why.to_string() });
            } else {
                skipped += 1;
            }
            continue;
        }
        let verdict = match &rule.when {
            None => (Tri::True, None),
            Some(c) => {
                let mut on = None;
                let t = eval_cond(c, &req.arguments, &mut on);
                (t, on)
            }
        };
        match verdict {
            (Tri::True, _) => {
                trace.push(TraceEntry { rule: rule.id.clone(), matched: true, why: "matched".to_string() });
                return (risk, rule.then.clone(), Some(rule.id.as_str()), trace, skipped);
            }
            (Tri::False, _) => {
                trace.push(TraceEntry { rule: rule.id.clone(), matched: false, why: "condition is false".to_string() });
            }
            (Tri::Undecided, on) => {
                let why = format!(
                    "condition undecided: argument `{}` is missing or has another type",
                    on.unwrap_or("?")
                );
                trace.push(TraceEntry { rule: rule.id.clone(), matched: false, why });
            }
        }
    }
    let outcome = if policy.tier_defaults { tier_default(risk.tier) } else { policy.default.clone() };
    (risk, outcome, None, trace, skipped)
}

pub fn render(policy: &Policy, req: &Request, full_trace: bool) -> Vec<u8> {
    let (risk, outcome, rule, trace, skipped) = decide(policy, req, full_trace);
    let out = DecisionOut {
        policy: &policy.label,
        risk: RiskOut {
            score: risk.score,
            tier: risk.tier.as_str(),
            factors: Factors {
                category: risk.category,
                reversibility: risk.reversibility,
                blast_radius: risk.blast_radius,
                sensitivity: risk.sensitivity,
            },
        },
        effect: outcome.effect.as_str(),
        rule,
        reason: &outcome.reason,
        approvers: outcome.approvers.as_deref(),
        approval_ttl: outcome.approval_ttl,
        permit_ttl: outcome.permit_ttl,
        step_up: outcome.step_up,
        trace,
        skipped,
    };
    // Serialising plain structs of strings and numbers cannot fail.
    serde_json::to_vec(&out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::parse;

    const POLICY: &str = r#"{"format":1,"policy":"shop","version":3,"tier_defaults":false,
      "default":{"effect":"deny","reason":"no_rule_matched","approvers":null,"approval_ttl":null,"permit_ttl":300,"step_up":false},
      "rules":[
        {"id":"reads","match":{"category":["read"]},"when":null,
         "then":{"effect":"allow","reason":"read","approvers":null,"approval_ttl":null,"permit_ttl":300,"step_up":false}},
        {"id":"refund-small","match":{"action":["refund.*"]},"when":{"arg":["amount"],"op":"le","value":100},
         "then":{"effect":"allow","reason":"small","approvers":null,"approval_ttl":null,"permit_ttl":300,"step_up":false}},
        {"id":"not-vip","match":{"action":["vip.*"]},"when":{"not":{"arg":["tier"],"op":"eq","value":"vip"}},
         "then":{"effect":"allow","reason":"not_vip","approvers":null,"approval_ttl":null,"permit_ttl":300,"step_up":false}},
        {"id":"refund-large","match":{"action":["refund.create"]},"when":null,
         "then":{"effect":"deny","reason":"amount_exceeds_policy_limit","approvers":null,"approval_ttl":null,"permit_ttl":300,"step_up":false}}
      ]}"#;

    fn req(action: &str, category: &str, args: &str) -> Request {
        let text = format!(
            r#"{{"action":"{}","upstream":"shop","tool":"t","actor":"me","category":"{}","reversibility":"none",
            "blast_radius":"single","sensitivity":"internal","arguments":{}}}"#,
            action, category, args
        );
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn a_group_rule_matches_a_caller_in_one_of_its_groups_only() {
        let policy = r#"{"format":1,"policy":"g","version":1,
          "default":{"effect":"deny","reason":"no_rule_matched","approvers":null,"approval_ttl":null,"permit_ttl":300,"step_up":false},
          "tier_defaults":false,
          "rules":[{"id":"billing","match":{"group":["billing-*"]},"when":null,
            "then":{"effect":"allow","reason":"billing","approvers":null,"approval_ttl":null,"permit_ttl":300,"step_up":false}}]}"#;
        let p = parse(policy.as_bytes()).unwrap();
        let with = |groups: &str| -> Request {
            serde_json::from_str(&format!(
                r#"{{"action":"a.b","upstream":"u","tool":"t","actor":"alice","groups":{},"category":"read",
                "reversibility":"full","blast_radius":"single","sensitivity":"public"}}"#,
                groups
            ))
            .unwrap()
        };
        let (_, o, _, _, _) = decide(&p, &with(r#"["staff","billing-eu"]"#), false);
        assert_eq!(o.effect.as_str(), "allow");
        let (_, o, _, _, _) = decide(&p, &with(r#"["staff"]"#), false);
        assert_eq!(o.reason.as_str(), "no_rule_matched");
        let (_, o, _, _, _) = decide(&p, &req("a.b", "read", "{}"), false);
        assert_eq!(o.reason.as_str(), "no_rule_matched");
    }

    #[test]
    fn first_matching_rule_wins() {
        let p = parse(POLICY.as_bytes()).unwrap();
        let (_, o, rule, _, _) = decide(&p, &req("refund.create", "financial", r#"{"amount":50}"#), false);
        assert_eq!((o.effect.as_str(), rule), ("allow", Some("refund-small")));
        let (_, o, rule, _, _) = decide(&p, &req("refund.create", "financial", r#"{"amount":500}"#), false);
        assert_eq!((o.reason.as_str(), rule), ("amount_exceeds_policy_limit", Some("refund-large")));
    }

    #[test]
    fn a_missing_or_mistyped_argument_never_matches() {
        let p = parse(POLICY.as_bytes()).unwrap();
        for args in [r#"{}"#, r#"{"amount":"50"}"#, r#"{"amount":null}"#, r#"{"amount":[1]}"#] {
            let (_, o, rule, trace, _) = decide(&p, &req("refund.create", "financial", args), false);
            assert_eq!(rule, Some("refund-large"), "{}", args);
            assert_eq!(o.effect.as_str(), "deny");
            assert!(trace[0].why.contains("`amount`"));
        }
    }

    #[test]
    fn negating_a_missing_argument_stays_undecided() {
        let p = parse(POLICY.as_bytes()).unwrap();
        let (_, o, rule, _, _) = decide(&p, &req("vip.thing", "write", r#"{}"#), false);
        assert_eq!((o.effect.as_str(), rule), ("deny", None));
        let (_, o, _, _, _) = decide(&p, &req("vip.thing", "write", r#"{"tier":"gold"}"#), false);
        assert_eq!(o.effect.as_str(), "allow");
    }

    #[test]
    fn short_trace_lists_only_candidates() {
        let p = parse(POLICY.as_bytes()).unwrap();
        let (_, _, _, trace, skipped) = decide(&p, &req("refund.create", "financial", r#"{"amount":500}"#), false);
        assert_eq!(trace.len(), 2);
        assert_eq!(skipped, 2);
        let (_, _, _, full, skipped) = decide(&p, &req("refund.create", "financial", r#"{"amount":500}"#), true);
        assert_eq!((full.len(), skipped), (4, 0));
    }

    #[test]
    fn under_normalises_before_it_compares() {
        assert_eq!(normalise_path("/root/x/../sub/plans.md").as_deref(), Some("/root/sub/plans.md"));
        assert_eq!(normalise_path("//srv/./data//a/").as_deref(), Some("/srv/data/a"));
        assert_eq!(normalise_path("/../../etc").as_deref(), Some("/etc"));
        assert_eq!(normalise_path("notes.md"), None);
        assert_eq!(under("/root/x/../sub/plans.md", "/root/sub"), Tri::True);
        assert_eq!(under("/srv/data/../etc/passwd", "/srv/data"), Tri::False);
        assert_eq!(under("/srv/database", "/srv/data"), Tri::False);
        assert_eq!(under("/srv/data", "/srv/data"), Tri::True);
        assert_eq!(under("/anything", "/"), Tri::True);
        assert_eq!(under("data/x", "/srv/data"), Tri::Undecided);
    }

    #[test]
    fn tier_defaults_apply_only_when_asked() {
        let text = POLICY.replace(r#""tier_defaults":false"#, r#""tier_defaults":true"#);
        let p = parse(text.as_bytes()).unwrap();
        let (_, o, _, _, _) = decide(&p, &req("other.thing", "permission", r#"{}"#), false);
        assert_eq!((o.effect.as_str(), o.step_up), ("approve", true));
    }
}
