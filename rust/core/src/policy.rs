//! Access policies: Rego (through `regorus`, with no network builtins and a
//! time limit), stored in the envelope, covered by the MAC and the
//! signature, and evaluated before any data key is unwrapped. See
//! FORMAT.md §3.5 and README "Access policy".
//!
//! A policy is a Rego module in `package cryptotensors`. It must define
//! `allow`; the load proceeds only when `allow` is `true`. It may define a
//! string `reason`, reported when the load is denied. The input document is
//! built by the loader (time, host, platform, framework, device, loader,
//! tensors, caller claims).
//!
//! An in-process policy binds honest loaders; a process that holds the key
//! can skip it. Real enforcement belongs to the key service, which releases
//! keys only to attested callers.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use regorus::utils::limits::ExecutionTimerConfig;
use regorus::{Engine, Value};
use ring::digest;

use crate::error::{Error, Result};

/// The rule that must be `true`.
pub const ALLOW_RULE: &str = "data.cryptotensors.allow";
/// The optional rule explaining a denial.
pub const REASON_RULE: &str = "data.cryptotensors.reason";
/// Largest policy accepted, in bytes.
pub const MAX_POLICY_BYTES: usize = 64 * 1024;
/// Wall-clock budget of one evaluation.
pub const TIME_LIMIT: Duration = Duration::from_millis(250);

/// A compiled policy, shared by every open of files that carry it.
#[derive(Clone)]
pub struct Policy {
    engine: Engine,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Policy(..)")
    }
}

fn bad(why: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("invalid policy: {why}"))
}

impl Policy {
    /// Compiles a policy, or returns the one compiled before for the same
    /// text (the engine is built once per policy, not once per open).
    pub fn compile(text: &str) -> Result<Policy> {
        static CACHE: OnceLock<Mutex<HashMap<[u8; 32], Arc<Policy>>>> = OnceLock::new();
        let mut id = [0u8; 32];
        id.copy_from_slice(digest::digest(&digest::SHA256, text.as_bytes()).as_ref());
        let cache = CACHE.get_or_init(Default::default);
        if let Some(p) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&id) {
            return Ok((**p).clone());
        }
        if text.len() > MAX_POLICY_BYTES {
            return Err(bad(format!("larger than {MAX_POLICY_BYTES} bytes")));
        }
        let mut engine = Engine::new();
        engine.set_strict_builtin_errors(true);
        engine.set_execution_timer_config(ExecutionTimerConfig {
            limit: TIME_LIMIT,
            check_interval: NonZeroU32::new(64).expect("non-zero"),
        });
        let package = engine
            .add_policy("policy.rego".into(), text.into())
            .map_err(bad)?;
        if package != "data.cryptotensors" {
            return Err(bad(format!(
                "the module must be `package cryptotensors`, not {package}"
            )));
        }
        let policy = Policy { engine };
        let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= 64 {
            cache.clear();
        }
        cache.insert(id, Arc::new(policy.clone()));
        Ok(policy)
    }

    /// Evaluates the policy on an input document (JSON text). `Ok` only when
    /// `allow` is exactly `true`; a failure to evaluate is a denial too.
    pub fn check(&self, input_json: &str) -> Result<()> {
        let mut engine = self.engine.clone();
        let input = Value::from_json_str(input_json)
            .map_err(|e| Error::InvalidArgument(format!("policy input: {e}")))?;
        engine.set_input(input);
        let allow = engine
            .eval_rule(ALLOW_RULE.into())
            .map_err(|e| Error::PolicyDenied(format!("the policy could not be evaluated: {e}")))?;
        if allow == Value::Bool(true) {
            return Ok(());
        }
        let reason = match engine.eval_rule(REASON_RULE.into()) {
            Ok(Value::String(s)) => s.to_string(),
            _ => "the policy's allow rule is not true".into(),
        };
        Err(Error::PolicyDenied(reason))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPIRY: &str = r#"
package cryptotensors
import rego.v1
default allow := false
allow if time.parse_rfc3339_ns(input.time) < time.parse_rfc3339_ns("2030-01-01T00:00:00Z")
reason := "this model's license expired on 2030-01-01" if not allow
"#;

    #[test]
    fn allow_and_deny_with_reason() {
        let p = Policy::compile(EXPIRY).unwrap();
        p.check(r#"{"time": "2026-11-25T00:00:00Z"}"#).unwrap();
        match p.check(r#"{"time": "2031-01-01T00:00:00Z"}"#) {
            Err(Error::PolicyDenied(r)) => assert!(r.contains("expired")),
            other => panic!("{other:?}"),
        }
        // A missing input field leaves allow undefined: denied.
        assert!(matches!(p.check("{}"), Err(Error::PolicyDenied(_))));
    }

    #[test]
    fn rejects_bad_policies() {
        assert!(Policy::compile("package other\nallow := true").is_err());
        assert!(Policy::compile("package cryptotensors\nallow := ").is_err());
        assert!(Policy::compile(&"#".repeat(MAX_POLICY_BYTES + 1)).is_err());
    }

    #[test]
    fn runaway_policies_are_stopped() {
        // 4e8 iterations: minutes without the execution timer.
        let p = Policy::compile(
            "package cryptotensors\nimport rego.v1\nallow if count([1 | some x in numbers.range(1, 20000); some y in numbers.range(1, 20000)]) > 0",
        )
        .unwrap();
        match p.check("{}") {
            Err(Error::PolicyDenied(r)) => assert!(r.contains("could not be evaluated"), "{r}"),
            other => panic!("{other:?}"),
        }
    }
}
