//! guard-mcp's policy module: the exported ABI the host (`guard_mcp/_policy/_host.py`) calls.
//!
//! The module keeps one policy. The host:
//!
//! 1. `gm_reserve(n) -> ptr`: grows the input buffer to at least `n` bytes and returns its address
//!    (the address changes only when the buffer grows, so the host calls this rarely).
//! 2. `gm_load(n) -> packed`: the input holds the 32-byte SHA-256 the host verified, then the
//!    bundle. The module hashes the bundle itself, refuses a mismatch, parses and keeps it.
//! 3. `gm_decide(n | full_trace << 31) -> packed`: the input holds one request (JSON); the output
//!    is the decision (JSON). One call per decision.
//! 4. `gm_score(factors) -> packed`: the risk of an action schema, no memory traffic.
//!
//! `packed` is `address << 32 | length` of the output buffer, which holds JSON: the decision, or
//! `{"error": "..."}`. A panic aborts (traps); the host turns every trap into a deny.

pub mod bundle;
pub mod eval;
pub mod glob;
pub mod risk;

use std::cell::RefCell;

use sha2::{Digest, Sha256};

struct State {
    input: Vec<u8>,
    output: Vec<u8>,
    policy: Option<bundle::Policy>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State { input: Vec::new(), output: Vec::new(), policy: None });
}

const FULL_TRACE: u32 = 1 << 31;

fn error_json(message: &str) -> Vec<u8> {
    let mut out = b"{\"error\":".to_vec();
    out.extend(serde_json::to_vec(message).unwrap_or_default());
    out.push(b'}');
    out
}

fn publish(state: &mut State, output: Vec<u8>) -> u64 {
    state.output = output;
    ((state.output.as_ptr() as u64) << 32) | state.output.len() as u64
}

#[no_mangle]
pub extern "C" fn gm_reserve(len: u32) -> u32 {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        let len = len as usize;
        if s.input.len() < len {
            s.input.resize(len, 0);
        }
        s.input.as_ptr() as u32
    })
}

/// Load and keep a bundle; on any error the previous policy is dropped, so a failed load can
/// never leave an older policy answering.
fn load(state: &mut State, len: usize) -> Vec<u8> {
    state.policy = None;
    if len < 32 || len > state.input.len() {
        return error_json("load: input is shorter than a digest");
    }
    let (expected, bundle_bytes) = state.input[..len].split_at(32);
    let actual = Sha256::digest(bundle_bytes);
    if actual.as_slice() != expected {
        return error_json("load: the bundle's SHA-256 differs from the digest the host verified");
    }
    match bundle::parse(bundle_bytes) {
        Ok(policy) => {
            let mut out = b"{\"ok\":".to_vec();
            out.extend(serde_json::to_vec(&policy.label).unwrap_or_default());
            out.push(b'}');
            state.policy = Some(policy);
            out
        }
        Err(e) => error_json(&e),
    }
}

#[no_mangle]
pub extern "C" fn gm_load(len: u32) -> u64 {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        let out = load(&mut s, len as usize);
        publish(&mut s, out)
    })
}

fn decide(state: &State, arg: u32) -> Vec<u8> {
    let full = arg & FULL_TRACE != 0;
    let len = (arg & !FULL_TRACE) as usize;
    let policy = match &state.policy {
        Some(p) => p,
        None => return error_json("decide: no policy loaded"),
    };
    if len > state.input.len() {
        return error_json("decide: request length exceeds the input buffer");
    }
    match serde_json::from_slice::<eval::Request>(&state.input[..len]) {
        Ok(req) => eval::render(policy, &req, full),
        Err(e) => error_json(&format!("decide: request is not valid: {}", e)),
    }
}

#[no_mangle]
pub extern "C" fn gm_decide(arg: u32) -> u64 {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        let out = decide(&s, arg);
        publish(&mut s, out)
    })
}

#[no_mangle]
pub extern "C" fn gm_score(packed: u32) -> u64 {
    match risk::unpack(packed) {
        Some((c, r, b, s)) => risk::pack(&risk::score(c, r, b, s)),
        None => u64::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh(bytes: &[u8], digest: &[u8]) -> State {
        let mut input = digest.to_vec();
        input.extend_from_slice(bytes);
        State { input, output: Vec::new(), policy: None }
    }

    const BUNDLE: &[u8] = br#"{"format":1,"policy":"p","version":1,"tier_defaults":true,"rules":[],
      "default":{"effect":"deny","reason":"no_rule_matched","approvers":null,"approval_ttl":null,"permit_ttl":300,"step_up":false}}"#;

    #[test]
    fn load_refuses_a_digest_mismatch() {
        let mut s = fresh(BUNDLE, &[0u8; 32]);
        let n = s.input.len();
        let out = String::from_utf8(load(&mut s, n)).unwrap();
        assert!(out.contains("differs"), "{}", out);
        assert!(s.policy.is_none());
    }

    #[test]
    fn load_then_decide() {
        let digest = Sha256::digest(BUNDLE);
        let mut s = fresh(BUNDLE, digest.as_slice());
        let n = s.input.len();
        let out = String::from_utf8(load(&mut s, n)).unwrap();
        assert_eq!(out, r#"{"ok":"p@1"}"#);
        let req = br#"{"action":"a.b","upstream":"u","tool":"t","actor":"x","category":"read","reversibility":"full","blast_radius":"single","sensitivity":"public","arguments":{}}"#;
        s.input = req.to_vec();
        let out = String::from_utf8(decide(&s, req.len() as u32)).unwrap();
        assert!(out.contains(r#""effect":"allow""#), "{}", out);
        assert!(out.contains(r#""reason":"tier_default_low""#), "{}", out);
        let bad = String::from_utf8(decide(&s, 3)).unwrap();
        assert!(bad.starts_with(r#"{"error":"#), "{}", bad);
    }
}
