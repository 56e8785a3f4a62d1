//! Turns the untyped parse tree into [`Stmt`]s: known commands and tests
//! only, each used extension `require`d, tagged and positional arguments of
//! the right type, and constant arguments (comparators, relations, date
//! parts, regexes, variable names) checked now so that a broken script is
//! refused when it is uploaded rather than when mail arrives.

use std::collections::HashSet;

use crate::ast::{Node, Stmt, Value};
use crate::parser::{RawArg, RawCmd, RawTest};
use crate::{CompileError, Limits};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum K {
    Str,
    List,
    Num,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Arity {
    None,
    One,
    Many,
}

struct TagSpec {
    name: &'static str,
    arg: Option<K>,
    ext: &'static str,
    /// Tags of one group exclude each other (one match type, one address part...).
    group: &'static str,
}

const fn t(name: &'static str, arg: Option<K>, ext: &'static str, group: &'static str) -> TagSpec {
    TagSpec {
        name,
        arg,
        ext,
        group,
    }
}

struct Spec {
    name: &'static str,
    ext: &'static str,
    tags: &'static [&'static [TagSpec]],
    pos: &'static [K],
    min_pos: usize,
    tests: Arity,
}

const COMPARATOR: &[TagSpec] = &[t("comparator", Some(K::Str), "", "comparator")];
const MATCH: &[TagSpec] = &[
    t("is", None, "", "match"),
    t("contains", None, "", "match"),
    t("matches", None, "", "match"),
    t("regex", None, "regex", "match"),
    t("count", Some(K::Str), "relational", "match"),
    t("value", Some(K::Str), "relational", "match"),
];
const ADDR_PART: &[TagSpec] = &[
    t("all", None, "", "part"),
    t("localpart", None, "", "part"),
    t("domain", None, "", "part"),
    t("user", None, "subaddress", "part"),
    t("detail", None, "subaddress", "part"),
];
const INDEX: &[TagSpec] = &[
    t("index", Some(K::Num), "index", "index"),
    t("last", None, "index", "last"),
];
const ZONE: &[TagSpec] = &[
    t("zone", Some(K::Str), "", "zone"),
    t("originalzone", None, "", "zone"),
];
const CZONE: &[TagSpec] = &[t("zone", Some(K::Str), "", "zone")];
const SIZE: &[TagSpec] = &[t("over", None, "", "size"), t("under", None, "", "size")];
const BODY: &[TagSpec] = &[
    t("raw", None, "", "transform"),
    t("text", None, "", "transform"),
    t("content", Some(K::List), "", "transform"),
];
const COPY: &[TagSpec] = &[t("copy", None, "copy", "copy")];
const FLAGS: &[TagSpec] = &[t("flags", Some(K::List), "imap4flags", "flags")];
const CREATE: &[TagSpec] = &[t("create", None, "mailbox", "create")];
const VACATION: &[TagSpec] = &[
    t("days", Some(K::Num), "", "period"),
    t("seconds", Some(K::Num), "vacation-seconds", "period"),
    t("subject", Some(K::Str), "", "subject"),
    t("from", Some(K::Str), "", "from"),
    t("addresses", Some(K::List), "", "addresses"),
    t("mime", None, "", "mime"),
    t("handle", Some(K::Str), "", "handle"),
];
const SET: &[TagSpec] = &[
    t("lower", None, "", "case"),
    t("upper", None, "", "case"),
    t("lowerfirst", None, "", "first"),
    t("upperfirst", None, "", "first"),
    t("quotewildcard", None, "", "quote"),
    t("quoteregex", None, "regex", "quote"),
    t("length", None, "", "length"),
];
const ADDHEADER: &[TagSpec] = &[t("last", None, "", "last")];
const DELINDEX: &[TagSpec] = &[
    t("index", Some(K::Num), "", "index"),
    t("last", None, "", "last"),
];
const INCLUDE: &[TagSpec] = &[
    t("personal", None, "", "location"),
    t("global", None, "", "location"),
    t("once", None, "", "once"),
    t("optional", None, "", "optional"),
];

