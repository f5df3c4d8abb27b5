//! Tokens of the PAC JavaScript subset. A `/` where a value is expected starts a regular
//! expression literal, which the subset does not have: it is reported as unsupported instead of
//! producing a confusing syntax error further on.

use super::PacError;

/// Longest accepted source text; real PAC files are a few kilobytes.
pub const MAX_SOURCE_LEN: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq)]
pub enum Tok {
    Num(f64),
    Str(String),
    Ident(String),
    /// Punctuation and operators, e.g. `===`, `+=`, `(`.
    Punct(&'static str),
    Eof,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    pub tok: Tok,
    pub line: u32,
}

/// Longest first, so that `===` wins over `==` and `=`.
const PUNCTS: &[&str] = &[
    ">>>=", "===", "!==", "<<=", ">>=", ">>>", "&&", "||", "==", "!=", "<=", ">=", "+=", "-=",
    "*=", "/=", "%=", "++", "--", "<<", ">>", "&=", "|=", "^=", "=>", "**", "(", ")", "{", "}",
    "[", "]", ";", ",", "<", ">", "+", "-", "*", "/", "%", "!", "?", ":", "=", ".", "&", "|", "^",
    "~",
];

pub fn tokenize(src: &str) -> Result<Vec<Token>, PacError> {
    if src.len() > MAX_SOURCE_LEN {
        return Err(PacError::TooLarge(src.len()));
    }
    let b = src.as_bytes();
    let mut i = 0;
    let mut line = 1u32;
    let mut out: Vec<Token> = Vec::new();
    while i < b.len() {
        let c = b[i];
        if c == b'\n' {
            line += 1;
            i += 1;
            continue;
        }
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        if b[i..].starts_with(b"/*") {
            let start_line = line;
            i += 2;
            loop {
                if i + 1 >= b.len() {
                    return Err(PacError::syntax(start_line, "unterminated comment"));
                }
                if b[i] == b'*' && b[i + 1] == b'/' {
                    i += 2;
                    break;
                }
                if b[i] == b'\n' {
                    line += 1;
                }
                i += 1;
            }
            continue;
        }
        if c == b'/' && !division_allowed(out.last()) {
            return Err(PacError::unsupported(line, "regular expression literal"));
        }
        if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) {
            let (n, len) = number(&src[i..], line)?;
            out.push(Token {
                tok: Tok::Num(n),
                line,
            });
            i += len;
            continue;
        }
        if c == b'"' || c == b'\'' {
            let (s, len) = string(&src[i..], line)?;
            out.push(Token {
                tok: Tok::Str(s),
                line,
            });
            i += len;
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' || c == b'$' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'$') {
                i += 1;
            }
            out.push(Token {
                tok: Tok::Ident(src[start..i].to_string()),
                line,
            });
            continue;
        }
        if c == b'`' {
            return Err(PacError::unsupported(line, "template literal"));
        }
        match PUNCTS.iter().find(|p| b[i..].starts_with(p.as_bytes())) {
            Some(p) => {
                out.push(Token {
                    tok: Tok::Punct(p),
                    line,
                });
                i += p.len();
            }
            None => {
                let ch = src[i..].chars().next().unwrap_or('?');
                return Err(PacError::syntax(
                    line,
                    format!("unexpected character {ch:?}"),
                ));
            }
        }
    }
    out.push(Token {
        tok: Tok::Eof,
        line,
    });
    Ok(out)
}

/// After a value (name, literal, `)` or `]`) a `/` divides; elsewhere it would open a regex.
fn division_allowed(prev: Option<&Token>) -> bool {
    match prev.map(|t| &t.tok) {
        Some(Tok::Num(_) | Tok::Str(_)) => true,
        Some(Tok::Ident(name)) => !matches!(
            name.as_str(),
            "return" | "typeof" | "case" | "do" | "else" | "in" | "void" | "delete"
        ),
        Some(Tok::Punct(p)) => matches!(*p, ")" | "]" | "++" | "--"),
        _ => false,
    }
}

fn number(s: &str, line: u32) -> Result<(f64, usize), PacError> {
    let b = s.as_bytes();
    if b.len() > 1 && b[0] == b'0' && (b[1] == b'x' || b[1] == b'X') {
        let end = 2 + b[2..].iter().take_while(|c| c.is_ascii_hexdigit()).count();
        let v = u64::from_str_radix(&s[2..end], 16)
            .map_err(|_| PacError::syntax(line, format!("bad number {:?}", &s[..end])))?;
        return Ok((v as f64, end));
    }
    let mut end = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if b.get(end) == Some(&b'.') {
        end += 1;
        end += b[end..].iter().take_while(|c| c.is_ascii_digit()).count();
    }
    if matches!(b.get(end), Some(b'e' | b'E')) {
        let mut e = end + 1;
        if matches!(b.get(e), Some(b'+' | b'-')) {
            e += 1;
        }
        let digits = b[e..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits > 0 {
            end = e + digits;
        }
    }
    let v = s[..end]
        .parse::<f64>()
        .map_err(|_| PacError::syntax(line, format!("bad number {:?}", &s[..end])))?;
    Ok((v, end))
}

fn string(s: &str, line: u32) -> Result<(String, usize), PacError> {
    let mut chars = s.char_indices();
    let quote = chars.next().map(|(_, c)| c).unwrap_or('"');
    let mut out = String::new();
    while let Some((i, c)) = chars.next() {
        match c {
            c if c == quote => return Ok((out, i + 1)),
            '\n' => break,
            '\\' => match chars.next().map(|(_, c)| c) {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some('r') => out.push('\r'),
                Some('0') => out.push('\0'),
                Some('\n') => {}
                Some(other @ ('x' | 'u')) => {
                    return Err(PacError::unsupported(
                        line,
                        format!("escape sequence \\{other} in a string"),
                    ))
                }
                Some(other) => out.push(other),
                None => break,
            },
            c => out.push(c),
        }
    }
    Err(PacError::syntax(line, "unterminated string"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(src: &str) -> Vec<Tok> {
        tokenize(src).unwrap().into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn tokens_operators_and_comments() {
        assert_eq!(
            toks("a === 'x\\'y' // c\n/* b\n */ b += 0x1F / 2.5e1;"),
            vec![
                Tok::Ident("a".into()),
                Tok::Punct("==="),
                Tok::Str("x'y".into()),
                Tok::Ident("b".into()),
                Tok::Punct("+="),
                Tok::Num(31.0),
                Tok::Punct("/"),
                Tok::Num(25.0),
                Tok::Punct(";"),
                Tok::Eof
            ]
        );
        let t = tokenize("a\n\n/* x\n*/ b").unwrap();
        assert_eq!(t[1].line, 4);
    }

    #[test]
    fn regex_literals_and_bad_text_are_named_with_their_line() {
        let e = tokenize("var x = 1;\nif (/^a\\.b$/.test(host)) {}").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unsupported JavaScript at line 2: regular expression literal"
        );
        assert!(tokenize("'abc")
            .unwrap_err()
            .to_string()
            .contains("unterminated string"));
        assert!(tokenize("/* abc")
            .unwrap_err()
            .to_string()
            .contains("line 1"));
        assert!(tokenize("a # b").unwrap_err().to_string().contains("'#'"));
        assert!(matches!(
            tokenize(&" ".repeat(MAX_SOURCE_LEN + 1)),
            Err(PacError::TooLarge(_))
        ));
    }
}
