//! Tree-walking evaluator of the PAC JavaScript subset. Every statement and expression costs
//! one step of a fixed budget and the depth of evaluation is bounded, so that no PAC file can
//! hang or crash the mount; strings and arrays have size limits for the same reason.

use std::collections::HashMap;
use std::rc::Rc;

use super::ast::{BinOp, Expr, Function, Logic, Stmt, Unary};
use super::builtins;
use super::{PacError, PacHost};

/// Statements plus expressions evaluated per PAC evaluation (top level and one call).
pub const MAX_STEPS: u64 = 2_000_000;
/// Deepest evaluation (nested expressions, statements and calls together).
pub const MAX_EVAL_DEPTH: usize = 1_000;
/// Longest string a script may build, in bytes.
pub const MAX_STRING_LEN: usize = 1 << 20;
/// Deepest nesting of arrays in arrays.
pub const MAX_ARRAY_NESTING: usize = 32;
/// Most elements an array may have.
pub const MAX_ARRAY_LEN: usize = 1 << 16;

/// A JavaScript value of the subset.
#[derive(Debug, Clone)]
pub enum Value {
    Undefined,
    Null,
    Bool(bool),
    Num(f64),
    Str(Rc<str>),
    Array(Rc<Array>),
    Function(Rc<Function>),
    /// A built-in function, by name.
    Builtin(&'static str),
}

/// Arrays are immutable after creation, so that no value can contain itself.
#[derive(Debug)]
pub struct Array {
    pub items: Vec<Value>,
    /// 1 + the nesting of the deepest element array.
    pub nesting: usize,
}

impl Value {
    pub fn str(s: impl Into<Rc<str>>) -> Value {
        Value::Str(s.into())
    }

    pub fn array(items: Vec<Value>) -> Result<Value, PacError> {
        if items.len() > MAX_ARRAY_LEN {
            return Err(PacError::Limit("array too long"));
        }
        let nesting = 1 + items
            .iter()
            .map(|v| match v {
                Value::Array(a) => a.nesting,
                _ => 0,
            })
            .max()
            .unwrap_or(0);
        if nesting > MAX_ARRAY_NESTING {
            return Err(PacError::Limit("arrays nested too deeply"));
        }
        Ok(Value::Array(Rc::new(Array { items, nesting })))
    }

    pub fn truthy(&self) -> bool {
        match self {
            Value::Undefined | Value::Null => false,
            Value::Bool(b) => *b,
            Value::Num(n) => *n != 0.0 && !n.is_nan(),
            Value::Str(s) => !s.is_empty(),
            Value::Array(_) | Value::Function(_) | Value::Builtin(_) => true,
        }
    }

    /// JavaScript `ToString`.
    pub fn to_js_string(&self) -> String {
        match self {
            Value::Undefined => "undefined".into(),
            Value::Null => "null".into(),
            Value::Bool(b) => b.to_string(),
            Value::Num(n) => number_to_string(*n),
            Value::Str(s) => s.to_string(),
            Value::Array(a) => a
                .items
                .iter()
                .map(|v| match v {
                    Value::Undefined | Value::Null => String::new(),
                    v => v.to_js_string(),
                })
                .collect::<Vec<_>>()
                .join(","),
            Value::Function(f) => format!("function {}() {{ [code] }}", f.name),
            Value::Builtin(name) => format!("function {name}() {{ [native code] }}"),
        }
    }

    /// JavaScript `ToNumber`.
    pub fn to_number(&self) -> f64 {
        match self {
            Value::Undefined => f64::NAN,
            Value::Null => 0.0,
            Value::Bool(b) => f64::from(u8::from(*b)),
            Value::Num(n) => *n,
            Value::Str(s) => string_to_number(s),
            Value::Array(_) => string_to_number(&self.to_js_string()),
            Value::Function(_) | Value::Builtin(_) => f64::NAN,
        }
    }

