//! The Netscape PAC helper functions with pacparser's semantics, a few global functions PAC
//! files use (`parseInt`, `alert`) and the String methods of the subset.

use std::net::Ipv4Addr;

use super::eval::Value;
use super::{CivilTime, PacError, PacHost};

/// Global functions, by name.
const GLOBALS: &[&str] = &[
    "isPlainHostName",
    "dnsDomainIs",
    "localHostOrDomainIs",
    "isResolvable",
    "isInNet",
    "dnsResolve",
    "myIpAddress",
    "dnsDomainLevels",
    "shExpMatch",
    "weekdayRange",
    "dateRange",
    "timeRange",
    "parseInt",
    "alert",
];

/// Largest text × pattern size `shExpMatch` accepts (its cost is their product).
const MAX_MATCH_WORK: usize = 100_000_000;

pub fn global(name: &str) -> Option<Value> {
    GLOBALS
        .iter()
        .find(|g| **g == name)
        .map(|g| Value::Builtin(g))
}

fn arg(args: &[Value], i: usize) -> Value {
    args.get(i).cloned().unwrap_or(Value::Undefined)
}

fn str_arg(args: &[Value], i: usize) -> String {
    arg(args, i).to_js_string()
}

pub fn call(name: &str, args: &[Value], host: &dyn PacHost) -> Result<Value, PacError> {
    let s = |i| str_arg(args, i);
    Ok(match name {
        "isPlainHostName" => Value::Bool(!s(0).contains('.')),
        "dnsDomainIs" => Value::Bool(s(0).ends_with(&s(1))),
        "localHostOrDomainIs" => {
            let (h, full) = (s(0), s(1));
            Value::Bool(h == full || full.starts_with(&format!("{h}.")))
        }
        "isResolvable" => Value::Bool(resolve(host, &s(0)).is_some()),
        "dnsResolve" => match resolve(host, &s(0)) {
            Some(ip) => Value::str(ip.to_string()),
            None => Value::Null,
        },
        "myIpAddress" => Value::str(host.my_ip_address().to_string()),
        "isInNet" => Value::Bool(is_in_net(host, &s(0), &s(1), &s(2))),
        "dnsDomainLevels" => Value::Num(s(0).matches('.').count() as f64),
        "shExpMatch" => {
            let (text, pattern) = (s(0), s(1));
            if text.len().saturating_mul(pattern.len()) > MAX_MATCH_WORK {
                return Err(PacError::Limit("shExpMatch arguments too long"));
            }
            Value::Bool(sh_exp_match(&text, &pattern))
        }
        "weekdayRange" => Value::Bool(weekday_range(args, host)),
        "dateRange" => Value::Bool(date_range(args, host)),
        "timeRange" => Value::Bool(time_range(args, host)?),
        "parseInt" => Value::Num(parse_int(&s(0), arg(args, 1).to_number())),
        "alert" => {
            log::info!("PAC alert: {}", s(0));
            Value::Undefined
        }
        _ => return Err(PacError::Runtime(format!("{name} is not a function"))),
    })
}

/// A host name or dotted quad to an IPv4 address.
fn resolve(host: &dyn PacHost, name: &str) -> Option<Ipv4Addr> {
    match name.parse::<Ipv4Addr>() {
        Ok(ip) => Some(ip),
        Err(_) if name.is_empty() => None,
        Err(_) => host.resolve(name),
    }
}

/// `isInNet(host, pattern, mask)`: a name is resolved first; unresolvable or malformed → false.
fn is_in_net(host: &dyn PacHost, name: &str, pattern: &str, mask: &str) -> bool {
    let (Some(ip), Ok(pattern), Ok(mask)) = (
        resolve(host, name),
        pattern.parse::<Ipv4Addr>(),
        mask.parse::<Ipv4Addr>(),
    ) else {
        return false;
    };
    let (ip, pattern, mask) = (u32::from(ip), u32::from(pattern), u32::from(mask));
    ip & mask == pattern & mask
}

/// Shell expression match: `*` any run, `?` any one character, everything else literal; the
/// whole text must match.
pub fn sh_exp_match(text: &str, pattern: &str) -> bool {
    let t: Vec<char> = text.chars().collect();
    let p: Vec<char> = pattern.chars().collect();
    let (mut ti, mut pi) = (0, 0);
    // Where the last `*` was and the text position it currently covers up to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            ti += 1;
            pi += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];
const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];

