//! RFC 5228 §8.2 grammar into an untyped tree ([`RawCmd`]/[`RawTest`]).
//!
//! The parser knows nothing about which commands exist: that is
//! [`crate::validate`]'s job, so that grammar errors and "unknown command"
//! errors stay separate and both carry a line number. Nesting depth is
//! bounded so that hostile input cannot overflow the stack.

use crate::lexer::{Tok, Token};
use crate::CompileError;

#[derive(Debug, Clone)]
pub(crate) enum RawArg {
    /// A single string (also usable where a string list is expected).
    Str(String),
    List(Vec<String>),
    Num(u64),
    Tag(String),
}

#[derive(Debug, Clone)]
pub(crate) struct RawTest {
    pub name: String,
    pub line: usize,
    pub args: Vec<RawArg>,
    pub tests: Vec<RawTest>,
    /// True when the tests came in a `( ... )` test list.
    pub test_list: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct RawCmd {
    pub name: String,
    pub line: usize,
    pub args: Vec<RawArg>,
    pub tests: Vec<RawTest>,
    pub test_list: bool,
    pub block: Option<Vec<RawCmd>>,
}

struct Parser<'a> {
    toks: &'a [Token],
    pos: usize,
    max_depth: usize,
}

fn err(line: usize, message: impl Into<String>) -> CompileError {
    CompileError {
        line,
        message: message.into(),
    }
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Ident(s) => format!("identifier \"{s}\""),
        Tok::Tag(s) => format!("tag \":{s}\""),
        Tok::Number(n) => format!("number {n}"),
        Tok::Str(_) => "string".into(),
        Tok::LBracket => "'['".into(),
        Tok::RBracket => "']'".into(),
        Tok::LParen => "'('".into(),
        Tok::RParen => "')'".into(),
        Tok::LBrace => "'{'".into(),
        Tok::RBrace => "'}'".into(),
        Tok::Comma => "','".into(),
        Tok::Semicolon => "';'".into(),
    }
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.toks.get(self.pos)
    }

    fn last_line(&self) -> usize {
        self.toks
            .get(self.pos)
            .or_else(|| self.toks.last())
            .map_or(1, |t| t.line)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.toks.get(self.pos).cloned();
        if t.is_some() {
            self.pos += 1;
        }
        t
    }

    fn arguments(&mut self) -> Result<Vec<RawArg>, CompileError> {
        let mut args = Vec::new();
        while let Some(t) = self.peek() {
            match &t.tok {
                Tok::Str(s) => {
                    args.push(RawArg::Str(s.clone()));
                    self.pos += 1;
                }
                Tok::Number(n) => {
                    args.push(RawArg::Num(*n));
                    self.pos += 1;
                }
                Tok::Tag(s) => {
                    args.push(RawArg::Tag(s.clone()));
                    self.pos += 1;
                }
                Tok::LBracket => {
                    let line = t.line;
                    self.pos += 1;
                    let mut list = Vec::new();
                    loop {
                        match self.next() {
                            Some(Token {
                                tok: Tok::Str(s), ..
                            }) => list.push(s),
                            _ => return Err(err(line, "expected string in string list")),
                        }
                        match self.next() {
                            Some(Token {
                                tok: Tok::Comma, ..
                            }) => continue,
                            Some(Token {
                                tok: Tok::RBracket, ..
                            }) => break,
                            _ => return Err(err(line, "expected ',' or ']' in string list")),
                        }
                    }
                    args.push(RawArg::List(list));
                }
                _ => break,
            }
        }
        Ok(args)
    }

    fn tests_opt(&mut self, depth: usize) -> Result<(Vec<RawTest>, bool), CompileError> {
        match self.peek().map(|t| &t.tok) {
            Some(Tok::Ident(_)) => Ok((vec![self.test(depth + 1)?], false)),
            Some(Tok::LParen) => {
                let line = self.peek().map_or(1, |t| t.line);
                self.pos += 1;
                let mut v = Vec::new();
                loop {
                    v.push(self.test(depth + 1)?);
                    match self.next() {
                        Some(Token {
                            tok: Tok::Comma, ..
                        }) => continue,
                        Some(Token {
                            tok: Tok::RParen, ..
                        }) => break,
                        _ => return Err(err(line, "expected ',' or ')' in test list")),
                    }
                }
                Ok((v, true))
            }
            _ => Ok((Vec::new(), false)),
        }
    }

    fn test(&mut self, depth: usize) -> Result<RawTest, CompileError> {
        if depth > self.max_depth {
            return Err(err(self.last_line(), "tests nested too deeply"));
        }
        let t = self
            .next()
            .ok_or_else(|| err(self.last_line(), "expected test"))?;
        let Tok::Ident(name) = t.tok else {
            return Err(err(
                t.line,
                format!("expected test, found {}", describe(&t.tok)),
            ));
        };
        let args = self.arguments()?;
        let (tests, test_list) = self.tests_opt(depth)?;
        Ok(RawTest {
            name,
            line: t.line,
            args,
            tests,
            test_list,
        })
    }
}