const fn cmd(
    name: &'static str,
    ext: &'static str,
    tags: &'static [&'static [TagSpec]],
    pos: &'static [K],
    min_pos: usize,
) -> Spec {
    Spec {
        name,
        ext,
        tags,
        pos,
        min_pos,
        tests: Arity::None,
    }
}

/// Tests are described like commands (a name, tags, positional kinds).
use cmd as test;

const CMP_MATCH: &[&[TagSpec]] = &[COMPARATOR, MATCH];
const CMP_MATCH_INDEX: &[&[TagSpec]] = &[COMPARATOR, MATCH, INDEX];

const COMMANDS: &[Spec] = &[
    cmd("stop", "", &[], &[], 0),
    cmd("keep", "", &[FLAGS], &[], 0),
    cmd("discard", "", &[], &[], 0),
    cmd("redirect", "", &[COPY], &[K::Str], 1),
    cmd("fileinto", "fileinto", &[COPY, FLAGS, CREATE], &[K::Str], 1),
    cmd("reject", "reject", &[], &[K::Str], 1),
    cmd("ereject", "ereject", &[], &[K::Str], 1),
    cmd("vacation", "vacation", &[VACATION], &[K::Str], 1),
    cmd("setflag", "imap4flags", &[], &[K::List, K::List], 1),
    cmd("addflag", "imap4flags", &[], &[K::List, K::List], 1),
    cmd("removeflag", "imap4flags", &[], &[K::List, K::List], 1),
    cmd("set", "variables", &[SET], &[K::Str, K::Str], 2),
    cmd(
        "addheader",
        "editheader",
        &[ADDHEADER],
        &[K::Str, K::Str],
        2,
    ),
    cmd(
        "deleteheader",
        "editheader",
        &[DELINDEX, COMPARATOR, MATCH],
        &[K::Str, K::List],
        1,
    ),
    cmd("include", "include", &[INCLUDE], &[K::Str], 1),
    cmd("return", "include", &[], &[], 0),
    cmd("global", "include", &[], &[K::List], 1),
    cmd("error", "ihave", &[], &[K::Str], 1),
];

const TESTS: &[Spec] = &[
    test("true", "", &[], &[], 0),
    test("false", "", &[], &[], 0),
    Spec {
        name: "not",
        ext: "",
        tags: &[],
        pos: &[],
        min_pos: 0,
        tests: Arity::One,
    },
    Spec {
        name: "allof",
        ext: "",
        tags: &[],
        pos: &[],
        min_pos: 0,
        tests: Arity::Many,
    },
    Spec {
        name: "anyof",
        ext: "",
        tags: &[],
        pos: &[],
        min_pos: 0,
        tests: Arity::Many,
    },
    test(
        "address",
        "",
        &[COMPARATOR, MATCH, ADDR_PART, INDEX],
        &[K::List, K::List],
        2,
    ),
    test("header", "", CMP_MATCH_INDEX, &[K::List, K::List], 2),
    test("exists", "", &[], &[K::List], 1),
    test("size", "", &[SIZE], &[K::Num], 1),
    test(
        "envelope",
        "envelope",
        &[COMPARATOR, MATCH, ADDR_PART],
        &[K::List, K::List],
        2,
    ),
    test("body", "body", &[COMPARATOR, MATCH, BODY], &[K::List], 1),
    test("string", "variables", CMP_MATCH, &[K::List, K::List], 2),
    test("hasflag", "imap4flags", CMP_MATCH, &[K::List, K::List], 1),
    test(
        "date",
        "date",
        &[ZONE, COMPARATOR, MATCH, INDEX],
        &[K::Str, K::Str, K::List],
        3,
    ),
    test(
        "currentdate",
        "date",
        &[CZONE, COMPARATOR, MATCH],
        &[K::Str, K::List],
        2,
    ),
    test("mailboxexists", "mailbox", &[], &[K::List], 1),
    test(
        "environment",
        "environment",
        CMP_MATCH,
        &[K::Str, K::List],
        2,
    ),
    test("ihave", "ihave", &[], &[K::List], 1),
];

