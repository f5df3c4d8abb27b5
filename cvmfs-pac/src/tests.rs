use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use super::*;

/// A fixed world for the helper functions: a name table, an address and a clock.
struct FakeHost {
    names: HashMap<&'static str, Ipv4Addr>,
    me: Ipv4Addr,
    local: CivilTime,
    utc: CivilTime,
}

impl PacHost for FakeHost {
    fn resolve(&self, name: &str) -> Option<Ipv4Addr> {
        self.names.get(name).copied()
    }
    fn my_ip_address(&self) -> Ipv4Addr {
        self.me
    }
    fn now_local(&self) -> CivilTime {
        self.local
    }
    fn now_utc(&self) -> CivilTime {
        self.utc
    }
}

/// Wednesday 2026-03-04 10:30:15 local, 09:30:15 UTC.
fn host_at(me: [u8; 4]) -> Arc<FakeHost> {
    let local = CivilTime {
        year: 2026,
        month: 2,
        day: 4,
        weekday: 3,
        hour: 10,
        minute: 30,
        second: 15,
    };
    Arc::new(FakeHost {
        names: HashMap::from([
            ("www.example.org", Ipv4Addr::new(192, 0, 2, 10)),
            ("intranet", Ipv4Addr::new(10, 1, 2, 3)),
        ]),
        me: Ipv4Addr::from(me),
        local,
        utc: CivilTime { hour: 9, ..local },
    })
}

fn answers(src: &str, url: &str, host: &str, world: Arc<FakeHost>) -> Result<String, PacError> {
    let queries = vec![(url.to_string(), host.to_string())];
    Ok(find_proxy_for_url(src, &queries, world)?.remove(0))
}

/// The value of `expr` (as a string) in a PAC file returning it.
fn js(expr: &str) -> String {
    js_body(&format!("return {expr};"))
}

fn js_body(body: &str) -> String {
    let src = format!("function FindProxyForURL(url, host) {{ {body} }}");
    answers(&src, "http://a/", "a", host_at([127, 0, 0, 1]))
        .unwrap_or_else(|e| panic!("{body}: {e}"))
}

fn js_err(body: &str) -> PacError {
    let src = format!("function FindProxyForURL(url, host) {{ {body} }}");
    answers(&src, "http://a/", "a", host_at([127, 0, 0, 1])).unwrap_err()
}

#[test]
fn expressions_follow_javascript() {
    for (expr, want) in [
        ("1 + 2 * 3 - 4 / 2", "5"),
        ("7 % 3 + 0.5", "1.5"),
        ("'a' + 1 + 2", "a12"),
        ("1 + 2 + 'a'", "3a"),
        ("'3' * '4'", "12"),
        ("1 / 0", "Infinity"),
        ("-'x'", "NaN"),
        ("1 == '1'", "true"),
        ("1 === '1'", "false"),
        ("null == undefined", "true"),
        ("null === undefined", "false"),
        ("0 == false", "true"),
        ("'' != 0", "false"),
        ("'b' > 'a'", "true"),
        ("'10' < '9'", "true"),
        ("10 < 9", "false"),
        ("!'' && 'x'", "x"),
        ("0 || null || 'last'", "last"),
        ("true ? 'yes' : 'no'", "yes"),
        ("[1, 2, [3, 4]]", "1,2,3,4"),
        ("[1, 2, 3][1] + [4].length", "3"),
        ("[] == ''", "true"),
        ("'abc'[1]", "b"),
        ("undefined + 'x'", "undefinedx"),
        ("1e21 + ''", "1e+21"),
        ("1e-7 + ''", "1e-7"),
        ("0.25 + ''", "0.25"),
        ("0x10 + 1", "17"),
    ] {
        assert_eq!(js(expr), want, "{expr}");
    }
}

