//! FHIRPath text to an expression tree: a tokenizer and a precedence-climbing parser with the
//! specification's operator precedence (FHIRPath N1 §"Operator precedence").

use rust_decimal::Decimal;
use std::str::FromStr;

use crate::Error;

/// A binary operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `div`
    IntDiv,
    /// `mod`
    Mod,
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `&`
    Concat,
    /// `|`
    Union,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `=`
    Eq,
    /// `!=`
    Ne,
    /// `~`
    Equiv,
    /// `!~`
    NotEquiv,
    /// `in`
    In,
    /// `contains`
    Contains,
    /// `and`
    And,
    /// `or`
    Or,
    /// `xor`
    Xor,
    /// `implies`
    Implies,
}

/// An expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// `{}`
    Empty,
    /// `true`, `false`
    Bool(bool),
    /// An integer literal.
    Int(i64),
    /// A decimal literal.
    Dec(Decimal),
    /// A string literal.
    Str(String),
    /// `@2015-02-04` (without the `@`).
    Date(String),
    /// `@2015-02-04T14:34` (without the `@`).
    DateTime(String),
    /// `@T14:34` (without the `@T`).
    Time(String),
    /// `5 'mg'`, `4 days`.
    Quantity(Decimal, String),
    /// `$this`
    This,
    /// `$index`
    Index,
    /// `$total`
    Total,
    /// `%name`
    Var(String),
    /// `name` on the focus (`None`: at the start of an expression or argument).
    Member(Option<Box<Expr>>, String),
    /// `name(args)` on the focus.
    Call(Option<Box<Expr>>, String, Vec<Expr>),
    /// `e[i]`
    Indexer(Box<Expr>, Box<Expr>),
    /// `-e`, `+e`
    Negate(Box<Expr>),
    /// `a op b`
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// `e is T` (true) or `e as T` (false).
    TypeOp(bool, Box<Expr>, String),
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Quoted(String),
    Str(String),
    Num(String),
    At(String),
    Var(String),
    Dollar(String),
    Op(&'static str),
    Eof,
}

fn syntax(msg: impl Into<String>) -> Error {
    Error::Syntax(msg.into())
}

fn unescape(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    quote: char,
) -> Result<String, Error> {
    let mut out = String::new();
    loop {
        match chars.next() {
            None => return Err(syntax("an unterminated string")),
            Some(c) if c == quote => return Ok(out),
            Some('\\') => match chars.next() {
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                Some('t') => out.push('\t'),
                Some('f') => out.push('\u{c}'),
                Some('u') => {
                    let hex: String = (0..4).filter_map(|_| chars.next()).collect();
                    let c = u32::from_str_radix(&hex, 16)
                        .ok()
                        .and_then(char::from_u32)
                        .ok_or_else(|| syntax(format!("a bad unicode escape \\u{hex}")))?;
                    out.push(c);
                }
                Some(c @ ('\'' | '"' | '`' | '\\' | '/')) => out.push(c),
                Some(c) => return Err(syntax(format!("an unknown escape \\{c}"))),
                None => return Err(syntax("an unterminated string")),
            },
            Some(c) => out.push(c),
        }
    }
}

