//! Access policies: Rego (through `regorus`), stored in the envelope,
//! covered by the MAC and the signature, and run in a sandbox. See
//! FORMAT.md §3.5 and README "Access policy".
//!
//! A policy is a Rego v1 module in `package cryptotensors`. It must define
//! `allow`; the load proceeds only when `allow` is `true`. It may define a
//! string `reason`, reported when the load is denied. The input document is
//! built by the loader (time, host, platform, framework, device, loader,
//! tensors, caller claims).
//!
//! The reader evaluates a policy only once the file is authenticated
//! (reader.rs), and every policy, authenticated or not, runs in the sandbox
//! below: the parser is exponential in bracket nesting, and several
//! builtins allocate in proportion to the *values* of their arguments, so
//! a publisher's honest mistake could otherwise hang or abort the loader.
//!
//! An in-process policy binds honest loaders; a process that holds the key
//! can skip it. Real enforcement belongs to the key service, which releases
//! keys only to attested callers.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

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
/// Deepest nesting of `(`, `[` and `{` accepted. regorus backtracks on
/// `[` and `{`, doubling the parse time at each level.
pub const MAX_NESTING: usize = 12;
/// Budget of the parse-cost estimate: every `(`, `[` or `{` opened at depth
/// `d` (1 outermost) costs `2^d`. Measured at 0.3 to 3 µs a unit (idle to
/// loaded machine), so a policy at the budget parses in 3 to 25 ms
/// whatever its shape.
pub const PARSE_BUDGET: u64 = 1 << 13;
/// Most operators (`.`, `-`, `+`, `==`, `in`, ...) in one expression,
/// counting those of the brackets it is in: parser and evaluator recurse
/// once per operator, and a few thousand overflow a 2 MiB thread stack.
pub const MAX_OPERATORS: usize = 64;
/// Most rules (definitions, `default`s, `else` branches and functions,
/// counted as lines that start one at the top level): rules that refer to
/// each other evaluate recursively, about 4 KiB of stack a level.
pub const MAX_RULES: usize = 256;
/// Stack of the thread a file's policy runs on, whoever the caller is.
const STACK_BYTES: usize = 32 << 20;
/// One wall-clock deadline for compiling and evaluating a policy at a load.
pub const DEADLINE: Duration = Duration::from_secs(1);
/// Longest reason (and evaluation error) reported, in characters.
pub const MAX_REASON_CHARS: usize = 256;
/// Claim strings at least this long are redacted from reasons.
pub const MIN_REDACTED_CLAIM: usize = 8;
/// Most elements `numbers.range` and `numbers.range_step` may produce.
pub const MAX_RANGE: f64 = 10_000.0;
/// Largest string `concat`, `replace` and `sprintf` may produce, in bytes.
pub const MAX_BUILT_STRING: usize = 64 * 1024;
/// Largest width or precision in a `sprintf` format.
pub const MAX_FORMAT_WIDTH: u32 = 100;
/// Largest shift of `bits.lsh`.
pub const MAX_SHIFT: f64 = 64.0;

/// Builtins a policy may not call: their cost grows with the values of
/// their arguments, or as the product of their sizes, in a single call
/// that the deadline cannot interrupt.
pub const REMOVED_BUILTINS: &[(&str, u8)] = &[
    ("net.cidr_expand", 1),
    ("regex.replace", 3),
    ("strings.replace_n", 2),
    ("json.marshal_with_options", 2),
    ("strings.any_prefix_match", 2),
    ("strings.any_suffix_match", 2),
];

/// Builtins available with a cap on their arguments (FORMAT.md §3.5).
const CAPPED_BUILTINS: &[(&str, u8, Cap)] = &[
    ("numbers.range", 2, range_cap),
    ("numbers.range_step", 3, range_cap),
    ("bits.lsh", 2, shift_cap),
    ("concat", 2, concat_cap),
    ("replace", 3, replace_cap),
    ("sprintf", 2, sprintf_cap),
];