#[test]
fn statements_scopes_and_functions() {
    assert_eq!(
        js_body(
            "var s = ''; for (var i = 0; i < 10; i++) { if (i == 2) continue; if (i > 5) break; s += i; }
             var n = 3; while (n > 0) { n -= 1; s = s + '.'; }
             return s + i + n;"
        ),
        "01345...60"
    );
    // Hoisting, recursion, parameters that are missing, block-scoped `let`.
    assert_eq!(
        js_body(
            "var r = fact(5) + ':' + missing(); let x = 1; { let x = 2; } return r + x;
             function fact(k) { return k <= 1 ? 1 : k * fact(k - 1); }
             function missing(a) { return a; }"
        ),
        "120:undefined1"
    );
    // Globals and sloppy-mode assignment to an undeclared name.
    let src = "var count = 40; function bump() { count += 1; created = 'c'; }
               function FindProxyForURL(url, host) { bump(); bump(); return count + created; }";
    assert_eq!(
        answers(src, "u", "h", host_at([127, 0, 0, 1])).unwrap(),
        "42c"
    );
    assert_eq!(
        js_body("var i = 0; var j = i++ + ++i; return i + ',' + j;"),
        "2,2"
    );
    assert_eq!(
        js_body("if (true) { function inner() { return 'in'; } } return inner();"),
        "in"
    );
}

#[test]
fn string_methods() {
    for (expr, want) in [
        ("'cvmfs.cern.ch'.indexOf('.')", "5"),
        ("'cvmfs.cern.ch'.indexOf('.', 6)", "10"),
        ("'cvmfs.cern.ch'.indexOf('x')", "-1"),
        ("'cvmfs.cern.ch'.lastIndexOf('.')", "10"),
        ("'cvmfs.cern.ch'.lastIndexOf('.', 9)", "5"),
        ("'abcdef'.substring(4, 1)", "bcd"),
        ("'abcdef'.substring(2)", "cdef"),
        ("'abcdef'.substr(-2)", "ef"),
        ("'abcdef'.substr(1, 2)", "bc"),
        (
            "'MiXeD'.toLowerCase() + 'MiXeD'.toUpperCase()",
            "mixedMIXED",
        ),
        ("'a.b.c'.split('.').length", "3"),
        ("'a.b.c'.split('.')[2]", "c"),
        ("'abc'.split('').length", "3"),
        ("'a.b.c'.split('.', 2)", "a,b"),
        ("'abc'.charAt(1) + 'abc'.charAt(7)", "b"),
        ("'abc'.length", "3"),
    ] {
        assert_eq!(js(expr), want, "{expr}");
    }
    let e = js_err("return 'a'.replace('a', 'b');").to_string();
    assert_eq!(
        e,
        "unsupported JavaScript at line 1: String method `replace`"
    );
}

#[test]
fn helper_functions() {
    for (expr, want) in [
        ("isPlainHostName('wpad')", "true"),
        ("isPlainHostName('wpad.cern.ch')", "false"),
        ("dnsDomainIs('www.cern.ch', '.cern.ch')", "true"),
        ("dnsDomainIs('www.cern.ch', '.fnal.gov')", "false"),
        ("localHostOrDomainIs('www', 'www.cern.ch')", "true"),
        ("localHostOrDomainIs('www.cern.ch', 'www.cern.ch')", "true"),
        (
            "localHostOrDomainIs('home.cern.ch', 'www.cern.ch')",
            "false",
        ),
        ("isResolvable('www.example.org')", "true"),
        ("isResolvable('nowhere.invalid')", "false"),
        ("dnsResolve('www.example.org')", "192.0.2.10"),
        ("dnsResolve('nowhere.invalid')", "null"),
        ("myIpAddress()", "127.0.0.1"),
        (
            "isInNet('www.example.org', '192.0.2.0', '255.255.255.0')",
            "true",
        ),
        (
            "isInNet('192.0.3.1', '192.0.2.0', '255.255.255.0')",
            "false",
        ),
        ("isInNet('intranet', '10.0.0.0', '255.0.0.0')", "true"),
        ("isInNet('nowhere.invalid', '0.0.0.0', '0.0.0.0')", "false"),
        (
            "dnsDomainLevels('www.cern.ch') + dnsDomainLevels('www')",
            "2",
        ),
        (
            "shExpMatch('http://cvmfs.cern.ch/x', '*.cern.ch/*')",
            "true",
        ),
        ("shExpMatch('cvmfs.cern.ch', '*.cern.?h')", "true"),
        ("shExpMatch('cvmfs.cern.ch', '*.fnal.gov')", "false"),
        ("shExpMatch('a.b', 'a?b')", "true"),
        ("shExpMatch('axxb', 'a?b')", "false"),
        (
            "parseInt('42abc') + parseInt('0x1f') + parseInt(' -3')",
            "70",
        ),
    ] {
        assert_eq!(js(expr), want, "{expr}");
    }
}

