//! `*` globs for action, upstream, tool and actor names.
//!
//! A naive recursive matcher is exponential on patterns like `*a*a*a*b`; a signed bundle must not
//! be able to stall the evaluator that way, so this one only ever backtracks to the last star
//! (at most pattern length × text length steps).

#[derive(Debug, Clone)]
pub struct Glob {
    pattern: Vec<u8>,
    literal: bool,
}

impl Glob {
    pub fn new(pattern: &str) -> Glob {
        Glob {
            literal: !pattern.contains('*'),
            pattern: pattern.as_bytes().to_vec(),
        }
    }

    pub fn matches(&self, text: &str) -> bool {
        let t = text.as_bytes();
        if self.literal {
            return self.pattern == t;
        }
        let p = &self.pattern;
        let (mut pi, mut ti) = (0usize, 0usize);
        let mut star: Option<usize> = None;
        let mut resume = 0usize;
        while ti < t.len() {
            if pi < p.len() && p[pi] == b'*' {
                star = Some(pi);
                pi += 1;
                resume = ti;
            } else if pi < p.len() && p[pi] == t[ti] {
                pi += 1;
                ti += 1;
            } else if let Some(s) = star {
                pi = s + 1;
                resume += 1;
                ti = resume;
            } else {
                return false;
            }
        }
        while pi < p.len() && p[pi] == b'*' {
            pi += 1;
        }
        pi == p.len()
    }
}

/// True when `patterns` is empty (no constraint) or any pattern matches.
pub fn any_matches(patterns: &[Glob], text: &str) -> bool {
    patterns.is_empty() || patterns.iter().any(|g| g.matches(text))
}

#[cfg(test)]
mod tests {
    use super::Glob;

    #[test]
    fn stars_match_any_run_including_dots() {
        assert!(Glob::new("refund.*").matches("refund.create"));
        assert!(Glob::new("*.delete").matches("customer.delete"));
        assert!(Glob::new("*").matches(""));
        assert!(Glob::new("a*b*c").matches("axxbyyc"));
        assert!(!Glob::new("refund.*").matches("refunds.create"));
        assert!(!Glob::new("a*b").matches("ab.c"));
        assert!(!Glob::new("order.read").matches("order.reader"));
    }

    #[test]
    fn pathological_patterns_stay_polynomial() {
        let text = "a".repeat(10_000);
        let pattern = format!("{}b", "*a".repeat(50));
        assert!(!Glob::new(&pattern).matches(&text));
    }
}