    fn is_primitive(&self) -> bool {
        !matches!(
            self,
            Value::Array(_) | Value::Function(_) | Value::Builtin(_)
        )
    }
}

pub fn number_to_string(n: f64) -> String {
    if n.is_nan() {
        "NaN".into()
    } else if n.is_infinite() {
        if n > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else if n == 0.0 {
        "0".into()
    } else if n.abs() >= 1e21 || n.abs() < 1e-6 {
        let e = format!("{n:e}");
        match e.split_once('e') {
            Some((m, x)) if !x.starts_with('-') => format!("{m}e+{x}"),
            _ => e,
        }
    } else if n.fract() == 0.0 {
        format!("{n:.0}")
    } else {
        format!("{n}")
    }
}

pub fn string_to_number(s: &str) -> f64 {
    let t = s.trim();
    if t.is_empty() {
        return 0.0;
    }
    if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        return u64::from_str_radix(hex, 16).map_or(f64::NAN, |v| v as f64);
    }
    match t.trim_start_matches(['+', '-']) {
        "Infinity" => {
            return if t.starts_with('-') {
                f64::NEG_INFINITY
            } else {
                f64::INFINITY
            }
        }
        // Rust also parses "inf" and "nan", JavaScript does not.
        body if !body
            .bytes()
            .all(|c| c.is_ascii_digit() || b".eE+-".contains(&c)) =>
        {
            return f64::NAN
        }
        _ => {}
    }
    t.parse().unwrap_or(f64::NAN)
}

pub fn strict_equals(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Undefined, Value::Undefined) | (Value::Null, Value::Null) => true,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Num(x), Value::Num(y)) => x == y,
        (Value::Str(x), Value::Str(y)) => x == y,
        (Value::Array(x), Value::Array(y)) => Rc::ptr_eq(x, y),
        (Value::Function(x), Value::Function(y)) => Rc::ptr_eq(x, y),
        (Value::Builtin(x), Value::Builtin(y)) => x == y,
        _ => false,
    }
}

/// JavaScript `==`.
pub fn loose_equals(a: &Value, b: &Value) -> bool {
    use Value::*;
    match (a, b) {
        (Undefined | Null, Undefined | Null) => true,
        (Undefined | Null, _) | (_, Undefined | Null) => false,
        (Num(_), Str(_)) | (Str(_), Num(_)) | (Bool(_), _) | (_, Bool(_))
            if a.is_primitive() && b.is_primitive() =>
        {
            a.to_number() == b.to_number()
        }
        (Bool(_), _) => loose_equals(&Num(a.to_number()), b),
        (_, Bool(_)) => loose_equals(a, &Num(b.to_number())),
        _ if a.is_primitive() != b.is_primitive() => {
            let (object, primitive) = if a.is_primitive() { (b, a) } else { (a, b) };
            loose_equals(&Value::str(object.to_js_string()), primitive)
        }
        _ => strict_equals(a, b),
    }
}

enum Flow {
    Normal,
    Return(Value),
    Break,
    Continue,
}

/// Local variables of one function call: its function scope, then block scopes.
struct Frame {
    scopes: Vec<HashMap<String, Value>>,
}

pub struct Interpreter<'h> {
    globals: HashMap<String, Value>,
    frames: Vec<Frame>,
    steps: u64,
    depth: usize,
    host: &'h dyn PacHost,
}

impl<'h> Interpreter<'h> {
    pub fn new(host: &'h dyn PacHost) -> Self {
        Interpreter {
            globals: HashMap::new(),
            frames: Vec::new(),
            steps: 0,
            depth: 0,
            host,
        }
    }

    /// Runs the top level of a script (declares its functions and globals).
    pub fn run(&mut self, program: &[Stmt]) -> Result<(), PacError> {
        self.hoist(program);
        match self.exec_block(program)? {
            Flow::Normal | Flow::Return(_) => Ok(()),
            Flow::Break | Flow::Continue => Err(PacError::Runtime(
                "break or continue outside of a loop".into(),
            )),
        }
    }

    /// Calls the global function `name`.
    pub fn call_global(&mut self, name: &str, args: Vec<Value>) -> Result<Value, PacError> {
        match self.globals.get(name).cloned() {
            Some(Value::Function(f)) => self.call_function(&f, args),
            Some(_) => Err(PacError::Runtime(format!("{name} is not a function"))),
            None => Err(PacError::Runtime(format!("{name} is not defined"))),
        }
    }

    /// A fresh step budget for the next call.
    pub fn reset_budget(&mut self) {
        self.steps = 0;
    }

    fn tick(&mut self) -> Result<(), PacError> {
        self.steps += 1;
        if self.steps > MAX_STEPS {
            return Err(PacError::Limit("step budget exhausted (endless loop?)"));
        }
        Ok(())
    }

    fn enter(&mut self) -> Result<(), PacError> {
        self.depth += 1;
        if self.depth > MAX_EVAL_DEPTH {
            return Err(PacError::Limit(
                "evaluation nested too deeply (endless recursion?)",
            ));
        }
        Ok(())
    }

    /// Function declarations of a body are visible before their statement runs.
    fn hoist(&mut self, body: &[Stmt]) {
        for s in body {
            if let Stmt::Function(f) = s {
                self.declare(true, &f.name, Value::Function(Rc::clone(f)));
            }
        }
    }