/// Drops a trailing `"GMT"` argument and picks the matching clock.
fn clock<'a>(args: &'a [Value], host: &dyn PacHost) -> (&'a [Value], CivilTime) {
    match args.split_last() {
        Some((last, rest)) if last.to_js_string() == "GMT" => (rest, host.now_utc()),
        _ => (args, host.now_local()),
    }
}

fn weekday_range(args: &[Value], host: &dyn PacHost) -> bool {
    let (args, now) = clock(args, host);
    let day = |v: &Value| WEEKDAYS.iter().position(|d| *d == v.to_js_string());
    let Some(first) = args.first().and_then(day) else {
        return false;
    };
    let last = match args.get(1) {
        Some(v) => match day(v) {
            Some(d) => d,
            None => return false,
        },
        None => first,
    };
    in_range(first, last, now.weekday as usize)
}

/// Inclusive, wrapping around when `first > last` (`FRI`–`MON`).
fn in_range<T: PartialOrd>(first: T, last: T, x: T) -> bool {
    if first <= last {
        first <= x && x <= last
    } else {
        x >= first || x <= last
    }
}

/// One `dateRange`/`timeRange` argument: a month name, a day (< 32) or a year.
enum DatePart {
    Day(u32),
    Month(u32),
    Year(i64),
}

fn date_part(v: &Value) -> Option<DatePart> {
    let text = v.to_js_string();
    if let Some(m) = MONTHS.iter().position(|m| *m == text) {
        return Some(DatePart::Month(m as u32));
    }
    let n = parse_int(&text, 10.0);
    if n.is_nan() || n < 0.0 {
        None
    } else if n < 32.0 {
        Some(DatePart::Day(n as u32))
    } else {
        Some(DatePart::Year(n as i64))
    }
}

/// `dateRange(day | month | year, …)`: one value is compared with today; two to six values are
/// the two ends of an inclusive range (first half, second half of the arguments), each end
/// defaulting to the start / end of the current year. Like pacparser, day-only ranges are taken
/// within the current month.
fn date_range(args: &[Value], host: &dyn PacHost) -> bool {
    let (args, now) = clock(args, host);
    let Ok(parts) = args
        .iter()
        .map(date_part)
        .collect::<Option<Vec<_>>>()
        .ok_or(())
    else {
        return false;
    };
    if parts.is_empty() || parts.len() > 6 {
        return false;
    }
    if let [single] = parts.as_slice() {
        return match *single {
            DatePart::Day(d) => now.day == d,
            DatePart::Month(m) => now.month == m,
            DatePart::Year(y) => now.year == y,
        };
    }
    let half = parts.len() / 2;
    let day_only = parts.len() == 2 && matches!(parts[0], DatePart::Day(_));
    let month = |m: u32| if day_only { now.month } else { m };
    let mut from = (now.year, month(0), 1u32);
    let mut to = (now.year, month(11), 31u32);
    for (end, parts) in [(&mut from, &parts[..half]), (&mut to, &parts[half..])] {
        for p in parts {
            match *p {
                DatePart::Day(d) => end.2 = d,
                DatePart::Month(m) => end.1 = m,
                DatePart::Year(y) => end.0 = y,
            }
        }
    }
    in_range(from, to, (now.year, now.month, now.day))
}

/// `timeRange(hour)`, `(h1, h2)` (h1 ≤ hour < h2), `(h1, m1, h2, m2)`,
/// `(h1, m1, s1, h2, m2, s2)`.
fn time_range(args: &[Value], host: &dyn PacHost) -> Result<bool, PacError> {
    let (args, now) = clock(args, host);
    let n: Vec<f64> = args.iter().map(Value::to_number).collect();
    if n.iter().any(|x| x.is_nan()) {
        return Ok(false);
    }
    let hour = f64::from(now.hour);
    let current = (now.hour, now.minute, now.second);
    let t = |h: f64, m: f64, s: f64| (h as u32, m as u32, s as u32);
    Ok(match n.as_slice() {
        [] => false,
        [h] => hour == *h,
        [h1, h2] => *h1 <= hour && hour < *h2,
        [h1, m1, h2, m2] => in_range(t(*h1, *m1, 0.0), t(*h2, *m2, 59.0), current),
        [h1, m1, s1, h2, m2, s2] => in_range(t(*h1, *m1, *s1), t(*h2, *m2, *s2), current),
        _ => {
            return Err(PacError::Runtime(
                "timeRange: bad number of arguments".into(),
            ))
        }
    })
}