/// Checks a capped builtin's arguments: `Err` with why they are refused.
type Cap = fn(&[Value]) -> std::result::Result<(), String>;

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
    /// Checks a policy against the sandbox's limits and compiles it, or
    /// returns the one compiled before for the same text (the engine is
    /// built once per policy, not once per open). A bad policy is
    /// [`Error::InvalidArgument`]: the writer's caller gave it.
    pub fn compile(text: &str) -> Result<Policy> {
        static CACHE: OnceLock<Mutex<HashMap<[u8; 32], Arc<Policy>>>> = OnceLock::new();
        let mut id = [0u8; 32];
        id.copy_from_slice(digest::digest(&digest::SHA256, text.as_bytes()).as_ref());
        let cache = CACHE.get_or_init(Default::default);
        if let Some(p) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&id) {
            return Ok((**p).clone());
        }
        scan(text).map_err(bad)?;
        let mut engine = Engine::new();
        // Rego v1 is regorus' default; say so, the format depends on it.
        engine.set_rego_v0(false);
        engine.set_strict_builtin_errors(true);
        // `print` would write to stderr: the input (claims) into logs.
        engine.set_gather_prints(true);
        for &(name, nargs) in REMOVED_BUILTINS {
            let refuse = move |_: Vec<Value>| -> anyhow::Result<Value> {
                anyhow::bail!("the builtin {name} is not available to policies")
            };
            engine
                .add_extension(name.into(), nargs, Box::new(refuse))
                .map_err(bad)?;
        }
        for &(name, nargs, cap) in CAPPED_BUILTINS {
            let real = Delegate::new(name, nargs).map_err(bad)?;
            let capped = move |args: Vec<Value>| -> anyhow::Result<Value> {
                cap(&args).map_err(|why| anyhow::anyhow!("{name}: {why}"))?;
                real.call(args)
            };
            engine
                .add_extension(name.into(), nargs, Box::new(capped))
                .map_err(bad)?;
        }
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

    /// Compiles and evaluates a file's policy within one [`DEADLINE`]. Any
    /// failure, an invalid policy included, is [`Error::PolicyDenied`]: a
    /// policy can only deny, and the file's text is no argument of the
    /// caller's.
    ///
    /// It runs on a thread of its own, with a known stack (the caller's
    /// may be small), and the caller waits no longer than the deadline even
    /// if the parser, which cannot be interrupted, is still at work.
    pub fn enforce(text: &str, input_json: &str) -> Result<()> {
        let deadline = Instant::now() + DEADLINE;
        let (text, input) = (text.to_string(), input_json.to_string());
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("cryptotensors-policy".into())
            .stack_size(STACK_BYTES)
            .spawn(move || {
                let outcome = Policy::compile(&text)
                    .map_err(|e| match e {
                        Error::InvalidArgument(why) => {
                            Error::PolicyDenied(format!("the file's {}", printable(&why, &[])))
                        }
                        other => other,
                    })
                    .and_then(|p| p.check_by(&input, deadline));
                // The caller may have given up waiting: nothing to tell.
                let _ = tx.send(outcome);
            })
            .map_err(|e| Error::PolicyDenied(format!("the policy could not be run: {e}")))?;
        let left = deadline.saturating_duration_since(Instant::now());
        rx.recv_timeout(left).unwrap_or_else(|_| {
            Err(Error::PolicyDenied(
                "the policy ran past its deadline".into(),
            ))
        })
    }

    /// Evaluates the policy on an input document (JSON text), within one
    /// [`DEADLINE`] from now. `Ok` only when `allow` is exactly `true`; a
    /// failure to evaluate is a denial too. The crate itself always goes
    /// through [`Policy::enforce`]; this is for the tests' compiled policies.
    #[cfg(test)]
    pub fn check(&self, input_json: &str) -> Result<()> {
        self.check_by(input_json, Instant::now() + DEADLINE)
    }

    fn check_by(&self, input_json: &str, deadline: Instant) -> Result<()> {
        let input = Value::from_json_str(input_json)
            .map_err(|e| Error::InvalidArgument(format!("policy input: {e}")))?;
        let secrets = claim_strings(input_json);
        let mut engine = self.engine.clone();
        engine.set_input(input);
        let late = || Error::PolicyDenied("the policy ran past its deadline".into());
        let eval = |engine: &mut Engine, rule: &str| {
            let left = deadline
                .checked_duration_since(Instant::now())
                .ok_or_else(late)?;
            engine.set_execution_timer_config(ExecutionTimerConfig {
                limit: left,
                // Every tick: one step may be a builtin call of a few ms.
                check_interval: NonZeroU32::MIN,
            });
            let v = engine.eval_rule(rule.into());
            if Instant::now() > deadline {
                return Err(late());
            }
            v.map_err(|e| {
                let why = printable(&e.to_string(), &secrets);
                Error::PolicyDenied(format!("the policy could not be evaluated: {why}"))
            })
        };
        if eval(&mut engine, ALLOW_RULE)? == Value::Bool(true) {
            return Ok(());
        }
        let reason = match eval(&mut engine, REASON_RULE) {
            Ok(Value::String(s)) => printable(&s, &secrets),
            _ => "the policy's allow rule is not true".into(),
        };
        Err(Error::PolicyDenied(reason))
    }
}