    fn declare(&mut self, function_scoped: bool, name: &str, value: Value) {
        let scope = match self.frames.last_mut() {
            None => &mut self.globals,
            Some(frame) => {
                let scope = if function_scoped {
                    frame.scopes.first_mut()
                } else {
                    frame.scopes.last_mut()
                };
                match scope {
                    Some(s) => s,
                    None => &mut self.globals,
                }
            }
        };
        scope.insert(name.to_string(), value);
    }

    /// Own locals first; then functions declared in the callers' bodies (there are no closures,
    /// but a nested function must see itself and its siblings); then globals and built-ins.
    fn lookup(&self, name: &str) -> Option<Value> {
        let mut frames = self.frames.iter().rev();
        if let Some(frame) = frames.next() {
            if let Some(v) = frame.scopes.iter().rev().find_map(|s| s.get(name)) {
                return Some(v.clone());
            }
        }
        let nested_function =
            frames
                .flat_map(|f| f.scopes.iter().rev())
                .find_map(|s| match s.get(name) {
                    Some(v @ Value::Function(_)) => Some(v.clone()),
                    _ => None,
                });
        nested_function
            .or_else(|| self.globals.get(name).cloned())
            .or_else(|| builtins::global(name))
    }

    fn assign(&mut self, name: &str, value: Value) {
        if let Some(frame) = self.frames.last_mut() {
            if let Some(slot) = frame.scopes.iter_mut().rev().find_map(|s| s.get_mut(name)) {
                *slot = value;
                return;
            }
        }
        // Sloppy mode: assigning an undeclared name creates a global.
        self.globals.insert(name.to_string(), value);
    }

    fn call_function(&mut self, f: &Rc<Function>, args: Vec<Value>) -> Result<Value, PacError> {
        self.enter()?;
        let mut scope = HashMap::new();
        let mut args = args.into_iter();
        for p in &f.params {
            scope.insert(p.clone(), args.next().unwrap_or(Value::Undefined));
        }
        self.frames.push(Frame {
            scopes: vec![scope],
        });
        self.hoist(&f.body);
        let result = self.exec_block(&f.body);
        self.frames.pop();
        self.depth -= 1;
        Ok(match result? {
            Flow::Return(v) => v,
            _ => Value::Undefined,
        })
    }

    fn exec_block(&mut self, body: &[Stmt]) -> Result<Flow, PacError> {
        for s in body {
            match self.exec(s)? {
                Flow::Normal => {}
                other => return Ok(other),
            }
        }
        Ok(Flow::Normal)
    }

    /// Runs `body` in a new block scope (for `let`/`const`).
    fn exec_scoped(&mut self, body: &[Stmt]) -> Result<Flow, PacError> {
        match self.frames.last_mut() {
            Some(frame) => {
                frame.scopes.push(HashMap::new());
                let r = self.exec_block(body);
                if let Some(frame) = self.frames.last_mut() {
                    frame.scopes.pop();
                }
                r
            }
            // Top-level blocks declare into the globals.
            None => self.exec_block(body),
        }
    }

    fn exec(&mut self, s: &Stmt) -> Result<Flow, PacError> {
        self.tick()?;
        self.enter()?;
        let r = self.exec_inner(s);
        self.depth -= 1;
        r
    }