fn tokens(text: &str) -> Result<Vec<Tok>, Error> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '/' => {
                chars.next();
                match chars.peek() {
                    Some('/') => {
                        for c in chars.by_ref() {
                            if c == '\n' {
                                break;
                            }
                        }
                    }
                    Some('*') => {
                        chars.next();
                        let mut prev = ' ';
                        let mut closed = false;
                        for c in chars.by_ref() {
                            if prev == '*' && c == '/' {
                                closed = true;
                                break;
                            }
                            prev = c;
                        }
                        if !closed {
                            return Err(syntax("an unterminated comment"));
                        }
                    }
                    _ => out.push(Tok::Op("/")),
                }
            }
            '\'' => {
                chars.next();
                out.push(Tok::Str(unescape(&mut chars, '\'')?));
            }
            '`' => {
                chars.next();
                out.push(Tok::Quoted(unescape(&mut chars, '`')?));
            }
            '0'..='9' => {
                let mut n = take_while(&mut chars, |d| d.is_ascii_digit());
                // A decimal point only when a digit follows (`1.toString()` is a call).
                if dot_then_digit(&chars) {
                    chars.next();
                    n.push('.');
                    n.push_str(&take_while(&mut chars, |d| d.is_ascii_digit()));
                }
                out.push(Tok::Num(n));
            }
            '@' => {
                chars.next();
                let mut s = String::new();
                while let Some(&d) = chars.peek() {
                    // A '.' belongs to the literal only before a digit (fractional seconds):
                    // `@2015.is(Date)` is a call on the literal.
                    if d.is_ascii_digit()
                        || matches!(d, '-' | ':' | 'T' | '+' | 'Z')
                        || dot_then_digit(&chars)
                    {
                        s.push(d);
                        chars.next();
                    } else {
                        break;
                    }
                }
                out.push(Tok::At(s));
            }
            '%' => {
                chars.next();
                let name = match chars.peek() {
                    Some('`') => {
                        chars.next();
                        unescape(&mut chars, '`')?
                    }
                    Some('\'') => {
                        chars.next();
                        unescape(&mut chars, '\'')?
                    }
                    _ => ident(&mut chars),
                };
                if name.is_empty() {
                    return Err(syntax("% without a name"));
                }
                out.push(Tok::Var(name));
            }
            '$' => {
                chars.next();
                out.push(Tok::Dollar(ident(&mut chars)));
            }
            c if c.is_alphabetic() || c == '_' => out.push(Tok::Ident(ident(&mut chars))),
            _ => {
                chars.next();
                let two = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>, next: char| {
                    if chars.peek() == Some(&next) {
                        chars.next();
                        true
                    } else {
                        false
                    }
                };
                let op = match c {
                    '(' => "(",
                    ')' => ")",
                    '[' => "[",
                    ']' => "]",
                    '{' => "{",
                    '}' => "}",
                    ',' => ",",
                    '.' => ".",
                    '+' => "+",
                    '-' => "-",
                    '*' => "*",
                    '|' => "|",
                    '&' => "&",
                    '=' => "=",
                    '~' => "~",
                    '<' if two(&mut chars, '=') => "<=",
                    '<' => "<",
                    '>' if two(&mut chars, '=') => ">=",
                    '>' => ">",
                    '!' if two(&mut chars, '=') => "!=",
                    '!' if two(&mut chars, '~') => "!~",
                    other => return Err(syntax(format!("an unexpected character '{other}'"))),
                };
                out.push(Tok::Op(op));
            }
        }
    }
    out.push(Tok::Eof);
    Ok(out)
}