#[test]
fn time_helpers_use_the_local_clock_or_gmt() {
    // Wednesday 2026-03-04 10:30:15 local, 09:30:15 GMT.
    for (expr, want) in [
        ("weekdayRange('WED')", "true"),
        ("weekdayRange('MON', 'FRI')", "true"),
        ("weekdayRange('THU', 'TUE')", "false"),
        ("weekdayRange('SAT', 'WED')", "true"),
        ("weekdayRange('XYZ')", "false"),
        ("weekdayRange('WED', 'GMT')", "true"),
        ("timeRange(10)", "true"),
        ("timeRange(10, 'GMT')", "false"),
        ("timeRange(9, 'GMT')", "true"),
        ("timeRange(8, 10)", "false"),
        ("timeRange(8, 11)", "true"),
        ("timeRange(10, 30, 10, 31)", "true"),
        ("timeRange(10, 31, 11, 0)", "false"),
        ("timeRange(10, 30, 16, 10, 31, 0)", "false"),
        ("timeRange(22, 0, 11, 0)", "true"),
        ("dateRange(4)", "true"),
        ("dateRange('MAR')", "true"),
        ("dateRange(2026)", "true"),
        ("dateRange(2025)", "false"),
        ("dateRange('JAN', 'FEB')", "false"),
        ("dateRange('FEB', 'APR')", "true"),
        ("dateRange('NOV', 'MAR')", "true"),
        ("dateRange(1, 3)", "false"),
        ("dateRange(3, 5)", "true"),
        ("dateRange(1, 'MAR', 4, 'MAR')", "true"),
        ("dateRange(1, 'MAR', 2026, 3, 'MAR', 2026)", "false"),
        ("dateRange(2025, 2027)", "true"),
        ("dateRange('MAR', 'GMT')", "true"),
    ] {
        assert_eq!(js(expr), want, "{expr}");
    }
    assert!(js_err("return timeRange(1, 2, 3);")
        .to_string()
        .contains("timeRange"));
}

#[test]
fn civil_time_conversion() {
    let epoch = CivilTime::utc(0);
    assert_eq!(
        (epoch.year, epoch.month, epoch.day, epoch.weekday),
        (1970, 0, 1, 4)
    );
    // 2000-02-29 13:14:15 UTC, a Tuesday.
    let leap = CivilTime::utc(951_830_055);
    assert_eq!(
        (leap.year, leap.month, leap.day, leap.weekday),
        (2000, 1, 29, 2)
    );
    assert_eq!((leap.hour, leap.minute, leap.second), (13, 14, 15));
    let before = CivilTime::utc(-1);
    assert_eq!(
        (before.year, before.month, before.day, before.hour),
        (1969, 11, 31, 23)
    );
    // The local clock agrees with UTC up to a time-zone offset of whole quarter hours.
    let now = unix_now();
    let (l, u) = (CivilTime::local(now), CivilTime::utc(now));
    assert_eq!(l.second, u.second);
}

#[test]
fn answers_are_converted_to_proxy_lists() {
    assert_eq!(
        convert_answer("PROXY a:3128; PROXY b:3128; DIRECT"),
        "a:3128;b:3128;DIRECT"
    );
    assert_eq!(
        convert_answer("SOCKS s:1080; PROXY http://p:3128;\tDIRECT"),
        "http://p:3128;DIRECT"
    );
    assert_eq!(convert_answer(""), "DIRECT");
    assert_eq!(convert_answer("  "), "DIRECT");
    assert_eq!(convert_answer("NONE"), "");
    assert_eq!(convert_answer("undefined"), "");
    assert_eq!(convert_answer("PROXY ; HTTPS h:443"), "");
}

