//! Recursive-descent parser of the PAC JavaScript subset. Nesting is bounded so that a hostile
//! file cannot exhaust the stack.

use std::rc::Rc;

use super::ast::{BinOp, Expr, Function, Logic, Stmt, Unary};
use super::lexer::{Tok, Token};
use super::PacError;

/// Deepest nesting of statements and expressions accepted.
pub const MAX_NESTING: usize = 400;

/// Keywords of full JavaScript that the subset rejects by name.
const UNSUPPORTED_KEYWORDS: &[&str] = &[
    "switch",
    "case",
    "default",
    "do",
    "try",
    "catch",
    "finally",
    "throw",
    "with",
    "class",
    "new",
    "this",
    "typeof",
    "delete",
    "void",
    "in",
    "instanceof",
    "yield",
    "await",
    "async",
    "import",
    "export",
    "debugger",
    "super",
    "extends",
];

pub fn parse(tokens: Vec<Token>) -> Result<Vec<Stmt>, PacError> {
    let mut p = Parser {
        tokens,
        pos: 0,
        depth: 0,
    };
    let mut program = Vec::new();
    while p.peek() != &Tok::Eof {
        program.push(p.statement()?);
    }
    Ok(program)
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> &Tok {
        &self.tokens[self.pos.min(self.tokens.len() - 1)].tok
    }

    fn line(&self) -> u32 {
        self.tokens[self.pos.min(self.tokens.len() - 1)].line
    }

    fn next(&mut self) -> Tok {
        let t = self.peek().clone();
        if self.pos < self.tokens.len() - 1 {
            self.pos += 1;
        }
        t
    }

    fn is_punct(&self, p: &str) -> bool {
        matches!(self.peek(), Tok::Punct(q) if *q == p)
    }

    fn is_keyword(&self, k: &str) -> bool {
        matches!(self.peek(), Tok::Ident(name) if name == k)
    }

    fn eat_punct(&mut self, p: &str) -> bool {
        let yes = self.is_punct(p);
        if yes {
            self.next();
        }
        yes
    }

    fn expect(&mut self, p: &str) -> Result<(), PacError> {
        if self.eat_punct(p) {
            Ok(())
        } else {
            Err(self.unexpected(&format!("`{p}`")))
        }
    }

    fn unexpected(&self, wanted: &str) -> PacError {
        let found = match self.peek() {
            Tok::Num(n) => format!("number {n}"),
            Tok::Str(s) => format!("string {s:?}"),
            Tok::Ident(i) => format!("`{i}`"),
            Tok::Punct(p) => format!("`{p}`"),
            Tok::Eof => "end of file".into(),
        };
        PacError::syntax(self.line(), format!("expected {wanted}, found {found}"))
    }

    fn identifier(&mut self) -> Result<String, PacError> {
        match self.peek() {
            Tok::Ident(name) if !is_reserved(name) => {
                let name = name.clone();
                self.next();
                Ok(name)
            }
            _ => Err(self.unexpected("a name")),
        }
    }

    /// `;`, or automatic semicolon insertion before `}`, the end or a line break.
    fn semicolon(&mut self) -> Result<(), PacError> {
        if self.eat_punct(";") || self.is_punct("}") || self.peek() == &Tok::Eof {
            return Ok(());
        }
        let prev_line = self.tokens[self.pos.saturating_sub(1)].line;
        if self.line() > prev_line {
            Ok(())
        } else {
            Err(self.unexpected("`;`"))
        }
    }

    fn enter(&mut self) -> Result<(), PacError> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err(PacError::TooDeep(self.line()));
        }
        Ok(())
    }

    fn statement(&mut self) -> Result<Stmt, PacError> {
        self.enter()?;
        let s = self.statement_inner();
        self.depth -= 1;
        s
    }

    fn statement_inner(&mut self) -> Result<Stmt, PacError> {
        let line = self.line();
        if self.eat_punct(";") {
            return Ok(Stmt::Empty);
        }
        if self.eat_punct("{") {
            return Ok(Stmt::Block(self.block_rest()?));
        }
        let keyword = match self.peek() {
            Tok::Ident(k) => k.clone(),
            _ => String::new(),
        };
        match keyword.as_str() {
            "function" => {
                self.next();
                let f = self.function_rest()?;
                Ok(Stmt::Function(Rc::new(f)))
            }
            "var" | "let" | "const" => {
                let d = self.declaration()?;
                self.semicolon()?;
                Ok(d)
            }
            "if" => {
                self.next();
                self.expect("(")?;
                let test = self.expression()?;
                self.expect(")")?;
                let then = Box::new(self.statement()?);
                let otherwise = if self.is_keyword("else") {
                    self.next();
                    Some(Box::new(self.statement()?))
                } else {
                    None
                };
                Ok(Stmt::If(test, then, otherwise))
            }
            "while" => {
                self.next();
                self.expect("(")?;
                let test = self.expression()?;
                self.expect(")")?;
                Ok(Stmt::While(test, Box::new(self.statement()?)))
            }
            "for" => self.for_statement(),
            "return" => {
                self.next();
                let value = if self.is_punct(";")
                    || self.is_punct("}")
                    || self.peek() == &Tok::Eof
                    || self.line() > line
                {
                    None
                } else {
                    Some(self.expression()?)
                };
                self.semicolon()?;
                Ok(Stmt::Return(value))
            }
            "break" | "continue" => {
                self.next();
                if matches!(self.peek(), Tok::Ident(_)) && self.line() == line {
                    return Err(PacError::unsupported(line, "labelled break/continue"));
                }
                self.semicolon()?;
                Ok(if keyword == "break" {
                    Stmt::Break
                } else {
                    Stmt::Continue
                })
            }
            k if UNSUPPORTED_KEYWORDS.contains(&k) => {
                Err(PacError::unsupported(line, format!("`{k}`")))
            }
            _ => {
                let e = self.expression()?;
                self.semicolon()?;
                Ok(Stmt::Expr(e))
            }
        }
    }

    /// After `{`: statements up to the matching `}`.
    fn block_rest(&mut self) -> Result<Vec<Stmt>, PacError> {
        let mut body = Vec::new();
        while !self.eat_punct("}") {
            if self.peek() == &Tok::Eof {
                return Err(self.unexpected("`}`"));
            }
            body.push(self.statement()?);
        }
        Ok(body)
    }

    /// After `function`: name, parameters, body.
    fn function_rest(&mut self) -> Result<Function, PacError> {
        if self.is_punct("(") {
            return Err(PacError::unsupported(self.line(), "function expression"));
        }
        let name = self.identifier()?;
        self.expect("(")?;
        let mut params = Vec::new();
        if !self.eat_punct(")") {
            loop {
                params.push(self.identifier()?);
                if self.eat_punct(")") {
                    break;
                }
                self.expect(",")?;
            }
        }
        self.expect("{")?;
        let body = self.block_rest()?;
        Ok(Function { name, params, body })
    }

    fn declaration(&mut self) -> Result<Stmt, PacError> {
        let function_scoped = self.is_keyword("var");
        self.next();
        let mut names = Vec::new();
        loop {
            let name = self.identifier()?;
            let init = if self.eat_punct("=") {
                Some(self.assignment()?)
            } else {
                None
            };
            names.push((name, init));
            if !self.eat_punct(",") {
                break;
            }
        }
        Ok(Stmt::Decl(function_scoped, names))
    }

    fn for_statement(&mut self) -> Result<Stmt, PacError> {
        self.next();
        self.expect("(")?;
        let init = if self.is_punct(";") {
            None
        } else if self.is_keyword("var") || self.is_keyword("let") || self.is_keyword("const") {
            Some(Box::new(self.declaration()?))
        } else {
            Some(Box::new(Stmt::Expr(self.expression()?)))
        };
        if self.is_keyword("in") || self.is_keyword("of") {
            return Err(PacError::unsupported(self.line(), "for-in/for-of loop"));
        }
        self.expect(";")?;
        let test = if self.is_punct(";") {
            None
        } else {
            Some(self.expression()?)
        };
        self.expect(";")?;
        let update = if self.is_punct(")") {
            None
        } else {
            Some(self.expression()?)
        };
        self.expect(")")?;
        let body = Box::new(self.statement()?);
        Ok(Stmt::For {
            init,
            test,
            update,
            body,
        })
    }

    fn expression(&mut self) -> Result<Expr, PacError> {
        let e = self.assignment()?;
        if self.is_punct(",") {
            return Err(PacError::unsupported(self.line(), "comma operator"));
        }
        Ok(e)
    }

    fn assignment(&mut self) -> Result<Expr, PacError> {
        self.enter()?;
        let r = self.assignment_inner();
        self.depth -= 1;
        r
    }

    fn assignment_inner(&mut self) -> Result<Expr, PacError> {
        let line = self.line();
        let target = self.conditional()?;
        let op = match self.peek() {
            Tok::Punct("=") => None,
            Tok::Punct("+=") => Some(BinOp::Add),
            Tok::Punct("-=") => Some(BinOp::Sub),
            Tok::Punct("*=") => Some(BinOp::Mul),
            Tok::Punct("/=") => Some(BinOp::Div),
            Tok::Punct("%=") => Some(BinOp::Rem),
            Tok::Punct(p @ ("<<=" | ">>=" | ">>>=" | "&=" | "|=" | "^=")) => {
                return Err(PacError::unsupported(line, format!("operator `{p}`")))
            }
            Tok::Punct("=>") => return Err(PacError::unsupported(line, "arrow function")),
            _ => return Ok(target),
        };
        self.next();
        match target {
            Expr::Ident(_) => {}
            // Arrays stay immutable, so that no value can contain itself.
            Expr::Index(..) => {
                return Err(PacError::unsupported(
                    line,
                    "assignment to an array element",
                ))
            }
            _ => return Err(PacError::syntax(line, "invalid assignment target")),
        }
        let value = self.assignment()?;
        Ok(Expr::Assign(Box::new(target), op, Box::new(value)))
    }

    fn conditional(&mut self) -> Result<Expr, PacError> {
        let test = self.logical(Logic::Or)?;
        if !self.eat_punct("?") {
            return Ok(test);
        }
        let yes = self.assignment()?;
        self.expect(":")?;
        let no = self.assignment()?;
        Ok(Expr::Conditional(
            Box::new(test),
            Box::new(yes),
            Box::new(no),
        ))
    }

    fn logical(&mut self, which: Logic) -> Result<Expr, PacError> {
        let (op, next) = match which {
            Logic::Or => ("||", Some(Logic::And)),
            Logic::And => ("&&", None),
        };
        let operand = |p: &mut Self| match next {
            Some(l) => p.logical(l),
            None => p.binary(0),
        };
        let mut left = operand(self)?;
        // Every link of a chain nests the tree one level deeper (left-associative).
        let depth = self.depth;
        while self.eat_punct(op) {
            self.enter()?;
            let right = operand(self)?;
            left = Expr::Logical(which, Box::new(left), Box::new(right));
        }
        self.depth = depth;
        Ok(left)
    }

    /// Binary operators by precedence level: equality, relational, additive, multiplicative.
    fn binary(&mut self, level: usize) -> Result<Expr, PacError> {
        const LEVELS: &[&[(&str, BinOp)]] = &[
            &[
                ("===", BinOp::StrictEq),
                ("!==", BinOp::StrictNe),
                ("==", BinOp::Eq),
                ("!=", BinOp::Ne),
            ],
            &[
                ("<=", BinOp::Le),
                (">=", BinOp::Ge),
                ("<", BinOp::Lt),
                (">", BinOp::Gt),
            ],
            &[("+", BinOp::Add), ("-", BinOp::Sub)],
            &[("*", BinOp::Mul), ("/", BinOp::Div), ("%", BinOp::Rem)],
        ];
        if level == LEVELS.len() {
            return self.unary();
        }
        let mut left = self.binary(level + 1)?;
        let depth = self.depth;
        loop {
            if let Tok::Punct(p @ ("&" | "|" | "^" | "<<" | ">>" | ">>>" | "**")) = self.peek() {
                let p = *p;
                return Err(PacError::unsupported(
                    self.line(),
                    format!("operator `{p}`"),
                ));
            }
            if self.is_keyword("in") || self.is_keyword("instanceof") {
                let k = if self.is_keyword("in") {
                    "in"
                } else {
                    "instanceof"
                };
                return Err(PacError::unsupported(self.line(), format!("`{k}`")));
            }
            let Some(&(_, op)) = LEVELS[level].iter().find(|(p, _)| self.is_punct(p)) else {
                self.depth = depth;
                return Ok(left);
            };
            self.next();
            self.enter()?;
            let right = self.binary(level + 1)?;
            left = Expr::Binary(op, Box::new(left), Box::new(right));
        }
    }

    fn unary(&mut self) -> Result<Expr, PacError> {
        let op = match self.peek() {
            Tok::Punct("!") => Some(Unary::Not),
            Tok::Punct("-") => Some(Unary::Neg),
            Tok::Punct("+") => Some(Unary::Plus),
            Tok::Punct("~") => return Err(PacError::unsupported(self.line(), "operator `~`")),
            Tok::Punct(p @ ("++" | "--")) => {
                let delta = if *p == "++" { 1.0 } else { -1.0 };
                let line = self.line();
                self.next();
                let target = self.unary()?;
                if !matches!(target, Expr::Ident(_)) {
                    return Err(PacError::syntax(line, "invalid increment target"));
                }
                return Ok(Expr::Update(Box::new(target), delta, true));
            }
            _ => None,
        };
        match op {
            Some(op) => {
                self.next();
                self.enter()?;
                let operand = self.unary()?;
                self.depth -= 1;
                Ok(Expr::Unary(op, Box::new(operand)))
            }
            None => self.postfix(),
        }
    }

    fn postfix(&mut self) -> Result<Expr, PacError> {
        let mut e = self.primary()?;
        let depth = self.depth;
        loop {
            let line = self.line();
            if matches!(self.peek(), Tok::Punct("(" | "." | "[")) {
                self.enter()?;
            }
            if self.eat_punct("(") {
                let mut args = Vec::new();
                if !self.eat_punct(")") {
                    loop {
                        args.push(self.assignment()?);
                        if self.eat_punct(")") {
                            break;
                        }
                        self.expect(",")?;
                    }
                }
                e = Expr::Call(Box::new(e), args, line);
            } else if self.eat_punct(".") {
                let name = match self.next() {
                    Tok::Ident(n) => n,
                    _ => return Err(PacError::syntax(line, "expected a property name")),
                };
                e = Expr::Member(Box::new(e), name);
            } else if self.eat_punct("[") {
                let index = self.expression()?;
                self.expect("]")?;
                e = Expr::Index(Box::new(e), Box::new(index));
            } else if matches!(self.peek(), Tok::Punct("++" | "--"))
                && line == self.tokens[self.pos - 1].line
                && matches!(e, Expr::Ident(_))
            {
                let delta = if self.is_punct("++") { 1.0 } else { -1.0 };
                self.next();
                e = Expr::Update(Box::new(e), delta, false);
            } else {
                self.depth = depth;
                return Ok(e);
            }
        }
    }

    fn primary(&mut self) -> Result<Expr, PacError> {
        let line = self.line();
        let before = self.pos;
        match self.next() {
            Tok::Num(n) => Ok(Expr::Num(n)),
            Tok::Str(s) => Ok(Expr::Str(s.into())),
            Tok::Punct("(") => {
                self.enter()?;
                let e = self.expression()?;
                self.depth -= 1;
                self.expect(")")?;
                Ok(e)
            }
            Tok::Punct("[") => {
                let mut items = Vec::new();
                if !self.eat_punct("]") {
                    loop {
                        self.enter()?;
                        items.push(self.assignment()?);
                        self.depth -= 1;
                        if self.eat_punct("]") {
                            break;
                        }
                        self.expect(",")?;
                    }
                }
                Ok(Expr::Array(items))
            }
            Tok::Punct("{") => Err(PacError::unsupported(line, "object literal")),
            Tok::Ident(name) => match name.as_str() {
                "true" => Ok(Expr::Bool(true)),
                "false" => Ok(Expr::Bool(false)),
                "null" => Ok(Expr::Null),
                "undefined" => Ok(Expr::Undefined),
                "function" => Err(PacError::unsupported(line, "function expression")),
                k if UNSUPPORTED_KEYWORDS.contains(&k) => {
                    Err(PacError::unsupported(line, format!("`{k}`")))
                }
                k if is_reserved(k) => Err(PacError::syntax(line, format!("unexpected `{k}`"))),
                _ => Ok(Expr::Ident(name)),
            },
            _ => {
                self.pos = before;
                Err(self.unexpected("an expression"))
            }
        }
    }
}

