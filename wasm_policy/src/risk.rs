//! Risk scoring: the one place the weights live.
//!
//! A score is the sum of four factors (0-100); the tier follows from the score, with two floors.
//!
//! | factor        | values (points)                                                                  | max |
//! |---------------|----------------------------------------------------------------------------------|-----|
//! | category      | read 0, write 15, communicate 20, unknown 30, destructive 35, financial 40, permission 40 | 40 |
//! | reversibility | full 0, partial 12, none 25                                                      | 25  |
//! | blast_radius  | single 0, many 10, all 20                                                        | 20  |
//! | sensitivity   | public 0, internal 5, confidential 10, restricted 15                            | 15  |
//!
//! Tiers: score < 30 LOW, < 70 MEDIUM, otherwise HIGH. Financial and permission actions are
//! always HIGH; an `unknown` action is never LOW (it is at least MEDIUM).
//!
//! `guard_mcp/_policy/_reference.py` mirrors this table; a test compares every combination.

use serde::Deserialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    Read,
    Write,
    Communicate,
    Destructive,
    Financial,
    Permission,
    Unknown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reversibility {
    Full,
    Partial,
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlastRadius {
    Single,
    Many,
    All,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sensitivity {
    Public,
    Internal,
    Confidential,
    Restricted,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum Tier {
    #[serde(rename = "LOW")]
    Low,
    #[serde(rename = "MEDIUM")]
    Medium,
    #[serde(rename = "HIGH")]
    High,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Low => "LOW",
            Tier::Medium => "MEDIUM",
            Tier::High => "HIGH",
        }
    }

    pub fn code(self) -> u64 {
        match self {
            Tier::Low => 0,
            Tier::Medium => 1,
            Tier::High => 2,
        }
    }
}

pub const LOW_BELOW: u32 = 30;
pub const MEDIUM_BELOW: u32 = 70;

pub fn category_points(c: Category) -> u32 {
    match c {
        Category::Read => 0,
        Category::Write => 15,
        Category::Communicate => 20,
        Category::Unknown => 30,
        Category::Destructive => 35,
        Category::Financial => 40,
        Category::Permission => 40,
    }
}

pub fn reversibility_points(r: Reversibility) -> u32 {
    match r {
        Reversibility::Full => 0,
        Reversibility::Partial => 12,
        Reversibility::None => 25,
    }
}

pub fn blast_radius_points(b: BlastRadius) -> u32 {
    match b {
        BlastRadius::Single => 0,
        BlastRadius::Many => 10,
        BlastRadius::All => 20,
    }
}

pub fn sensitivity_points(s: Sensitivity) -> u32 {
    match s {
        Sensitivity::Public => 0,
        Sensitivity::Internal => 5,
        Sensitivity::Confidential => 10,
        Sensitivity::Restricted => 15,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Risk {
    pub score: u32,
    pub tier: Tier,
    pub category: u32,
    pub reversibility: u32,
    pub blast_radius: u32,
    pub sensitivity: u32,
}

pub fn score(c: Category, r: Reversibility, b: BlastRadius, s: Sensitivity) -> Risk {
    let (fc, fr, fb, fs) = (
        category_points(c),
        reversibility_points(r),
        blast_radius_points(b),
        sensitivity_points(s),
    );
    let total = fc + fr + fb + fs;
    let mut tier = if total < LOW_BELOW {
        Tier::Low
    } else if total < MEDIUM_BELOW {
        Tier::Medium
    } else {
        Tier::High
    };
    // Money and privileges are HIGH whatever the other factors say.
    if c == Category::Financial || c == Category::Permission {
        tier = Tier::High;
    }
    // An action nobody described cannot be trusted to be harmless.
    if c == Category::Unknown && tier == Tier::Low {
        tier = Tier::Medium;
    }
    Risk {
        score: total,
        tier,
        category: fc,
        reversibility: fr,
        blast_radius: fb,
        sensitivity: fs,
    }
}

/// Decode the packed argument of `gm_score`: one byte per factor, in declaration order.
pub fn unpack(packed: u32) -> Option<(Category, Reversibility, BlastRadius, Sensitivity)> {
    let c = match packed & 0xff {
        0 => Category::Read,
        1 => Category::Write,
        2 => Category::Communicate,
        3 => Category::Destructive,
        4 => Category::Financial,
        5 => Category::Permission,
        6 => Category::Unknown,
        _ => return None,
    };
    let r = match (packed >> 8) & 0xff {
        0 => Reversibility::Full,
        1 => Reversibility::Partial,
        2 => Reversibility::None,
        _ => return None,
    };
    let b = match (packed >> 16) & 0xff {
        0 => BlastRadius::Single,
        1 => BlastRadius::Many,
        2 => BlastRadius::All,
        _ => return None,
    };
    let s = match (packed >> 24) & 0xff {
        0 => Sensitivity::Public,
        1 => Sensitivity::Internal,
        2 => Sensitivity::Confidential,
        3 => Sensitivity::Restricted,
        _ => return None,
    };
    Some((c, r, b, s))
}

/// score | tier << 8 | category << 16 | reversibility << 24 | blast_radius << 32 | sensitivity << 40
pub fn pack(risk: &Risk) -> u64 {
    (risk.score as u64)
        | (risk.tier.code() << 8)
        | ((risk.category as u64) << 16)
        | ((risk.reversibility as u64) << 24)
        | ((risk.blast_radius as u64) << 32)
        | ((risk.sensitivity as u64) << 40)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factors_stay_within_their_caps() {
        let r = score(Category::Permission, Reversibility::None, BlastRadius::All, Sensitivity::Restricted);
        assert_eq!(r.score, 100);
        assert_eq!(r.tier, Tier::High);
    }

    #[test]
    fn financial_is_always_high() {
        let r = score(Category::Financial, Reversibility::Full, BlastRadius::Single, Sensitivity::Public);
        assert!(r.score < MEDIUM_BELOW);
        assert_eq!(r.tier, Tier::High);
    }

    #[test]
    fn unknown_is_never_low() {
        let r = score(Category::Unknown, Reversibility::Full, BlastRadius::Single, Sensitivity::Public);
        assert_eq!(r.tier, Tier::Medium);
    }

    #[test]
    fn a_plain_read_is_low() {
        let r = score(Category::Read, Reversibility::Full, BlastRadius::Single, Sensitivity::Confidential);
        assert_eq!((r.score, r.tier), (10, Tier::Low));
    }

    #[test]
    fn unpack_rejects_out_of_range_bytes() {
        assert!(unpack(7).is_none());
        assert!(unpack(3 << 8).is_none());
        assert!(unpack(0x0302_0100 | 6).is_some());
    }
}