fn ident(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> String {
    take_while(chars, |c| c.is_alphanumeric() || c == '_')
}

/// The characters from the cursor on while `keep` holds.
fn take_while(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    keep: impl Fn(char) -> bool,
) -> String {
    let mut s = String::new();
    while let Some(&c) = chars.peek() {
        if !keep(c) {
            break;
        }
        s.push(c);
        chars.next();
    }
    s
}

/// Whether the cursor is at a '.' followed by a digit.
fn dot_then_digit(chars: &std::iter::Peekable<std::str::Chars<'_>>) -> bool {
    let mut ahead = chars.clone();
    ahead.next() == Some('.') && ahead.peek().is_some_and(char::is_ascii_digit)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

/// The calendar duration words of quantity literals (`4 days`).
pub(crate) const CALENDAR: &[&str] = &[
    "year",
    "years",
    "month",
    "months",
    "week",
    "weeks",
    "day",
    "days",
    "hour",
    "hours",
    "minute",
    "minutes",
    "second",
    "seconds",
    "millisecond",
    "milliseconds",
];

impl Parser {
    fn peek(&self) -> &Tok {
        &self.toks[self.pos]
    }
    fn next(&mut self) -> Tok {
        let t = self.toks[self.pos].clone();
        if self.pos < self.toks.len() - 1 {
            self.pos += 1;
        }
        t
    }
    fn expect(&mut self, op: &'static str) -> Result<(), Error> {
        match self.next() {
            Tok::Op(o) if o == op => Ok(()),
            other => Err(syntax(format!("expected '{op}', found {other:?}"))),
        }
    }

    /// The operator at the cursor with its binding power.
    fn infix(&self) -> Option<(BinOp, u8)> {
        Some(match self.peek() {
            Tok::Op("*") => (BinOp::Mul, 10),
            Tok::Op("/") => (BinOp::Div, 10),
            Tok::Ident(i) if i == "div" => (BinOp::IntDiv, 10),
            Tok::Ident(i) if i == "mod" => (BinOp::Mod, 10),
            Tok::Op("+") => (BinOp::Add, 9),
            Tok::Op("-") => (BinOp::Sub, 9),
            Tok::Op("&") => (BinOp::Concat, 9),
            Tok::Op("|") => (BinOp::Union, 7),
            Tok::Op("<") => (BinOp::Lt, 6),
            Tok::Op("<=") => (BinOp::Le, 6),
            Tok::Op(">") => (BinOp::Gt, 6),
            Tok::Op(">=") => (BinOp::Ge, 6),
            Tok::Op("=") => (BinOp::Eq, 5),
            Tok::Op("!=") => (BinOp::Ne, 5),
            Tok::Op("~") => (BinOp::Equiv, 5),
            Tok::Op("!~") => (BinOp::NotEquiv, 5),
            Tok::Ident(i) if i == "in" => (BinOp::In, 4),
            Tok::Ident(i) if i == "contains" => (BinOp::Contains, 4),
            Tok::Ident(i) if i == "and" => (BinOp::And, 3),
            Tok::Ident(i) if i == "or" => (BinOp::Or, 2),
            Tok::Ident(i) if i == "xor" => (BinOp::Xor, 2),
            Tok::Ident(i) if i == "implies" => (BinOp::Implies, 1),
            _ => return None,
        })
    }

    fn expr(&mut self, min: u8) -> Result<Expr, Error> {
        let mut left = self.unary()?;
        loop {
            // `is` and `as` bind between `|` and `+` and take a type name.
            if let Tok::Ident(i) = self.peek() {
                if (i == "is" || i == "as") && min <= 8 {
                    let is = i == "is";
                    self.next();
                    let ty = self.type_name()?;
                    left = Expr::TypeOp(is, Box::new(left), ty);
                    continue;
                }
            }
            let Some((op, bp)) = self.infix() else { break };
            if bp < min {
                break;
            }
            self.next();
            let right = self.expr(bp + 1)?;
            left = Expr::Binary(op, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn type_name(&mut self) -> Result<String, Error> {
        let mut name = match self.next() {
            Tok::Ident(i) | Tok::Quoted(i) => i,
            other => return Err(syntax(format!("expected a type name, found {other:?}"))),
        };
        while self.peek() == &Tok::Op(".") {
            self.next();
            match self.next() {
                Tok::Ident(i) | Tok::Quoted(i) => {
                    name.push('.');
                    name.push_str(&i);
                }
                other => return Err(syntax(format!("expected a type name, found {other:?}"))),
            }
        }
        Ok(name)
    }

    fn unary(&mut self) -> Result<Expr, Error> {
        match self.peek() {
            Tok::Op("-") => {
                self.next();
                let e = self.unary()?;
                Ok(match e {
                    Expr::Int(i) => Expr::Int(-i),
                    Expr::Dec(d) => Expr::Dec(-d),
                    Expr::Quantity(d, u) => Expr::Quantity(-d, u),
                    other => Expr::Negate(Box::new(other)),
                })
            }
            Tok::Op("+") => {
                self.next();
                self.unary()
            }
            _ => self.postfix(),
        }
    }

    fn postfix(&mut self) -> Result<Expr, Error> {
        let mut e = self.term()?;
        loop {
            match self.peek() {
                Tok::Op(".") => {
                    self.next();
                    let name = match self.next() {
                        Tok::Ident(i) | Tok::Quoted(i) => i,
                        other => {
                            return Err(syntax(format!(
                                "expected a name after '.', found {other:?}"
                            )))
                        }
                    };
                    if self.peek() == &Tok::Op("(") {
                        let args = self.args()?;
                        e = Expr::Call(Some(Box::new(e)), name, args);
                    } else {
                        e = Expr::Member(Some(Box::new(e)), name);
                    }
                }
                Tok::Op("[") => {
                    self.next();
                    let i = self.expr(0)?;
                    self.expect("]")?;
                    e = Expr::Indexer(Box::new(e), Box::new(i));
                }
                _ => return Ok(e),
            }
        }
    }

    fn args(&mut self) -> Result<Vec<Expr>, Error> {
        self.expect("(")?;
        let mut args = Vec::new();
        if self.peek() == &Tok::Op(")") {
            self.next();
            return Ok(args);
        }
        loop {
            args.push(self.expr(0)?);
            match self.next() {
                Tok::Op(",") => {}
                Tok::Op(")") => return Ok(args),
                other => return Err(syntax(format!("expected ',' or ')', found {other:?}"))),
            }
        }
    }

    fn term(&mut self) -> Result<Expr, Error> {
        match self.next() {
            Tok::Num(n) => {
                // A number followed by a unit is a quantity.
                let unit = match self.peek() {
                    Tok::Str(u) => Some(u.clone()),
                    Tok::Ident(i) if CALENDAR.contains(&i.as_str()) => Some(i.clone()),
                    _ => None,
                };
                let value =
                    Decimal::from_str(&n).map_err(|_| syntax(format!("a bad number {n}")))?;
                if let Some(u) = unit {
                    self.next();
                    return Ok(Expr::Quantity(value, u));
                }
                if n.contains('.') {
                    Ok(Expr::Dec(value))
                } else {
                    n.parse::<i64>()
                        .map(Expr::Int)
                        .map_err(|_| syntax(format!("the integer {n} is too large")))
                }
            }
            Tok::Str(s) => Ok(Expr::Str(s)),
            Tok::At(s) => date_literal(&s),
            Tok::Var(v) => Ok(Expr::Var(v)),
            Tok::Dollar(d) => match d.as_str() {
                "this" => Ok(Expr::This),
                "index" => Ok(Expr::Index),
                "total" => Ok(Expr::Total),
                other => Err(syntax(format!("unknown ${other}"))),
            },
            Tok::Op("(") => {
                let e = self.expr(0)?;
                self.expect(")")?;
                Ok(e)
            }
            Tok::Op("{") => {
                self.expect("}")?;
                Ok(Expr::Empty)
            }
            Tok::Ident(i) if i == "true" => Ok(Expr::Bool(true)),
            Tok::Ident(i) if i == "false" => Ok(Expr::Bool(false)),
            Tok::Ident(i) | Tok::Quoted(i) => {
                if self.peek() == &Tok::Op("(") {
                    let args = self.args()?;
                    Ok(Expr::Call(None, i, args))
                } else {
                    Ok(Expr::Member(None, i))
                }
            }
            other => Err(syntax(format!("unexpected {other:?}"))),
        }
    }
}

fn date_literal(s: &str) -> Result<Expr, Error> {
    let bad = || syntax(format!("@{s} is not a date, dateTime or time"));
    if let Some(t) = s.strip_prefix('T') {
        // A time has no zone.
        if t.is_empty() || !t.as_bytes()[0].is_ascii_digit() || t.contains(['Z', '+', '-']) {
            return Err(bad());
        }
        return Ok(Expr::Time(t.to_string()));
    }
    if s.len() < 4 || !s[..4].bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match s.find('T') {
        Some(_) => Ok(Expr::DateTime(s.to_string())),
        None => {
            // A date literal cannot carry a zone.
            if s.contains('Z') || s[4..].contains('+') {
                return Err(bad());
            }
            Ok(Expr::Date(s.to_string()))
        }
    }
}

/// Parses a FHIRPath expression.
pub fn parse(text: &str) -> Result<Expr, Error> {
    let mut p = Parser {
        toks: tokens(text)?,
        pos: 0,
    };
    let e = p.expr(0)?;
    if p.peek() != &Tok::Eof {
        return Err(syntax(format!(
            "unexpected {:?} after the expression",
            p.peek()
        )));
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_and_literals() {
        let e = parse("1 + 2 * 3 = 7 and true").unwrap();
        assert!(matches!(e, Expr::Binary(BinOp::And, _, _)));
        assert!(matches!(parse("4 'mg'").unwrap(), Expr::Quantity(_, u) if u == "mg"));
        assert!(matches!(
            parse("@2015-02-04T14:34").unwrap(),
            Expr::DateTime(_)
        ));
        assert!(matches!(parse("@T14:34").unwrap(), Expr::Time(_)));
        assert!(parse("2 + 2 /").is_err());
        assert!(parse("2 + 2 /* open").is_err());
        assert!(matches!(
            parse("Patient.name.where(use = 'official').given.first()").unwrap(),
            Expr::Call(Some(_), f, _) if f == "first"
        ));
        assert!(
            matches!(parse("value is Quantity").unwrap(), Expr::TypeOp(true, _, t) if t == "Quantity")
        );
    }
}