/// The lexical checks made before the parser sees a policy: size, nesting
/// depth, parse cost, operator chains, removed builtins. Strings, raw
/// strings and comments are skipped, so what they hold does not count.
fn scan(text: &str) -> std::result::Result<(), String> {
    if text.len() > MAX_POLICY_BYTES {
        return Err(format!("larger than {MAX_POLICY_BYTES} bytes"));
    }
    let b = text.as_bytes();
    let (mut i, mut cost, mut rules, mut line_start) = (0, 0u64, 0, true);
    // Per open bracket: which one, and the operators of the expression in
    // progress at that level. The parser and the evaluator recurse once per
    // operator of an expression, nested brackets included.
    let mut levels: Vec<(u8, usize)> = vec![(b'{', 0)];
    let chain = |levels: &mut Vec<(u8, usize)>| {
        let top = levels.len() - 1;
        levels[top].1 += 1;
        match levels.iter().map(|l| l.1).sum::<usize>() {
            n if n > MAX_OPERATORS => Err(format!(
                "more than {MAX_OPERATORS} operators in one expression"
            )),
            _ => Ok(()),
        }
    };
    while i < b.len() {
        let starts_line = std::mem::replace(&mut line_start, false);
        match b[i] {
            b' ' | b'\t' | b'\r' => line_start = starts_line,
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' && b[i] != b'\n' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'`' => {
                i += 1;
                while i < b.len() && b[i] != b'`' {
                    i += 1;
                }
            }
            c @ (b'(' | b'[' | b'{') => {
                levels.push((c, 0));
                let depth = levels.len() - 1;
                if depth > MAX_NESTING {
                    return Err(format!("nested deeper than {MAX_NESTING} brackets"));
                }
                cost += 1 << depth;
                if cost > PARSE_BUDGET {
                    return Err("too many deeply nested brackets".into());
                }
            }
            b')' | b']' | b'}' if levels.len() > 1 => {
                levels.pop();
            }
            b',' | b';' => levels.last_mut().expect("never empty").1 = 0,
            b'\n' => {
                line_start = true;
                // A line ends an expression in a body, not inside ( or [.
                if let Some(l) = levels.last_mut().filter(|l| l.0 == b'{') {
                    l.1 = 0;
                }
            }
            b'-' | b'.' => chain(&mut levels)?,
            b'+' | b'*' | b'/' | b'%' | b'&' | b'|' | b'<' | b'>' | b'=' | b'!' | b':' => {
                while i + 1 < b.len() && b"+*/%&|<>=!:".contains(&b[i + 1]) {
                    i += 1;
                }
                chain(&mut levels)?;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                // A dotted name, spaces around the dots allowed: the
                // parser may accept them, and refusing more is safe.
                let mut name = String::new();
                let mut dots = 0;
                loop {
                    let start = i;
                    while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                        i += 1;
                    }
                    name.push_str(&text[start..i]);
                    let mut j = i;
                    while j < b.len() && (b[j] == b' ' || b[j] == b'\t') {
                        j += 1;
                    }
                    if j < b.len() && b[j] == b'.' {
                        j += 1;
                        while j < b.len() && (b[j] == b' ' || b[j] == b'\t') {
                            j += 1;
                        }
                        if j < b.len() && (b[j].is_ascii_alphabetic() || b[j] == b'_') {
                            name.push('.');
                            dots += 1;
                            i = j;
                            continue;
                        }
                    }
                    break;
                }
                if starts_line && levels.len() == 1 && name != "package" && name != "import" {
                    rules += 1;
                    if rules > MAX_RULES {
                        return Err(format!("more than {MAX_RULES} rules"));
                    }
                }
                if let Some((removed, _)) = REMOVED_BUILTINS.iter().find(|(n, _)| *n == name) {
                    return Err(format!(
                        "the builtin {removed} is not available to policies"
                    ));
                }
                for _ in 0..dots {
                    chain(&mut levels)?;
                }
                if ["in", "with", "else", "not"].contains(&name.as_str()) {
                    chain(&mut levels)?;
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// The real builtin behind a capped one, called through an engine of its
/// own (regorus offers no other way to reach a builtin it shadows).
#[derive(Clone)]
struct Delegate {
    engine: Engine,
    rule: String,
}

impl Delegate {
    fn new(name: &str, nargs: u8) -> anyhow::Result<Delegate> {
        let args: Vec<String> = (0..nargs).map(|i| format!("input[{i}]")).collect();
        let mut engine = Engine::new();
        engine.set_strict_builtin_errors(true);
        engine.add_policy(
            "builtin.rego".into(),
            format!("package builtin\nr := {name}({})", args.join(", ")),
        )?;
        Ok(Delegate {
            engine,
            rule: "data.builtin.r".into(),
        })
    }

    fn call(&self, args: Vec<Value>) -> anyhow::Result<Value> {
        let mut engine = self.engine.clone();
        engine.set_input(Value::from(args));
        engine.eval_rule(self.rule.clone())
    }
}

fn number(v: &Value) -> std::result::Result<f64, String> {
    v.as_f64()
        .ok()
        .filter(|n| n.is_finite())
        .ok_or_else(|| "arguments must be numbers within the caps".into())
}

fn range_cap(args: &[Value]) -> std::result::Result<(), String> {
    let span = (number(&args[1])? - number(&args[0])?).abs();
    let step = match args.get(2) {
        Some(s) => number(s)?,
        None => 1.0,
    };
    if step > 0.0 && span / step < MAX_RANGE {
        Ok(())
    } else {
        Err(format!("more than {MAX_RANGE} elements"))
    }
}

fn shift_cap(args: &[Value]) -> std::result::Result<(), String> {
    match number(&args[1])? {
        s if s <= MAX_SHIFT => Ok(()),
        _ => Err(format!("shift larger than {MAX_SHIFT}")),
    }
}

fn string_len(v: &Value) -> std::result::Result<usize, String> {
    v.as_string()
        .map(|s| s.len())
        .map_err(|_| "arguments must be strings".into())
}

fn built(len: Option<usize>) -> std::result::Result<(), String> {
    match len {
        Some(n) if n <= MAX_BUILT_STRING => Ok(()),
        _ => Err(format!("result longer than {MAX_BUILT_STRING} bytes")),
    }
}

fn concat_cap(args: &[Value]) -> std::result::Result<(), String> {
    let sep = string_len(&args[0])?;
    let items: Vec<&Value> = match (&args[1].as_array(), &args[1].as_set()) {
        (Ok(a), _) => a.iter().collect(),
        (_, Ok(s)) => s.iter().collect(),
        _ => return Err("the second argument must be an array or a set".into()),
    };
    let mut total = Some(sep.saturating_mul(items.len()));
    for item in items {
        total = total.and_then(|t| t.checked_add(string_len(item).ok()?));
    }
    built(total)
}

fn replace_cap(args: &[Value]) -> std::result::Result<(), String> {
    let (s, old, new) = (
        args[0].as_string(),
        args[1].as_string(),
        args[2].as_string(),
    );
    let (Ok(s), Ok(old), Ok(new)) = (s, old, new) else {
        return Err("arguments must be strings".into());
    };
    // An empty `old` matches between every two characters.
    let matches = match old.len() {
        0 => s.chars().count() + 1,
        _ => s.matches(old.as_ref()).count(),
    };
    built(
        matches
            .checked_mul(new.len())
            .and_then(|n| n.checked_add(s.len())),
    )
}

fn sprintf_cap(args: &[Value]) -> std::result::Result<(), String> {
    let format = args[0]
        .as_string()
        .map_err(|_| "the format must be a string")?;
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            continue;
        }
        // Widths and precisions: regorus pads to them, and wraps a `u32`.
        let mut width = 0u32;
        while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit() || **d == '.') {
            chars.next();
            width = match d.to_digit(10) {
                Some(d) => width.saturating_mul(10).saturating_add(d),
                None => 0,
            };
            if width > MAX_FORMAT_WIDTH {
                return Err(format!("width or precision above {MAX_FORMAT_WIDTH}"));
            }
        }
        chars.next();
    }
    // `%v` of the arguments is at most their JSON length, itself bounded
    // by the values the policy could build before the call.
    Ok(())
}