/// JavaScript `parseInt`: optional sign, leading digits of the radix (10, or 16 after `0x`).
pub fn parse_int(text: &str, radix: f64) -> f64 {
    let t = text.trim_start();
    let (negative, t) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let mut radix = if radix.is_nan() || radix == 0.0 {
        10
    } else {
        radix as u32
    };
    let mut t = t;
    if radix == 10 || radix == 16 {
        if let Some(rest) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
            if radix == 16 || !text.trim().is_empty() {
                radix = 16;
                t = rest;
            }
        }
    }
    if !(2..=36).contains(&radix) {
        return f64::NAN;
    }
    let mut value: Option<f64> = None;
    for c in t.chars() {
        match c.to_digit(radix) {
            Some(d) => value = Some(value.unwrap_or(0.0) * f64::from(radix) + f64::from(d)),
            None => break,
        }
    }
    match value {
        Some(v) if negative => -v,
        Some(v) => v,
        None => f64::NAN,
    }
}

/// `string.method(args)`; only strings have methods in the subset.
pub fn method(object: &Value, name: &str, args: &[Value], line: u32) -> Result<Value, PacError> {
    let Value::Str(s) = object else {
        return Err(PacError::unsupported(
            line,
            format!("method `{name}` of {}", type_name(object)),
        ));
    };
    let chars: Vec<char> = s.chars().collect();
    let len = chars.len() as f64;
    let num = |i: usize| arg(args, i).to_number();
    // Relative positions as JavaScript clamps them.
    let clamp = |x: f64| if x.is_nan() { 0.0 } else { x.clamp(0.0, len) } as usize;
    let text = |from: usize, to: usize| Value::str(chars[from..to].iter().collect::<String>());
    Ok(match name {
        "indexOf" => {
            let needle = str_arg(args, 0);
            let from = byte_offset(s, clamp(num(1)));
            Value::Num(
                s[from..]
                    .find(&needle)
                    .map_or(-1.0, |i| char_index(s, from + i)),
            )
        }
        "lastIndexOf" => {
            let needle = str_arg(args, 0);
            let from = match arg(args, 1) {
                Value::Undefined => chars.len(),
                v => clamp(v.to_number()),
            };
            let mut end = (byte_offset(s, from) + needle.len()).min(s.len());
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            Value::Num(s[..end].rfind(&needle).map_or(-1.0, |i| char_index(s, i)))
        }
        "substring" => {
            let a = clamp(num(0));
            let b = match arg(args, 1) {
                Value::Undefined => chars.len(),
                v => clamp(v.to_number()),
            };
            text(a.min(b), a.max(b))
        }
        "substr" => {
            let start = num(0);
            let start = if start < 0.0 { len + start } else { start };
            let start = clamp(start);
            let count = match arg(args, 1) {
                Value::Undefined => len,
                v => v.to_number(),
            };
            let count = if count.is_nan() { 0.0 } else { count.max(0.0) };
            let end = (start as f64 + count).min(len) as usize;
            text(start, end.max(start))
        }
        "charAt" => {
            let i = num(0);
            let i = if i.is_nan() { 0.0 } else { i.trunc() };
            if i < 0.0 || i >= len {
                Value::str("")
            } else {
                text(i as usize, i as usize + 1)
            }
        }
        "toLowerCase" => Value::str(s.to_lowercase()),
        "toUpperCase" => Value::str(s.to_uppercase()),
        "split" => {
            let parts: Vec<Value> = match arg(args, 0) {
                Value::Undefined => vec![object.clone()],
                sep => {
                    let sep = sep.to_js_string();
                    if sep.is_empty() {
                        chars.iter().map(|c| Value::str(c.to_string())).collect()
                    } else {
                        s.split(sep.as_str()).map(Value::str).collect()
                    }
                }
            };
            let parts = match arg(args, 1) {
                Value::Undefined => parts,
                limit => parts
                    .into_iter()
                    .take(limit.to_number().max(0.0) as usize)
                    .collect(),
            };
            Value::array(parts)?
        }
        "toString" => object.clone(),
        _ => {
            return Err(PacError::unsupported(
                line,
                format!("String method `{name}`"),
            ))
        }
    })
}

/// Byte offset of the character at `index` (the length at or after the end).
fn byte_offset(s: &str, index: usize) -> usize {
    s.char_indices().nth(index).map_or(s.len(), |(b, _)| b)
}

/// Character index of byte offset `byte`.
fn char_index(s: &str, byte: usize) -> f64 {
    s[..byte].chars().count() as f64
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Undefined => "undefined",
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Num(_) => "a number",
        Value::Str(_) => "a string",
        Value::Array(_) => "an array",
        Value::Function(_) | Value::Builtin(_) => "a function",
    }
}