/// Parses a whole script; a command's line is the line of its name.
pub(crate) fn parse_program(toks: &[Token], max_depth: usize) -> Result<Vec<RawCmd>, CompileError> {
    let mut p = Parser {
        toks,
        pos: 0,
        max_depth,
    };
    let cmds = p.commands_lines(0)?;
    if let Some(t) = p.peek() {
        return Err(err(t.line, format!("unexpected {}", describe(&t.tok))));
    }
    Ok(cmds)
}

impl Parser<'_> {
    fn commands_lines(&mut self, depth: usize) -> Result<Vec<RawCmd>, CompileError> {
        let mut out = Vec::new();
        while let Some(t) = self.peek() {
            if t.tok == Tok::RBrace {
                break;
            }
            let line = t.line;
            let mut c = self.command_with_lines(depth)?;
            c.line = line;
            out.push(c);
        }
        Ok(out)
    }

    fn command_with_lines(&mut self, depth: usize) -> Result<RawCmd, CompileError> {
        if depth > self.max_depth {
            return Err(err(self.last_line(), "blocks nested too deeply"));
        }
        let t = self
            .next()
            .ok_or_else(|| err(self.last_line(), "expected command"))?;
        let line = t.line;
        let Tok::Ident(name) = t.tok else {
            return Err(err(
                t.line,
                format!("expected command, found {}", describe(&t.tok)),
            ));
        };
        let args = self.arguments()?;
        let (tests, test_list) = self.tests_opt(depth)?;
        let t = self.next().ok_or_else(|| {
            err(
                self.last_line(),
                format!("expected ';' or '{{' after \"{name}\""),
            )
        })?;
        let block = match t.tok {
            Tok::Semicolon => None,
            Tok::LBrace => {
                let b = self.commands_lines(depth + 1)?;
                match self.next() {
                    Some(Token {
                        tok: Tok::RBrace, ..
                    }) => Some(b),
                    _ => return Err(err(self.last_line(), "missing '}'")),
                }
            }
            other => {
                return Err(err(
                    t.line,
                    format!(
                        "expected ';' or '{{' after \"{name}\", found {}",
                        describe(&other)
                    ),
                ))
            }
        };
        Ok(RawCmd {
            name,
            line,
            args,
            tests,
            test_list,
            block,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lexer::lex;

    fn p(s: &str) -> Result<Vec<RawCmd>, CompileError> {
        parse_program(&lex(s)?, 32)
    }

    #[test]
    fn nested() {
        let c = p("if anyof (true, not false) {\n keep;\n} else { discard; }").unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].name, "if");
        assert_eq!(c[0].tests[0].name, "anyof");
        assert_eq!(c[0].tests[0].tests.len(), 2);
        assert_eq!(c[0].block.as_ref().unwrap()[0].line, 2);
        assert_eq!(c[1].name, "else");
    }

    #[test]
    fn errors_have_lines() {
        let e = p("keep;\nkeep\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(p("if true { keep;").is_err());
        assert!(p("[\"a\"];").is_err());
        assert!(p("x [\"a\" \"b\"];").is_err());
        assert!(p("}").is_err());
    }

    #[test]
    fn depth_limited() {
        let s = "if true {".repeat(100) + &"}".repeat(100);
        assert!(p(&s).unwrap_err().message.contains("nested"));
        let s = "if ".to_string() + &"not ".repeat(100) + "true {}";
        assert!(p(&s).unwrap_err().message.contains("nested"));
    }
}