fn is_reserved(name: &str) -> bool {
    matches!(
        name,
        "var"
            | "let"
            | "const"
            | "function"
            | "if"
            | "else"
            | "for"
            | "while"
            | "return"
            | "break"
            | "continue"
            | "true"
            | "false"
            | "null"
    ) || UNSUPPORTED_KEYWORDS.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::super::lexer::tokenize;
    use super::*;

    fn parse_src(src: &str) -> Result<Vec<Stmt>, PacError> {
        parse(tokenize(src)?)
    }

    /// Parses on a thread with the stack PAC evaluation gets (deep recursion in debug builds).
    fn parse_deep(src: String) -> Result<(), PacError> {
        std::thread::Builder::new()
            .stack_size(super::super::EVAL_STACK)
            .spawn(move || parse_src(&src).map(drop))
            .unwrap()
            .join()
            .unwrap()
    }

    #[test]
    fn precedence_and_statements() {
        let p = parse_src("var x = 1 + 2 * 3 == 7 && !a || b ? c : d;").unwrap();
        let Stmt::Decl(true, decls) = &p[0] else {
            panic!("{p:?}")
        };
        let Some(Expr::Conditional(test, _, _)) = &decls[0].1 else {
            panic!("{decls:?}")
        };
        assert!(matches!(**test, Expr::Logical(Logic::Or, _, _)));
        let p = parse_src(
            "function f(a, b) { for (var i = 0; i < a.length; i++) { if (a[i] == b) return i\n } return -1 }",
        )
        .unwrap();
        assert!(matches!(&p[0], Stmt::Function(f) if f.params == ["a", "b"]));
    }

    #[test]
    fn unsupported_constructs_are_named() {
        for (src, what) in [
            ("switch (x) { }", "`switch`"),
            ("var o = {a: 1};", "object literal"),
            ("var f = function () {};", "function expression"),
            ("x = a & b;", "operator `&`"),
            ("try { } catch (e) { }", "`try`"),
            ("var d = new Date();", "`new`"),
            ("var f = (a) => a;", "arrow function"),
            ("for (var k in o) {}", "for-in/for-of loop"),
        ] {
            let e = parse_src(src).unwrap_err().to_string();
            assert_eq!(
                e,
                format!("unsupported JavaScript at line 1: {what}"),
                "{src}"
            );
        }
        let e = parse_src("var a = 1;\nvar b = (1;")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("expected `)`"), "{e}");
        assert!(parse_src("a b").is_err());
        assert!(parse_src("1 = 2;").is_err());
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let src = format!("x = {}1{};", "(".repeat(100_000), ")".repeat(100_000));
        assert!(matches!(parse_deep(src), Err(PacError::TooDeep(1))));
        let src = format!("{}{}", "{".repeat(100_000), "}".repeat(100_000));
        assert!(matches!(parse_deep(src), Err(PacError::TooDeep(1))));
        let src = format!("x = {}1;", "!".repeat(100_000));
        assert!(matches!(parse_deep(src), Err(PacError::TooDeep(1))));
        // Left-associative chains nest the tree as deeply as brackets do.
        let src = format!("x = 1{};", " + 1".repeat(100_000));
        assert!(matches!(parse_deep(src), Err(PacError::TooDeep(1))));
        let src = format!("x = a{};", ".b".repeat(100_000));
        assert!(matches!(parse_deep(src), Err(PacError::TooDeep(1))));
        // Long but realistic chains of conditions are fine.
        let src = format!("x = a{};", " || dnsDomainIs(host, 'x')".repeat(300));
        parse_deep(src).unwrap();
    }
}