#[test]
fn hostile_files_stop_with_an_error() {
    for (body, want) in [
        (
            "while (true) {}",
            PacError::Limit("step budget exhausted (endless loop?)"),
        ),
        (
            "for (;;) {}",
            PacError::Limit("step budget exhausted (endless loop?)"),
        ),
        (
            "return f(); function f() { return f(); }",
            PacError::Limit("evaluation nested too deeply (endless recursion?)"),
        ),
        (
            "var s = 'x'; while (true) s = s + s;",
            PacError::Limit("string too long"),
        ),
        (
            "var a = []; while (true) a = [a];",
            PacError::Limit("arrays nested too deeply"),
        ),
    ] {
        assert_eq!(js_err(body), want, "{body}");
    }
    // Quadratic string builders run out of steps (or size) instead of running for hours.
    let e = js_err("var s = 'x'; while (true) s += 'yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy';");
    assert!(matches!(e, PacError::Limit(_)), "{e}");
    let e = js_err("var s = ''; for (var i = 0; i < 10000000; i++) { s = s + 'ab'; } return s;");
    assert!(matches!(e, PacError::Limit(_)), "{e}");
    assert!(matches!(
        js_err("var s = 'a'; for (var i = 0; i < 19; i++) s = s + s; return shExpMatch(s, s);"),
        PacError::Limit("shExpMatch arguments too long")
    ));
    assert!(matches!(
        js_err("return undefinedName;"),
        PacError::Runtime(m) if m == "undefinedName is not defined"
    ));
    assert!(matches!(
        js_err("return null.length;"),
        PacError::Runtime(_)
    ));
    assert!(matches!(js_err("return host();"), PacError::Runtime(_)));
    // Deep nesting in the source.
    let deep = format!(
        "function FindProxyForURL(u, h) {{ return {}1{}; }}",
        "[".repeat(5000),
        "]".repeat(5000)
    );
    let e = answers(&deep, "u", "h", host_at([1, 2, 3, 4])).unwrap_err();
    assert!(matches!(e, PacError::TooDeep(1)), "{e}");
    // Deepest nesting the parser accepts evaluates without exhausting the stack.
    let nested = format!(
        "function FindProxyForURL(u, h) {{ return {}({}'DIRECT'{}); }}",
        "!".repeat(MAX_NESTING - 120),
        "(".repeat(50),
        ")".repeat(50)
    );
    assert_eq!(
        answers(&nested, "u", "h", host_at([1, 2, 3, 4])).unwrap(),
        "true"
    );
    // Binary junk and a file without the entry point.
    let junk = "\u{0}\u{1}\u{7f}garbage";
    assert!(answers(junk, "u", "h", host_at([1, 2, 3, 4])).is_err());
    let e = answers("var x = 1;", "u", "h", host_at([1, 2, 3, 4])).unwrap_err();
    assert_eq!(
        e.to_string(),
        "PAC evaluation failed: FindProxyForURL is not defined"
    );
}

#[test]
fn every_truncation_of_the_corpus_evaluates_or_fails_cleanly() {
    for src in [
        include_str!("../tests/pac-corpus/wlcg-wpad.pac"),
        include_str!("../tests/pac-corpus/site-campus.pac"),
        include_str!("../tests/pac-corpus/business-hours.pac"),
    ] {
        let mut ok = 0;
        for (cut, _) in src.char_indices() {
            // A panic on the evaluation thread would be reported as an error here.
            match answers(&src[..cut], "http://h/x", "h", host_at([1, 2, 3, 4])) {
                Ok(_) => ok += 1,
                Err(PacError::Runtime(m)) => assert!(!m.contains("panicked"), "{m}"),
                Err(_) => {}
            }
        }
        // Only prefixes that are whole programs can be evaluated (the complete file is one).
        assert!(ok < src.len() / 2, "{ok}");
        assert!(answers(src, "http://h/x", "h", host_at([1, 2, 3, 4])).is_ok());
    }
}

#[test]
fn unsupported_syntax_is_reported_with_its_line() {
    let e = answers(
        include_str!("../tests/pac-corpus/regex.pac"),
        "http://cvmfs-s1/x",
        "cvmfs-s1",
        host_at([1, 2, 3, 4]),
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "unsupported JavaScript at line 2: regular expression literal"
    );
    let e = js_err("var d = new Date();\n return d;").to_string();
    assert_eq!(e, "unsupported JavaScript at line 1: `new`");
    let e = js_err("return [1].join('-');").to_string();
    assert_eq!(
        e,
        "unsupported JavaScript at line 1: method `join` of an array"
    );
}

