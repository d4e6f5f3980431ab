//! Values from a fixture manifest for the loopback benchmark (scripts/bench/run.sh).
//!
//! `bench_fixture MANIFEST token ROLE` prints an HS256 token for the manifest user ROLE,
//! shaped like InvokeAI 6.14.2's (same claims as tests/common, valid for one hour), signed
//! with the fixture's `jwt.secret` through the guard's own `identity::sign`.
//! `bench_fixture MANIFEST get /json/pointer` prints one string value of the manifest.

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(path), Some(cmd), Some(arg)) = (args.first(), args.get(1), args.get(2)) else {
        eprintln!("usage: bench_fixture MANIFEST (token ROLE | get /json/pointer)");
        return ExitCode::from(2);
    };
    let manifest: Value = match std::fs::read_to_string(path)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
    {
        Ok(v) => v,
        Err(e) => {
            eprintln!("bench_fixture: {path}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let out = match cmd.as_str() {
        "token" => token(&manifest, arg),
        "get" => manifest
            .pointer(arg)
            .and_then(Value::as_str)
            .map(str::to_owned),
        _ => None,
    };
    match out {
        Some(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        None => {
            eprintln!("bench_fixture: nothing for {cmd} {arg} in {path}");
            ExitCode::FAILURE
        }
    }
}

fn token(m: &Value, role: &str) -> Option<String> {
    let u = m["users"].get(role)?;
    let secret = m["jwt"]["secret"].as_str()?;
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs() + 3600;
    let mut claims = json!({
        "user_id": u["user_id"],
        "email": u["email"],
        "is_admin": u["is_admin"],
        "exp": exp,
    });
    if u.get("token_epoch").is_some_and(|e| !e.is_null()) {
        claims["token_epoch"] = u["token_epoch"].clone();
        claims["remember_me"] = json!(false);
    }
    Some(invoke_guard::identity::sign(claims.as_object()?, secret))
}
