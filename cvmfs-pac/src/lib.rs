//! Proxy auto-configuration (PAC) files: a small interpreter for the subset of JavaScript that
//! real PAC files use, the Netscape helper functions with pacparser's semantics, and the
//! conversion of a `FindProxyForURL` answer into `CVMFS_HTTP_PROXY` syntax (spec §8.3).
//!
//! A full JavaScript engine does not fit into the size budget of the static `cvmfs2` of the
//! µCernVM initramfs, hence this interpreter. Whatever it does not implement is rejected with
//! an [`PacError::Unsupported`] naming the construct and line, so that discovery moves on to
//! the next PAC URL. Evaluation runs on its own thread with a bounded depth, a step budget and
//! size limits: no PAC file can hang, crash or exhaust the daemon.

mod ast;
mod builtins;
mod eval;
mod lexer;
mod parser;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

pub use builtins::sh_exp_match;
pub use eval::{MAX_EVAL_DEPTH, MAX_STEPS, MAX_STRING_LEN};
pub use lexer::MAX_SOURCE_LEN;
pub use parser::MAX_NESTING;

/// Stack of the evaluation thread: enough for [`MAX_NESTING`] and [`MAX_EVAL_DEPTH`] in
/// unoptimised builds too (only touched pages are ever allocated).
const EVAL_STACK: usize = 64 << 20;

/// Why a PAC file could not be evaluated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PacError {
    #[error("unsupported JavaScript at line {line}: {what}")]
    Unsupported { line: u32, what: String },
    #[error("syntax error at line {line}: {what}")]
    Syntax { line: u32, what: String },
    #[error("PAC file nested too deeply at line {0} (more than {MAX_NESTING} levels)")]
    TooDeep(u32),
    #[error("PAC file too large ({0} bytes, at most {MAX_SOURCE_LEN})")]
    TooLarge(usize),
    #[error("PAC evaluation stopped: {0}")]
    Limit(&'static str),
    #[error("PAC evaluation failed: {0}")]
    Runtime(String),
}

impl PacError {
    fn unsupported(line: u32, what: impl Into<String>) -> Self {
        PacError::Unsupported {
            line,
            what: what.into(),
        }
    }

    fn syntax(line: u32, what: impl Into<String>) -> Self {
        PacError::Syntax {
            line,
            what: what.into(),
        }
    }
}

/// A broken-down time for `weekdayRange`, `dateRange` and `timeRange`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CivilTime {
    pub year: i64,
    /// 0 = January.
    pub month: u32,
    /// 1–31.
    pub day: u32,
    /// 0 = Sunday.
    pub weekday: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

impl CivilTime {
    /// UTC time of `secs` seconds since the epoch.
    pub fn utc(secs: i64) -> CivilTime {
        let [year, month, day, hour, minute, second] = cvmfs_config::calendar::utc_datetime(secs);
        CivilTime {
            year: i64::from(year),
            month: month - 1,
            day,
            // 1970-01-01 was a Thursday.
            weekday: (secs.div_euclid(86_400) + 4).rem_euclid(7) as u32,
            hour,
            minute,
            second,
        }
    }

    /// Local time (time zone of the C library: `TZ`, `/etc/localtime`) of `secs`; UTC when the
    /// C library cannot tell.
    pub fn local(secs: i64) -> CivilTime {
        // The C library's `time_t` (named through inference: the alias is deprecated on musl).
        let t = secs as _;
        // SAFETY: `tm` is plain old data, fully written by `localtime_r` on success.
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers are valid for the call; `localtime_r` is thread-safe.
        if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
            return CivilTime::utc(secs);
        }
        CivilTime {
            year: i64::from(tm.tm_year) + 1900,
            month: tm.tm_mon as u32,
            day: tm.tm_mday as u32,
            weekday: tm.tm_wday as u32,
            hour: tm.tm_hour as u32,
            minute: tm.tm_min as u32,
            second: tm.tm_sec as u32,
        }
    }
}

/// What the helper functions ask of the world: name lookups, our address and the time.
pub trait PacHost {
    /// IPv4 address of `name`, `None` if it does not resolve.
    fn resolve(&self, name: &str) -> Option<Ipv4Addr>;
    /// `myIpAddress()`.
    fn my_ip_address(&self) -> Ipv4Addr;
    fn now_local(&self) -> CivilTime;
    fn now_utc(&self) -> CivilTime;
}

/// Seconds since the epoch by the system clock (0 before it).
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Runs the PAC file `source` and calls `FindProxyForURL(url, host)` for every pair of
/// `queries`, returning the answers in order. Runs on a thread of its own (deep but bounded
/// recursion); each call gets the full step budget.
pub fn find_proxy_for_url(
    source: &str,
    queries: &[(String, String)],
    host: Arc<dyn PacHost + Send + Sync>,
) -> Result<Vec<String>, PacError> {
    let source = source.to_string();
    let queries = queries.to_vec();
    let worker = std::thread::Builder::new()
        .name("pac".into())
        .stack_size(EVAL_STACK)
        .spawn(move || evaluate(&source, &queries, &*host))
        .map_err(|e| PacError::Runtime(format!("cannot start the PAC thread: {e}")))?;
    worker
        .join()
        .map_err(|_| PacError::Runtime("the PAC evaluation panicked".into()))?
}

fn evaluate(
    source: &str,
    queries: &[(String, String)],
    host: &dyn PacHost,
) -> Result<Vec<String>, PacError> {
    let program = parser::parse(lexer::tokenize(source)?)?;
    let mut interpreter = eval::Interpreter::new(host);
    interpreter.run(&program)?;
    let mut answers = Vec::with_capacity(queries.len());
    for (url, hostname) in queries {
        interpreter.reset_budget();
        let answer = interpreter.call_global(
            "FindProxyForURL",
            vec![
                eval::Value::str(url.as_str()),
                eval::Value::str(hostname.as_str()),
            ],
        )?;
        // Like pacparser, a non-string answer is converted (`undefined` is no proxy at all).
        answers.push(answer.to_js_string());
    }
    Ok(answers)
}

/// A `FindProxyForURL` answer in `CVMFS_HTTP_PROXY` syntax: `PROXY a:3128; SOCKS s:1080;
/// DIRECT` → `a:3128;DIRECT`. SOCKS and unknown parts are dropped; an empty answer is `DIRECT`.
pub fn convert_answer(answer: &str) -> String {
    if answer.trim().is_empty() {
        return "DIRECT".into();
    }
    answer
        .split(';')
        .map(|part| part.replace([' ', '\t'], ""))
        .filter_map(|part| {
            if part == "DIRECT" {
                Some(part)
            } else {
                part.strip_prefix("PROXY")
                    .filter(|p| !p.is_empty())
                    .map(str::to_string)
            }
        })
        .collect::<Vec<_>>()
        .join(";")
}

#[cfg(test)]
mod tests;