/// Capabilities a script may `require`, as advertised by ManageSieve.
pub const CAPABILITIES: &[&str] = &[
    "fileinto",
    "reject",
    "ereject",
    "envelope",
    "imap4flags",
    "vacation",
    "vacation-seconds",
    "relational",
    "subaddress",
    "copy",
    "body",
    "variables",
    "date",
    "index",
    "editheader",
    "mailbox",
    "regex",
    "include",
    "comparator-i;ascii-numeric",
    "encoded-character",
    "environment",
    "ihave",
];

/// Comparators that are always available (RFC 5228 §2.7.3) and may still be
/// named in `require`.
const IMPLICIT_CAPS: &[&str] = &["comparator-i;octet", "comparator-i;ascii-casemap"];

pub(crate) const DATE_PARTS: &[&str] = &[
    "year", "month", "day", "date", "julian", "hour", "minute", "second", "time", "iso8601",
    "std11", "zone", "weekday",
];

pub(crate) const RELATIONS: &[&str] = &["gt", "ge", "lt", "le", "eq", "ne"];

fn err(line: usize, message: impl Into<String>) -> CompileError {
    CompileError {
        line,
        message: message.into(),
    }
}

pub(crate) struct Validator<'l> {
    pub caps: HashSet<String>,
    limits: &'l Limits,
    /// Capabilities enabled inside `if ihave` blocks (RFC 5463), collected
    /// so that the run knows e.g. that variables are in use.
    ihave: std::cell::RefCell<HashSet<String>>,
}

/// Validates a parsed script and returns its statements and the
/// capabilities it required.
pub(crate) fn validate(
    cmds: Vec<RawCmd>,
    limits: &Limits,
) -> Result<(Vec<Stmt>, HashSet<String>), CompileError> {
    let mut v = Validator {
        caps: HashSet::new(),
        limits,
        ihave: std::cell::RefCell::new(HashSet::new()),
    };
    let mut seen_other = false;
    let mut rest = Vec::new();
    for c in cmds {
        if c.name == "require" {
            if seen_other {
                return Err(err(c.line, "require must come before any other command"));
            }
            if c.block.is_some() || !c.tests.is_empty() || c.args.len() != 1 {
                return Err(err(c.line, "require takes one string list"));
            }
            let names = match &c.args[0] {
                RawArg::Str(s) => vec![s.clone()],
                RawArg::List(l) => l.clone(),
                _ => return Err(err(c.line, "require takes one string list")),
            };
            for n in names {
                if !supported(&n) {
                    return Err(err(c.line, format!("unsupported extension \"{n}\"")));
                }
                v.caps.insert(n);
            }
        } else {
            seen_other = true;
            rest.push(c);
        }
    }
    let stmts = v.block(rest)?;
    let mut caps = v.caps;
    caps.extend(v.ihave.into_inner());
    Ok((stmts, caps))
}