#[test]
fn wlcg_wpad_style_file() {
    let src = include_str!("../tests/pac-corpus/wlcg-wpad.pac");
    let ask = |me: [u8; 4], url: &str, host: &str| {
        convert_answer(&answers(src, url, host, host_at(me)).unwrap())
    };
    let cvmfs = "http://cvmfs-stratum-one.cern.ch/cvmfs/sft.cern.ch/.cvmfspublished";
    assert_eq!(
        ask([137, 138, 1, 10], cvmfs, "cvmfs-stratum-one.cern.ch"),
        "http://ca-proxy-meyrin.cern.ch:3128;http://ca-proxy-prevessin.cern.ch:3128;DIRECT"
    );
    assert_eq!(
        ask([188, 185, 7, 11], cvmfs, "cvmfs-stratum-one.cern.ch"),
        "http://ca-proxy-prevessin.cern.ch:3128;http://ca-proxy-meyrin.cern.ch:3128;DIRECT"
    );
    assert_eq!(
        ask(
            [131, 225, 9, 9],
            "http://s1.openhtc.io:8080/cvmfs/x",
            "s1.openhtc.io"
        ),
        "http://squid.fnal.gov:3128;DIRECT"
    );
    assert_eq!(
        ask([192, 0, 2, 1], cvmfs, "cvmfs-stratum-one.cern.ch"),
        "DIRECT"
    );
    // Not CernVM-FS: NONE, which is no usable proxy.
    assert_eq!(
        ask(
            [137, 138, 1, 10],
            "http://www.example.org/",
            "www.example.org"
        ),
        ""
    );
}

#[test]
fn campus_site_file() {
    let src = include_str!("../tests/pac-corpus/site-campus.pac");
    let ask = |me: [u8; 4], url: &str, host: &str| {
        convert_answer(&answers(src, url, host, host_at(me)).unwrap())
    };
    assert_eq!(ask([1, 2, 3, 4], "http://wpad/x", "WPAD"), "DIRECT");
    assert_eq!(
        ask(
            [1, 2, 3, 4],
            "http://a.intra.example.edu/",
            "a.intra.example.edu"
        ),
        "DIRECT"
    );
    assert_eq!(ask([1, 2, 3, 4], "http://intranet/", "intranet"), "DIRECT");
    // Digit sum of 1.2.3.4 is 10 (even) → squid1 first; of 1.2.3.5 odd → squid2 first.
    let url = "http://cvmfs.example.org/cvmfs/demo.example.org/.cvmfspublished";
    assert_eq!(
        ask([1, 2, 3, 4], url, "cvmfs.example.org"),
        "squid1.example.edu:3128;squid2.example.edu:3128;DIRECT"
    );
    assert_eq!(
        ask([1, 2, 3, 5], url, "cvmfs.example.org"),
        "squid2.example.edu:3128;squid1.example.edu:3128;DIRECT"
    );
    // Anything else through the campus proxy; the SOCKS alternative is dropped.
    assert_eq!(
        ask([1, 2, 3, 4], "http://www.example.org/", "www.example.org"),
        "proxy.example.edu:8080"
    );
}

#[test]
fn office_hours_file_without_semicolons() {
    let src = include_str!("../tests/pac-corpus/business-hours.pac");
    let ask = |url: &str, host: &str| {
        convert_answer(&answers(src, url, host, host_at([1, 1, 1, 1])).unwrap())
    };
    assert_eq!(
        ask("http://cvmfs.cern.ch/x", "cvmfs.cern.ch"),
        "cache.example.org:3128"
    );
    assert_eq!(
        ask(
            "http://cvmfs-s1-fn.example.org/x",
            "cvmfs-s1-fn.example.org"
        ),
        "cache.example.org:3128"
    );
    // Wednesday 10:30 in March: office hours.
    assert_eq!(
        ask(
            "http://cvmfs-s1-fnal.example.org/x",
            "cvmfs-s1-fnal.example.org"
        ),
        "filter.example.org:8080;DIRECT"
    );
}