    fn exec_inner(&mut self, s: &Stmt) -> Result<Flow, PacError> {
        match s {
            Stmt::Empty => Ok(Flow::Normal),
            // Declared when its body was entered (hoisting); inside a nested block, when reached.
            Stmt::Function(f) => {
                self.declare(true, &f.name, Value::Function(Rc::clone(f)));
                Ok(Flow::Normal)
            }
            Stmt::Decl(function_scoped, decls) => {
                for (name, init) in decls {
                    match init {
                        Some(e) => {
                            let v = self.eval(e)?;
                            self.declare(*function_scoped, name, v);
                        }
                        // `var x;` keeps an existing value; `let x;` is undefined.
                        None if *function_scoped && self.lookup_local(name) => {}
                        None => self.declare(*function_scoped, name, Value::Undefined),
                    }
                }
                Ok(Flow::Normal)
            }
            Stmt::Expr(e) => {
                self.eval(e)?;
                Ok(Flow::Normal)
            }
            Stmt::If(test, then, otherwise) => {
                if self.eval(test)?.truthy() {
                    self.exec(then)
                } else if let Some(o) = otherwise {
                    self.exec(o)
                } else {
                    Ok(Flow::Normal)
                }
            }
            Stmt::While(test, body) => {
                while self.eval(test)?.truthy() {
                    match self.exec(body)? {
                        Flow::Break => break,
                        Flow::Return(v) => return Ok(Flow::Return(v)),
                        Flow::Normal | Flow::Continue => {}
                    }
                }
                Ok(Flow::Normal)
            }
            Stmt::For {
                init,
                test,
                update,
                body,
            } => {
                if let Some(init) = init {
                    self.exec(init)?;
                }
                loop {
                    if let Some(t) = test {
                        if !self.eval(t)?.truthy() {
                            break;
                        }
                    } else {
                        self.tick()?;
                    }
                    match self.exec(body)? {
                        Flow::Break => break,
                        Flow::Return(v) => return Ok(Flow::Return(v)),
                        Flow::Normal | Flow::Continue => {}
                    }
                    if let Some(u) = update {
                        self.eval(u)?;
                    }
                }
                Ok(Flow::Normal)
            }
            Stmt::Block(body) => self.exec_scoped(body),
            Stmt::Return(e) => Ok(Flow::Return(match e {
                Some(e) => self.eval(e)?,
                None => Value::Undefined,
            })),
            Stmt::Break => Ok(Flow::Break),
            Stmt::Continue => Ok(Flow::Continue),
        }
    }

    fn lookup_local(&self, name: &str) -> bool {
        match self.frames.last() {
            Some(f) => f.scopes.iter().any(|s| s.contains_key(name)),
            None => self.globals.contains_key(name),
        }
    }

    pub fn eval(&mut self, e: &Expr) -> Result<Value, PacError> {
        self.tick()?;
        self.enter()?;
        let r = self.eval_inner(e);
        self.depth -= 1;
        // Building a string costs in proportion to its size: a loop appending to a long string
        // copies it every time.
        match (e, &r) {
            (Expr::Binary(..) | Expr::Assign(..) | Expr::Call(..), Ok(Value::Str(s))) => {
                self.steps += (s.len() / 64) as u64;
            }
            (Expr::Call(..), Ok(Value::Array(a))) => self.steps += a.items.len() as u64,
            _ => {}
        }
        r
    }

    fn eval_inner(&mut self, e: &Expr) -> Result<Value, PacError> {
        Ok(match e {
            Expr::Num(n) => Value::Num(*n),
            Expr::Str(s) => Value::Str(Rc::clone(s)),
            Expr::Bool(b) => Value::Bool(*b),
            Expr::Null => Value::Null,
            Expr::Undefined => Value::Undefined,
            Expr::Ident(name) => self
                .lookup(name)
                .ok_or_else(|| PacError::Runtime(format!("{name} is not defined")))?,
            Expr::Array(items) => {
                let mut values = Vec::with_capacity(items.len());
                for i in items {
                    values.push(self.eval(i)?);
                }
                Value::array(values)?
            }
            Expr::Binary(op, a, b) => {
                let a = self.eval(a)?;
                let b = self.eval(b)?;
                binary(*op, &a, &b)?
            }
            Expr::Logical(op, a, b) => {
                let a = self.eval(a)?;
                match (op, a.truthy()) {
                    (Logic::And, false) | (Logic::Or, true) => a,
                    _ => self.eval(b)?,
                }
            }
            Expr::Unary(op, a) => {
                let a = self.eval(a)?;
                match op {
                    Unary::Not => Value::Bool(!a.truthy()),
                    Unary::Neg => Value::Num(-a.to_number()),
                    Unary::Plus => Value::Num(a.to_number()),
                }
            }
            Expr::Conditional(test, yes, no) => {
                if self.eval(test)?.truthy() {
                    self.eval(yes)?
                } else {
                    self.eval(no)?
                }
            }
            Expr::Assign(target, op, value) => {
                let Expr::Ident(name) = &**target else {
                    return Err(PacError::Runtime("invalid assignment target".into()));
                };
                let mut v = self.eval(value)?;
                if let Some(op) = op {
                    let old = self
                        .lookup(name)
                        .ok_or_else(|| PacError::Runtime(format!("{name} is not defined")))?;
                    v = binary(*op, &old, &v)?;
                }
                self.assign(name, v.clone());
                v
            }
            Expr::Update(target, delta, prefix) => {
                let Expr::Ident(name) = &**target else {
                    return Err(PacError::Runtime("invalid increment target".into()));
                };
                let old = self
                    .lookup(name)
                    .ok_or_else(|| PacError::Runtime(format!("{name} is not defined")))?
                    .to_number();
                self.assign(name, Value::Num(old + delta));
                Value::Num(if *prefix { old + delta } else { old })
            }
            Expr::Member(object, name) => {
                let o = self.eval(object)?;
                member(&o, name)?
            }
            Expr::Index(object, index) => {
                let o = self.eval(object)?;
                let i = self.eval(index)?;
                index_value(&o, &i)?
            }
            Expr::Call(callee, args, line) => self.call(callee, args, *line)?,
        })
    }