impl Validator<'_> {
    fn need(&self, ext: &str, line: usize, what: &str) -> Result<(), CompileError> {
        if ext.is_empty() || self.caps.contains(ext) {
            Ok(())
        } else {
            Err(err(
                line,
                format!("{what} requires the \"{ext}\" extension (missing require)"),
            ))
        }
    }

    fn block(&self, cmds: Vec<RawCmd>) -> Result<Vec<Stmt>, CompileError> {
        let mut out: Vec<Stmt> = Vec::new();
        // Whether the previous statement was an if/elsif chain that can take
        // another elsif/else.
        let mut open_if = false;
        for c in cmds {
            match c.name.as_str() {
                "if" | "elsif" | "else" => {
                    let name = c.name.clone();
                    if name != "if" && !open_if {
                        return Err(err(c.line, format!("{name} without a preceding if")));
                    }
                    if !c.args.is_empty() {
                        return Err(err(c.line, format!("{name} takes no arguments")));
                    }
                    let Some(block) = c.block else {
                        return Err(err(c.line, format!("{name} needs a block")));
                    };
                    // `if ihave [...]`: the block may use those capabilities
                    // as if required; if one is unknown the block can never
                    // run and is not validated at all (RFC 5463 §4).
                    let ihave: Option<Vec<String>> = c
                        .tests
                        .first()
                        .filter(|t| t.name == "ihave" && name != "else")
                        .map(|t| {
                            t.args
                                .iter()
                                .flat_map(|a| match a {
                                    RawArg::Str(s) => vec![s.clone()],
                                    RawArg::List(l) => l.clone(),
                                    _ => Vec::new(),
                                })
                                .collect()
                        });
                    let body = match &ihave {
                        None => self.block(block)?,
                        Some(names) if names.iter().all(|n| ihave_supported(n)) => {
                            let child = Validator {
                                caps: self
                                    .caps
                                    .iter()
                                    .cloned()
                                    .chain(names.iter().cloned())
                                    .collect(),
                                limits: self.limits,
                                ihave: std::cell::RefCell::new(HashSet::new()),
                            };
                            let b = child.block(block)?;
                            let mut mine = self.ihave.borrow_mut();
                            mine.extend(names.iter().cloned());
                            mine.extend(child.ihave.into_inner());
                            b
                        }
                        Some(_) => Vec::new(),
                    };
                    if name == "else" {
                        if !c.tests.is_empty() {
                            return Err(err(c.line, "else takes no test"));
                        }
                        if let Some(Stmt::If { otherwise, .. }) = out.last_mut() {
                            *otherwise = Some(body);
                        }
                        open_if = false;
                        continue;
                    }
                    if c.tests.len() != 1 || c.test_list {
                        return Err(err(c.line, format!("{name} takes exactly one test")));
                    }
                    let Some(raw) = c.tests.into_iter().next() else {
                        return Err(err(c.line, format!("{name} takes exactly one test")));
                    };
                    let test = self.test(raw)?;
                    if name == "if" {
                        out.push(Stmt::If {
                            branches: vec![(test, body)],
                            otherwise: None,
                        });
                    } else if let Some(Stmt::If { branches, .. }) = out.last_mut() {
                        branches.push((test, body));
                    }
                    open_if = true;
                }
                "require" => return Err(err(c.line, "require must come before any other command")),
                _ => {
                    open_if = false;
                    if c.block.is_some() {
                        return Err(err(
                            c.line,
                            format!("command \"{}\" takes no block", c.name),
                        ));
                    }
                    if !c.tests.is_empty() {
                        return Err(err(c.line, format!("command \"{}\" takes no test", c.name)));
                    }
                    let spec = COMMANDS
                        .iter()
                        .find(|s| s.name == c.name)
                        .ok_or_else(|| err(c.line, format!("unknown command \"{}\"", c.name)))?;
                    self.need(spec.ext, c.line, &format!("command \"{}\"", c.name))?;
                    let node = self.node(spec, c.line, c.args, Vec::new())?;
                    self.check_command(&node)?;
                    out.push(Stmt::Cmd(node));
                }
            }
        }
        Ok(out)
    }

    fn test(&self, t: RawTest) -> Result<Node, CompileError> {
        let spec = TESTS
            .iter()
            .find(|s| s.name == t.name)
            .ok_or_else(|| err(t.line, format!("unknown test \"{}\"", t.name)))?;
        self.need(spec.ext, t.line, &format!("test \"{}\"", t.name))?;
        match spec.tests {
            Arity::None if !t.tests.is_empty() => {
                return Err(err(
                    t.line,
                    format!("test \"{}\" takes no sub-test", t.name),
                ))
            }
            Arity::One if t.tests.len() != 1 || t.test_list => {
                return Err(err(
                    t.line,
                    format!("test \"{}\" takes exactly one test", t.name),
                ))
            }
            Arity::Many if t.tests.is_empty() => {
                return Err(err(
                    t.line,
                    format!("test \"{}\" takes a test list", t.name),
                ))
            }
            _ => {}
        }
        let mut subs = Vec::new();
        for s in t.tests {
            subs.push(self.test(s)?);
        }
        let node = self.node(spec, t.line, t.args, subs)?;
        self.check_test(&node)?;
        Ok(node)
    }

    fn node(
        &self,
        spec: &Spec,
        line: usize,
        args: Vec<RawArg>,
        tests: Vec<Node>,
    ) -> Result<Node, CompileError> {
        let mut tags: Vec<(&'static str, Option<Value>)> = Vec::new();
        let mut groups: Vec<&'static str> = Vec::new();
        let mut pos = Vec::new();
        let mut it = args.into_iter();
        while let Some(a) = it.next() {
            match a {
                RawArg::Tag(name) => {
                    let ts = spec
                        .tags
                        .iter()
                        .flat_map(|g| g.iter())
                        .find(|ts| ts.name == name)
                        .ok_or_else(|| {
                            err(
                                line,
                                format!("unknown tag \":{name}\" for \"{}\"", spec.name),
                            )
                        })?;
                    self.need(ts.ext, line, &format!("tag \":{name}\""))?;
                    if groups.contains(&ts.group) {
                        return Err(err(
                            line,
                            format!(
                                "tag \":{name}\" conflicts with an earlier tag of \"{}\"",
                                spec.name
                            ),
                        ));
                    }
                    groups.push(ts.group);
                    let val = match ts.arg {
                        None => None,
                        Some(k) => {
                            let v = it.next().ok_or_else(|| {
                                err(line, format!("tag \":{name}\" needs an argument"))
                            })?;
                            Some(convert(v, k).ok_or_else(|| {
                                err(
                                    line,
                                    format!("tag \":{name}\" needs a {} argument", kind_name(k)),
                                )
                            })?)
                        }
                    };
                    tags.push((ts.name, val));
                }
                other => {
                    let i = pos.len();
                    let k = *spec.pos.get(i).ok_or_else(|| {
                        err(line, format!("too many arguments for \"{}\"", spec.name))
                    })?;
                    pos.push(convert(other, k).ok_or_else(|| {
                        err(
                            line,
                            format!(
                                "argument {} of \"{}\" must be a {}",
                                i + 1,
                                spec.name,
                                kind_name(k)
                            ),
                        )
                    })?);
                }
            }
        }
        if pos.len() < spec.min_pos {
            return Err(err(line, format!("missing argument for \"{}\"", spec.name)));
        }
        if self.caps.contains("encoded-character") {
            for val in pos
                .iter_mut()
                .chain(tags.iter_mut().filter_map(|(_, v)| v.as_mut()))
            {
                decode_value(val).map_err(|m| err(line, m))?;
            }
        }
        Ok(Node {
            name: spec.name,
            line,
            tags,
            pos,
            tests,
        })
    }

    fn has_vars(&self, s: &str) -> bool {
        self.caps.contains("variables") && s.contains("${")
    }

    fn check_match(&self, n: &Node) -> Result<(), CompileError> {
        let cmp = n.tag("comparator").map(Value::as_str);
        if let Some(c) = cmp {
            match c {
                "i;octet" | "i;ascii-casemap" => {}
                "i;ascii-numeric" => self.need(
                    "comparator-i;ascii-numeric",
                    n.line,
                    "comparator \"i;ascii-numeric\"",
                )?,
                other => return Err(err(n.line, format!("unknown comparator \"{other}\""))),
            }
        }
        let mt = n.one_of(&["is", "contains", "matches", "regex", "count", "value"]);
        if cmp == Some("i;ascii-numeric") && matches!(mt, Some("contains" | "matches" | "regex")) {
            return Err(err(
                n.line,
                format!(
                    "comparator \"i;ascii-numeric\" cannot be used with :{}",
                    mt.unwrap_or("")
                ),
            ));
        }
        for rel in ["count", "value"] {
            if let Some(r) = n.tag(rel) {
                let r = r.as_str();
                if !self.has_vars(r) && !RELATIONS.contains(&r.to_ascii_lowercase().as_str()) {
                    return Err(err(n.line, format!("invalid relation \"{r}\"")));
                }
            }
        }
        if n.has("last") && !n.has("index") && n.name != "addheader" {
            return Err(err(n.line, ":last needs :index"));
        }
        if mt == Some("regex") {
            let keys = n.pos.last().map_or(&[][..], Value::as_list);
            for k in keys {
                if !self.has_vars(k) {
                    crate::matcher::build_regex(k, false, self.limits)
                        .map_err(|e| err(n.line, format!("invalid regex \"{k}\": {e}")))?;
                }
            }
        }
        Ok(())
    }

    fn check_test(&self, n: &Node) -> Result<(), CompileError> {
        self.check_match(n)?;
        match n.name {
            "size" if n.tags.is_empty() => return Err(err(n.line, "size needs :over or :under")),
            "envelope" => {
                for p in n.list_at(0) {
                    if !self.has_vars(p)
                        && !matches!(p.to_ascii_lowercase().as_str(), "from" | "to")
                    {
                        return Err(err(n.line, format!("unknown envelope part \"{p}\"")));
                    }
                }
            }
            "date" | "currentdate" => {
                let part = n.str_at(if n.name == "date" { 1 } else { 0 });
                if !self.has_vars(part) && !DATE_PARTS.contains(&part.to_ascii_lowercase().as_str())
                {
                    return Err(err(n.line, format!("unknown date part \"{part}\"")));
                }
                if let Some(z) = n.tag("zone") {
                    if !self.has_vars(z.as_str()) && crate::date::parse_zone(z.as_str()).is_none() {
                        return Err(err(n.line, format!("invalid time zone \"{}\"", z.as_str())));
                    }
                }
            }
            "hasflag" if n.pos.len() == 2 => {
                self.need("variables", n.line, "hasflag with a variable list")?;
            }
            "body" if n.has("count") => {
                return Err(err(n.line, "body cannot be used with :count"));
            }
            _ => {}
        }
        Ok(())
    }

    fn check_command(&self, n: &Node) -> Result<(), CompileError> {
        match n.name {
            "setflag" | "addflag" | "removeflag" if n.pos.len() == 2 => {
                self.need(
                    "variables",
                    n.line,
                    &format!("{} with a variable name", n.name),
                )?;
                check_varname(n.str_at(0), n.line)?;
            }
            "set" => {
                check_varname(n.str_at(0), n.line)?;
            }
            "global" => {
                self.need("variables", n.line, "global")?;
                for v in n.list_at(0) {
                    check_varname(v, n.line)?;
                }
            }
            "addheader" | "deleteheader" => {
                let h = n.str_at(0);
                if !self.has_vars(h) && !crate::message::valid_field_name(h) {
                    return Err(err(n.line, format!("invalid header name \"{h}\"")));
                }
                if n.name == "deleteheader" {
                    self.check_match(n)?;
                }
            }
            "redirect" => {
                let a = n.str_at(0);
                if !self.has_vars(a) && !crate::message::plausible_address(a) {
                    return Err(err(n.line, format!("invalid redirect address \"{a}\"")));
                }
            }
            "vacation" => {
                if let Some(from) = n.tag("from") {
                    let from = from.as_str();
                    if !self.has_vars(from) && crate::message::vacation_from(from).is_none() {
                        return Err(err(
                            n.line,
                            format!("vacation: invalid :from address \"{from}\""),
                        ));
                    }
                }
            }
            "include" => {
                let name = n.str_at(0);
                if name.is_empty() || name.contains('/') {
                    return Err(err(n.line, format!("invalid script name \"{name}\"")));
                }
            }
            _ => {}
        }
        Ok(())
    }
}