/// Every string in the input's `claims`, long enough to be a secret (a
/// token): a reason must not carry them into logs.
fn claim_strings(input_json: &str) -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::String(s) if s.len() >= MIN_REDACTED_CLAIM => out.push(s.clone()),
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            serde_json::Value::Object(o) => o.values().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let Ok(doc) = serde_json::from_str::<serde_json::Value>(input_json) {
        if let Some(claims) = doc.get("claims") {
            walk(claims, &mut out);
        }
    }
    out
}

/// A policy's text fit for an error message: claim strings redacted,
/// control characters escaped, at most [`MAX_REASON_CHARS`] characters.
fn printable(text: &str, secrets: &[String]) -> String {
    let mut text = text.to_string();
    for s in secrets {
        text = text.replace(s.as_str(), "[redacted]");
    }
    let mut out = String::new();
    let mut n = 0;
    for c in text.chars() {
        let shown: Vec<char> = match c.is_control() {
            true => c.escape_default().collect(),
            false => vec![c],
        };
        n += shown.len();
        if n > MAX_REASON_CHARS {
            out.push('…');
            break;
        }
        out.extend(shown);
    }
    out
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

    fn with_body(body: &str) -> String {
        format!("package cryptotensors\nimport rego.v1\n{body}\n")
    }

    fn denial(text: &str, input: &str) -> String {
        match Policy::enforce(text, input) {
            Err(Error::PolicyDenied(r)) => r,
            other => panic!("{other:?}"),
        }
    }

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
        // Rego v0 syntax (a rule body without `if`) is not accepted.
        assert!(Policy::compile("package cryptotensors\nallow { true }").is_err());
        // A file's invalid policy is a denial, not a caller's mistake.
        let r = denial("package cryptotensors\nallow := ", "{}");
        assert!(r.contains("invalid policy"), "{r}");
    }

    #[test]
    fn size_cap_counts_comments_too() {
        let at = format!(
            "package cryptotensors\nallow := true\n#{}",
            "x".repeat(60_000)
        );
        Policy::compile(&at).unwrap();
        let over = format!("{at}{}", "x".repeat(MAX_POLICY_BYTES));
        let err = Policy::compile(&over).unwrap_err().to_string();
        assert!(err.contains("larger than"), "{err}");
    }

    #[test]
    fn nesting_is_capped_before_parsing() {
        let nested =
            |d: usize| with_body(&format!("allow := {}true{}", "[".repeat(d), "]".repeat(d)));
        Policy::compile(&nested(MAX_NESTING - 1)).unwrap();
        let t = Instant::now();
        let err = Policy::compile(&nested(30_000)).unwrap_err().to_string();
        assert!(err.contains("nested deeper"), "{err}");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        // Brackets in strings, raw strings and comments do not count.
        let quoted = "[".repeat(100);
        let text = with_body(&format!(
            "a := \"{quoted}\\\"{quoted}\"\nb := `{quoted}`\n# {quoted}\nallow := true"
        ));
        Policy::compile(&text).unwrap();
    }

    #[test]
    fn parse_cost_is_bounded_at_the_caps() {
        // The worst shapes just under the caps: one expression at the depth
        // cap, and many shallower ones filling the size cap. Both are
        // refused or parse fast; none takes seconds.
        let one = |d: usize| format!("{}1{}", "[{".repeat(d / 2), "}]".repeat(d / 2));
        for d in [4, 6, 8, 10, 12] {
            let mut text = with_body("allow := true");
            let mut n = 0;
            while text.len() + 40 < MAX_POLICY_BYTES {
                text.push_str(&format!("x{n} := {}\n", one(d)));
                n += 1;
            }
            let t = Instant::now();
            let outcome = Policy::compile(&text).map(|_| ());
            let took = t.elapsed();
            assert!(
                took < Duration::from_secs(5),
                "depth {d}: {took:?} {outcome:?}"
            );
        }
    }

    #[test]
    fn rules_are_capped() {
        // Each rule refers to the one before: evaluated recursively.
        let chain = |n: usize| {
            let rules: String = (0..n)
                .map(|i| format!("r{} := r{i} + 1\n", i + 1))
                .collect();
            with_body(&format!("r0 := 0\n{rules}allow := r{n} == {n}"))
        };
        Policy::enforce(&chain(MAX_RULES - 3), "{}").unwrap();
        let err = Policy::compile(&chain(3000)).unwrap_err().to_string();
        assert!(err.contains("rules"), "{err}");
        // Rules inside a body are statements, not rules.
        let body: String = (0..1000).map(|i| format!("  x{i} := {i}\n")).collect();
        Policy::compile(&with_body(&format!("allow if {{\n{body}}}"))).unwrap();
    }

    #[test]
    fn operator_chains_are_capped() {
        // Thousands of operators in one expression overflow the stack of
        // the parser or the evaluator (a process abort, not an error).
        for op in ["\n+ 1", "\n== 1", "\n| {1}", "-\n", "\n.a", " in [1]"] {
            let long = with_body(&format!("allow if count([(1{})]) > 0", op.repeat(5000)));
            let err = Policy::compile(&long).unwrap_err().to_string();
            assert!(err.contains("operators"), "{op:?}: {err}");
        }
        // At the cap, on a small thread stack, it evaluates.
        let at = with_body(&format!(
            "allow if (0{}) == {}",
            "\n+ 1".repeat(MAX_OPERATORS - 2),
            MAX_OPERATORS - 2
        ));
        std::thread::Builder::new()
            .stack_size(512 * 1024)
            .spawn(move || Policy::enforce(&at, "{}"))
            .unwrap()
            .join()
            .unwrap()
            .unwrap();
        // Commas and body lines end an expression: long sets and bodies pass.
        let set = (0..2000)
            .map(|i| format!("\"h{i}\""))
            .collect::<Vec<_>>()
            .join(",\n");
        let body = (0..500)
            .map(|i| format!("  x{i} := {i} + 1\n"))
            .collect::<String>();
        Policy::compile(&with_body(&format!(
            "hosts := {{{set}}}\nallow if {{\n{body}}}"
        )))
        .unwrap();
    }

    #[test]
    fn deadline_covers_everything() {
        // 4e8 iterations: minutes without the execution timer.
        let text = with_body(
            "allow if count([1 | some x in numbers.range(1, 9999); some y in numbers.range(1, 9999); some z in numbers.range(1, 9999)]) > 0",
        );
        let t = Instant::now();
        let r = denial(&text, "{}");
        assert!(
            r.contains("deadline") || r.contains("could not be evaluated"),
            "{r}"
        );
        assert!(
            t.elapsed() < DEADLINE + Duration::from_secs(5),
            "{:?}",
            t.elapsed()
        );
    }

    #[test]
    fn ranges_are_capped() {
        for call in [
            "numbers.range(1, 1e15)",
            "numbers.range(0, 4611686018427387904)",
            "numbers.range(1, 8e7)",
            "numbers.range_step(0, 1e9, 1)",
            "numbers.range_step(0, 10, 0)",
        ] {
            let t = Instant::now();
            let r = denial(&with_body(&format!("allow if count({call}) > 0")), "{}");
            assert!(r.contains("could not be evaluated"), "{call}: {r}");
            assert!(
                t.elapsed() < Duration::from_secs(2),
                "{call}: {:?}",
                t.elapsed()
            );
        }
        // Within the cap, the real builtin answers.
        let p = with_body("allow if { count(numbers.range(1, 100)) == 100; numbers.range_step(0, 10, 5) == [0, 5, 10] }");
        Policy::enforce(&p, "{}").unwrap();
    }

    #[test]
    fn string_builders_and_shifts_are_capped() {
        for call in [
            "concat(\"xxxxxxxxxxxxxxxx\", [s | some s in split(concat(\"\", [\"a\" | some _ in numbers.range(1, 9000)]), \"\")])",
            "replace(concat(\"\", [\"a\" | some _ in numbers.range(1, 9000)]), \"\", \"xxxxxxxxxx\")",
            "sprintf(\"%4000000000d\", [1])",
            "sprintf(\"%.999999f\", [1])",
            "bits.lsh(1, 4000000000)",
        ] {
            let t = Instant::now();
            let r = denial(&with_body(&format!("allow if count({call}) > 0")), "{}");
            assert!(r.contains("could not be evaluated"), "{call}: {r}");
            assert!(t.elapsed() < Duration::from_secs(2), "{call}: {:?}", t.elapsed());
        }
        let p = with_body(
            "allow if { concat(\", \", {\"b\", \"a\"}) == \"a, b\"; replace(\"aXa\", \"X\", \"-\") == \"a-a\"; sprintf(\"%05d|%s\", [42, \"x\"]) == \"00042|x\"; bits.lsh(1, 10) == 1024 }",
        );
        Policy::enforce(&p, "{}").unwrap();
    }

    #[test]
    fn removed_builtins_are_refused_at_compile_and_at_run() {
        for (name, _) in REMOVED_BUILTINS {
            let err = Policy::compile(&with_body(&format!("allow if {name}(1)")))
                .unwrap_err()
                .to_string();
            assert!(err.contains("not available"), "{name}: {err}");
        }
        // Spaced out, which the lexical check also catches.
        assert!(Policy::compile(&with_body("allow if net . cidr_expand(\"10.0.0.0/8\")")).is_err());
        // In a string, a name is no call.
        Policy::compile(&with_body("allow := \"net.cidr_expand\" != \"\"")).unwrap();
    }

    #[test]
    fn reasons_are_bounded_and_printable() {
        let long = with_body("default allow := false\nreason := concat(\"\", [\"\\u0007\\n\", concat(\"\", [\"y\" | some _ in numbers.range(1, 5000)])])");
        let r = denial(&long, "{}");
        assert!(r.starts_with("\\u{7}\\n"), "{r}");
        assert!(r.chars().count() <= MAX_REASON_CHARS + 1, "{}", r.len());
        // The caller's claims (an attestation token) never come back.
        let echo = with_body("default allow := false\nreason := sprintf(\"%v\", [input])");
        let input = r#"{"claims": {"token": "eyJhbGciOiJFUzI1NiJ9.secret-attestation"}, "host": {"os": "Linux"}}"#;
        let r = denial(&echo, input);
        assert!(!r.contains("secret-attestation"), "{r}");
        assert!(r.contains("[redacted]") && r.contains("Linux"), "{r}");
    }
}