    fn call(&mut self, callee: &Expr, args: &[Expr], line: u32) -> Result<Value, PacError> {
        let method_of = match callee {
            Expr::Member(object, name) => Some((self.eval(object)?, name)),
            _ => None,
        };
        let function = match &method_of {
            Some(_) => None,
            None => Some(self.eval(callee)?),
        };
        let mut values = Vec::with_capacity(args.len());
        for a in args {
            values.push(self.eval(a)?);
        }
        match (method_of, function) {
            (Some((object, name)), _) => builtins::method(&object, name, &values, line),
            (None, Some(Value::Function(f))) => self.call_function(&f, values),
            (None, Some(Value::Builtin(name))) => builtins::call(name, &values, self.host),
            (None, Some(other)) => Err(PacError::Runtime(format!(
                "line {line}: {} is not a function",
                other.to_js_string()
            ))),
            (None, None) => Err(PacError::Runtime(format!("line {line}: nothing to call"))),
        }
    }
}

fn member(o: &Value, name: &str) -> Result<Value, PacError> {
    match (o, name) {
        (Value::Str(s), "length") => Ok(Value::Num(s.chars().count() as f64)),
        (Value::Array(a), "length") => Ok(Value::Num(a.items.len() as f64)),
        (Value::Undefined | Value::Null, _) => Err(PacError::Runtime(format!(
            "cannot read property {name:?} of {}",
            o.to_js_string()
        ))),
        _ => Ok(Value::Undefined),
    }
}

fn index_value(o: &Value, i: &Value) -> Result<Value, PacError> {
    if let Value::Str(name) = i {
        if !matches!(o, Value::Array(_) | Value::Str(_)) || &**name == "length" {
            return member(o, name);
        }
    }
    let n = i.to_number();
    let idx = (n >= 0.0 && n.fract() == 0.0).then_some(n as usize);
    Ok(match (o, idx) {
        (Value::Array(a), Some(k)) => a.items.get(k).cloned().unwrap_or(Value::Undefined),
        (Value::Str(s), Some(k)) => s
            .chars()
            .nth(k)
            .map_or(Value::Undefined, |c| Value::str(c.to_string())),
        (Value::Undefined | Value::Null, _) => {
            return Err(PacError::Runtime(format!(
                "cannot index {}",
                o.to_js_string()
            )))
        }
        _ => Value::Undefined,
    })
}

fn binary(op: BinOp, a: &Value, b: &Value) -> Result<Value, PacError> {
    let num = |f: fn(f64, f64) -> f64| Value::Num(f(a.to_number(), b.to_number()));
    Ok(match op {
        BinOp::Add => {
            let a_str = matches!(a, Value::Str(_)) || !a.is_primitive();
            let b_str = matches!(b, Value::Str(_)) || !b.is_primitive();
            if a_str || b_str {
                let (x, y) = (a.to_js_string(), b.to_js_string());
                if x.len() + y.len() > MAX_STRING_LEN {
                    return Err(PacError::Limit("string too long"));
                }
                Value::str(x + &y)
            } else {
                num(|x, y| x + y)
            }
        }
        BinOp::Sub => num(|x, y| x - y),
        BinOp::Mul => num(|x, y| x * y),
        BinOp::Div => num(|x, y| x / y),
        BinOp::Rem => num(|x, y| x % y),
        BinOp::Eq => Value::Bool(loose_equals(a, b)),
        BinOp::Ne => Value::Bool(!loose_equals(a, b)),
        BinOp::StrictEq => Value::Bool(strict_equals(a, b)),
        BinOp::StrictNe => Value::Bool(!strict_equals(a, b)),
        BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
            let ord = match (a, b) {
                (Value::Str(x), Value::Str(y)) => Some(x.cmp(y)),
                _ => a.to_number().partial_cmp(&b.to_number()),
            };
            Value::Bool(ord.is_some_and(|o| match op {
                BinOp::Lt => o.is_lt(),
                BinOp::Le => o.is_le(),
                BinOp::Gt => o.is_gt(),
                _ => o.is_ge(),
            }))
        }
    })
}