fn decode_value(v: &mut Value) -> Result<(), String> {
    match v {
        Value::Str(s) => *s = crate::encoded::decode(s)?,
        Value::List(l) => {
            for s in l {
                *s = crate::encoded::decode(s)?;
            }
        }
        Value::Num(_) => {}
    }
    Ok(())
}

/// What `ihave` answers true for: every capability except those that
/// change how every string of the script is read ("variables",
/// "encoded-character"), which can only be `require`d (RFC 5463 §4;
/// Pigeonhole answers the same).
pub(crate) fn ihave_supported(name: &str) -> bool {
    supported(name) && !matches!(name, "variables" | "encoded-character")
}

/// Whether `name` is a capability this implementation has.
pub(crate) fn supported(name: &str) -> bool {
    CAPABILITIES.contains(&name) || IMPLICIT_CAPS.contains(&name)
}

fn check_varname(name: &str, line: usize) -> Result<(), CompileError> {
    if crate::variables::valid_name(name) {
        Ok(())
    } else {
        Err(err(line, format!("invalid variable name \"{name}\"")))
    }
}

fn kind_name(k: K) -> &'static str {
    match k {
        K::Str => "string",
        K::List => "string list",
        K::Num => "number",
    }
}

fn convert(a: RawArg, k: K) -> Option<Value> {
    match (a, k) {
        (RawArg::Str(s), K::Str) => Some(Value::Str(s)),
        (RawArg::Str(s), K::List) => Some(Value::List(vec![s])),
        (RawArg::List(l), K::List) => Some(Value::List(l)),
        (RawArg::Num(n), K::Num) => Some(Value::Num(n)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use crate::{compile, Limits};

    fn e(s: &str) -> String {
        compile(s, &Limits::default()).unwrap_err().to_string()
    }

    #[test]
    fn unknown_command_has_line() {
        assert_eq!(e("keep;\n\nfoo;"), "line 3: unknown command \"foo\"");
        assert_eq!(e("if bar { keep; }"), "line 1: unknown test \"bar\"");
    }

    #[test]
    fn require_checked() {
        assert!(e("fileinto \"x\";").contains("requires the \"fileinto\" extension"));
        assert!(e("require \"nope\";").contains("unsupported extension"));
        assert!(e("keep; require \"fileinto\";").contains("before any other"));
        assert!(compile(
            "require [\"fileinto\"]; fileinto \"x\";",
            &Limits::default()
        )
        .is_ok());
        assert!(e("if header :regex \"a\" \"b\" {}").contains("\"regex\""));
    }

    #[test]
    fn argument_types() {
        assert!(e("redirect 5;").contains("must be a string"));
        assert!(
            e("size :over \"x\";").contains("must be a number")
                || e("if size :over \"x\" {}").contains("number")
        );
        assert!(e("if header :is [\"a\"] {}").contains("missing argument"));
        assert!(e("if header :is :contains \"a\" \"b\" {}").contains("conflicts"));
        assert!(e("if header :foo \"a\" \"b\" {}").contains("unknown tag"));
        assert!(e("if size 5 {}").contains(":over"));
        assert!(e("if header :comparator \"x;y\" \"a\" \"b\" {}").contains("unknown comparator"));
        assert!(
            e("require \"relational\"; if header :count \"zz\" \"a\" \"1\" {}")
                .contains("invalid relation")
        );
        assert!(e("require \"regex\"; if header :regex \"a\" \"(\" {}").contains("invalid regex"));
        assert!(e("require \"date\"; if currentdate \"yr\" \"1\" {}").contains("date part"));
    }

    #[test]
    fn if_structure() {
        assert!(e("else { keep; }").contains("without a preceding if"));
        assert!(e("keep; elsif true { keep; }").contains("without a preceding if"));
        assert!(e("if (true, false) { keep; }").contains("exactly one test"));
        assert!(compile("if true keep;", &Limits::default()).is_err());
        assert!(e("if not (true) {}").contains("exactly one test"));
        assert!(e("keep { stop; }").contains("no block"));
        assert!(compile("if true {} elsif false {} else {}", &Limits::default()).is_ok());
    }
}
