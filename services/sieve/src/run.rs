//! The interpreter: walks the validated statements against one message and
//! envelope, asks [`Context`] about mailboxes, included scripts and the
//! time, and collects actions.
//!
//! Every command and test, and every value compared, costs one step;
//! runs stop with a [`RuntimeError`] at [`Limits::max_steps`], so a script
//! cannot loop (Sieve has no loops, but `include` and long lists multiply
//! work) or spend unbounded time on a large message.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use chrono::{DateTime, FixedOffset};
use regex::Regex;

use crate::actions::{apply_one, flag_words, Action, HeaderEdit, Outcome, Vacation};
use crate::ast::{Node, Stmt, Value};
use crate::matcher::{self, Cmp, Mt, Rel};
use crate::message::{self, BodyTransform, Field};
use crate::{compile, variables, Context, Envelope, Limits, Location, RuntimeError, Script};

enum Flow {
    Next,
    Stop,
    Return,
}

/// One script being executed: its own variables (RFC 6609: variables are
/// per script unless declared `global`).
struct Frame {
    locals: HashMap<String, String>,
    globals: HashSet<String>,
    vars: bool,
    depth: usize,
}

struct Machine<'a> {
    raw: &'a [u8],
    body: &'a [u8],
    fields: Vec<Field>,
    env: &'a Envelope<'a>,
    ctx: &'a dyn Context,
    limits: &'a Limits,
    steps: u64,
    actions: Vec<Action>,
    keep_cancelled: bool,
    discarded: bool,
    flags: Vec<String>,
    globals: HashMap<String, String>,
    match_vars: Vec<String>,
    edits: Vec<HeaderEdit>,
    includes: usize,
    included_once: HashSet<(Location, String)>,
    regexes: HashMap<(String, bool), Regex>,
    /// Body texts per transform (`raw`, `text`, `content:<types>`), so that
    /// many `body` tests parse the MIME structure once.
    bodies: HashMap<String, Rc<Vec<String>>>,
    vacation_done: bool,
    suppressed: Option<String>,
    line: usize,
}

fn rerr(line: usize, message: impl Into<String>) -> RuntimeError {
    RuntimeError {
        line,
        message: message.into(),
    }
}

/// Runs `script`; see [`crate::run`].
pub(crate) fn run(
    script: &Script,
    raw: &[u8],
    env: &Envelope<'_>,
    ctx: &dyn Context,
    limits: &Limits,
) -> Result<Outcome, RuntimeError> {
    let (fields, body) = message::split_limited(raw, limits.max_header_fields);
    let mut m = Machine {
        raw,
        body,
        fields,
        env,
        ctx,
        limits,
        steps: 0,
        actions: Vec::new(),
        keep_cancelled: false,
        discarded: false,
        flags: Vec::new(),
        globals: HashMap::new(),
        match_vars: Vec::new(),
        edits: Vec::new(),
        includes: 0,
        included_once: HashSet::new(),
        regexes: HashMap::new(),
        bodies: HashMap::new(),
        vacation_done: false,
        suppressed: None,
        line: 0,
    };
    let mut frame = Frame {
        locals: HashMap::new(),
        globals: HashSet::new(),
        vars: script.caps.contains("variables"),
        depth: 0,
    };
    m.exec(&mut frame, &script.stmts)?;
    m.finish()
}

impl Machine<'_> {
    fn step(&mut self, line: usize) -> Result<(), RuntimeError> {
        self.line = line;
        self.steps += 1;
        if self.steps > self.limits.max_steps {
            return Err(rerr(
                line,
                format!("script exceeded {} steps", self.limits.max_steps),
            ));
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Outcome, RuntimeError> {
        let has = |a: &[Action], f: &dyn Fn(&Action) -> bool| a.iter().any(f);
        let rejected = has(&self.actions, &|a| matches!(a, Action::Reject { .. }));
        if rejected
            && has(&self.actions, &|a| {
                matches!(
                    a,
                    Action::Keep { .. }
                        | Action::FileInto { .. }
                        | Action::Redirect { copy: false, .. }
                )
            })
        {
            return Err(rerr(
                self.line,
                "reject conflicts with keep, fileinto or redirect",
            ));
        }
        let mut implicit = false;
        if !self.keep_cancelled {
            implicit = true;
            let flags = self.flags.clone();
            self.push_keep(flags);
        }
        merge_inbox(&mut self.actions);
        let delivers = has(&self.actions, &|a| {
            matches!(
                a,
                Action::Keep { .. }
                    | Action::FileInto { .. }
                    | Action::Redirect { .. }
                    | Action::Reject { .. }
            )
        });
        if self.discarded && !delivers {
            self.actions.push(Action::Discard);
        }
        Ok(Outcome {
            actions: self.actions,
            header_edits: self.edits,
            implicit_keep: implicit,
            vacation_suppressed: self.suppressed,
        })
    }

    fn push_action(&mut self, a: Action) -> Result<(), RuntimeError> {
        if self.actions.len() >= self.limits.max_actions {
            return Err(rerr(
                self.line,
                format!("more than {} actions", self.limits.max_actions),
            ));
        }
        self.actions.push(a);
        Ok(())
    }

    /// keep and fileinto "INBOX" are distinct here; an identical second
    /// keep only adds its flags to the first (RFC 5228 §2.10.3).
    fn push_keep(&mut self, flags: Vec<String>) {
        for a in &mut self.actions {
            if let Action::Keep { flags: f } = a {
                *f = flag_words(&[f.join(" "), flags.join(" ")]);
                return;
            }
        }
        self.actions.push(Action::Keep { flags });
    }

    // ---- variables ----

    fn get_var(&self, f: &Frame, name: &str) -> String {
        let n = name.to_ascii_lowercase();
        if n.bytes().all(|c| c.is_ascii_digit()) {
            return n
                .parse::<usize>()
                .ok()
                .and_then(|i| self.match_vars.get(i).cloned())
                .unwrap_or_default();
        }
        if let Some(g) = n.strip_prefix("global.") {
            return self.globals.get(g).cloned().unwrap_or_default();
        }
        if f.globals.contains(&n) {
            return self.globals.get(&n).cloned().unwrap_or_default();
        }
        f.locals.get(&n).cloned().unwrap_or_default()
    }

    fn set_var(
        &mut self,
        f: &mut Frame,
        name: &str,
        mut value: String,
    ) -> Result<(), RuntimeError> {
        variables::truncate(&mut value, self.limits.max_variable_bytes);
        let n = name.to_ascii_lowercase();
        let (map, key) = if let Some(g) = n.strip_prefix("global.") {
            (&mut self.globals, g.to_string())
        } else if f.globals.contains(&n) {
            (&mut self.globals, n)
        } else {
            (&mut f.locals, n)
        };
        if !map.contains_key(&key) && map.len() >= self.limits.max_variables {
            return Err(rerr(
                self.line,
                format!("more than {} variables", self.limits.max_variables),
            ));
        }
        map.insert(key, value);
        Ok(())
    }

    fn s(&self, f: &Frame, raw: &str) -> String {
        if f.vars {
            variables::expand(raw, self.limits.max_variable_bytes, &|n| self.get_var(f, n))
        } else {
            raw.to_string()
        }
    }

    fn list(&self, f: &Frame, raw: &[String]) -> Vec<String> {
        raw.iter().map(|s| self.s(f, s)).collect()
    }

    // ---- statements ----

    fn exec(&mut self, f: &mut Frame, stmts: &[Stmt]) -> Result<Flow, RuntimeError> {
        for st in stmts {
            let flow = match st {
                Stmt::If {
                    branches,
                    otherwise,
                } => {
                    let mut chosen = None;
                    for (t, body) in branches {
                        if self.test(f, t)? {
                            chosen = Some(body);
                            break;
                        }
                    }
                    match chosen.or(otherwise.as_ref()) {
                        Some(b) => self.exec(f, b)?,
                        None => Flow::Next,
                    }
                }
                Stmt::Cmd(n) => self.command(f, n)?,
            };
            match flow {
                Flow::Next => {}
                other => return Ok(other),
            }
        }
        Ok(Flow::Next)
    }

    fn flags_arg(&self, f: &Frame, n: &Node) -> Vec<String> {
        match n.tag("flags") {
            Some(v) => flag_words(&self.list(f, v.as_list())),
            None => self.flags.clone(),
        }
    }

    fn command(&mut self, f: &mut Frame, n: &Node) -> Result<Flow, RuntimeError> {
        self.step(n.line)?;
        match n.name {
            "stop" => return Ok(Flow::Stop),
            "return" => return Ok(Flow::Return),
            "keep" => {
                let flags = self.flags_arg(f, n);
                self.keep_cancelled = true;
                if !self
                    .actions
                    .iter()
                    .any(|a| matches!(a, Action::Keep { .. }))
                {
                    self.push_action(Action::Keep { flags })?;
                } else {
                    self.push_keep(flags);
                }
            }
            "discard" => {
                self.keep_cancelled = true;
                self.discarded = true;
            }
            "fileinto" => {
                let mailbox = self.s(f, n.str_at(0));
                if mailbox.is_empty() {
                    return Err(rerr(n.line, "fileinto: empty mailbox name"));
                }
                let flags = self.flags_arg(f, n);
                let create = n.has("create");
                if !n.has("copy") {
                    self.keep_cancelled = true;
                }
                let existing = self.actions.iter_mut().find_map(|a| match a {
                    Action::FileInto {
                        mailbox: m,
                        flags,
                        create: c,
                    } if *m == mailbox => Some((flags, c)),
                    _ => None,
                });
                match existing {
                    Some((fl, c)) => {
                        *fl = flag_words(&[fl.join(" "), flags.join(" ")]);
                        *c |= create;
                    }
                    None => self.push_action(Action::FileInto {
                        mailbox,
                        flags,
                        create,
                    })?,
                }
            }
            "redirect" => {
                let address = self.s(f, n.str_at(0)).trim().to_string();
                if !message::plausible_address(&address) {
                    return Err(rerr(
                        n.line,
                        format!("redirect: invalid address \"{address}\""),
                    ));
                }
                let copy = n.has("copy");
                if !copy {
                    self.keep_cancelled = true;
                }
                let mut dup = false;
                for a in &mut self.actions {
                    if let Action::Redirect {
                        address: x,
                        copy: c,
                    } = a
                    {
                        if same_address(x, &address) {
                            dup = true;
                            *c &= copy;
                        }
                    }
                }
                if !dup {
                    let count = self
                        .actions
                        .iter()
                        .filter(|a| matches!(a, Action::Redirect { .. }))
                        .count();
                    if count >= self.limits.max_redirects {
                        return Err(rerr(
                            n.line,
                            format!("more than {} redirects", self.limits.max_redirects),
                        ));
                    }
                    self.push_action(Action::Redirect { address, copy })?;
                }
            }
            "reject" | "ereject" => {
                if self
                    .actions
                    .iter()
                    .any(|a| matches!(a, Action::Reject { .. }))
                {
                    return Err(rerr(n.line, "more than one reject"));
                }
                if self.vacation_done {
                    return Err(rerr(n.line, "reject conflicts with vacation"));
                }
                let reason = self.s(f, n.str_at(0));
                self.keep_cancelled = true;
                self.push_action(Action::Reject {
                    reason,
                    ereject: n.name == "ereject",
                })?;
            }
            "vacation" => self.vacation(f, n)?,
            "setflag" | "addflag" | "removeflag" => {
                let (var, list) = if n.pos.len() == 2 {
                    (Some(self.s(f, n.str_at(0))), n.list_at(1))
                } else {
                    (None, n.list_at(0))
                };
                let given = flag_words(&self.list(f, list));
                let current = match &var {
                    Some(v) => flag_words(&[self.get_var(f, v)]),
                    None => self.flags.clone(),
                };
                let new = match n.name {
                    "setflag" => given,
                    "addflag" => flag_words(&[current.join(" "), given.join(" ")]),
                    _ => current
                        .into_iter()
                        .filter(|c| !given.iter().any(|g| g.eq_ignore_ascii_case(c)))
                        .collect(),
                };
                match var {
                    Some(v) => self.set_var(f, &v, new.join(" "))?,
                    None => self.flags = new,
                }
            }
            "set" => {
                let name = n.str_at(0).to_string();
                let value = self.s(f, n.str_at(1));
                let mods: Vec<&str> = n.tags.iter().map(|(t, _)| *t).collect();
                let value = variables::modify(value, &mods);
                self.set_var(f, &name, value)?;
            }
            "global" => {
                for v in n.list_at(0) {
                    f.globals.insert(v.to_ascii_lowercase());
                }
            }
            "addheader" => {
                let name = self.s(f, n.str_at(0));
                if !message::valid_field_name(&name) {
                    return Err(rerr(
                        n.line,
                        format!("addheader: invalid header name \"{name}\""),
                    ));
                }
                if !protected(&name) {
                    let v = self.s(f, n.str_at(1)).replace(['\r', '\n'], " ");
                    let e = HeaderEdit::Add {
                        name,
                        value: message::encode_value(&v),
                        last: n.has("last"),
                    };
                    apply_one(&mut self.fields, &e);
                    self.edits.push(e);
                }
            }
            "deleteheader" => self.deleteheader(f, n)?,
            "include" => return self.include(f, n),
            "error" => {
                let m = self.s(f, n.str_at(0));
                return Err(rerr(n.line, format!("error: {m}")));
            }
            other => return Err(rerr(n.line, format!("command \"{other}\" not implemented"))),
        }
        Ok(Flow::Next)
    }

    fn vacation(&mut self, f: &mut Frame, n: &Node) -> Result<(), RuntimeError> {
        if self.vacation_done {
            return Err(rerr(n.line, "more than one vacation"));
        }
        if self
            .actions
            .iter()
            .any(|a| matches!(a, Action::Reject { .. }))
        {
            return Err(rerr(n.line, "vacation conflicts with reject"));
        }
        self.vacation_done = true;
        // Subject and From become header fields of the reply: one line each.
        let subject = n
            .tag("subject")
            .map(|v| self.s(f, v.as_str()).replace(['\r', '\n'], " "));
        let from = match n.tag("from") {
            None => None,
            Some(v) => {
                let raw = self.s(f, v.as_str());
                Some(message::vacation_from(&raw).ok_or_else(|| {
                    rerr(n.line, format!("vacation: invalid :from address \"{raw}\""))
                })?)
            }
        };
        let extra = n
            .tag("addresses")
            .map(|v| self.list(f, v.as_list()))
            .unwrap_or_default();
        let reason = self.s(f, n.str_at(0));
        let mime = n.has("mime");
        let handle = match n.tag("handle") {
            Some(h) => self.s(f, h.as_str()),
            None => {
                crate::vacation::default_handle(subject.as_deref(), from.as_deref(), mime, &reason)
            }
        };
        let period_seconds = match (n.tag("days"), n.tag("seconds")) {
            (Some(d), _) => d.as_num().max(1).saturating_mul(86_400),
            (None, Some(s)) => s.as_num(),
            (None, None) => 7 * 86_400,
        }
        .max(self.limits.min_vacation_seconds);
        let own = crate::vacation::own_addresses(self.env.to, &extra);
        if let Some(why) = crate::vacation::suppression(&self.fields, self.env.from, &own) {
            self.suppressed = Some(why);
            return Ok(());
        }
        let find = |name: &str| {
            self.fields
                .iter()
                .find(|x| x.name.eq_ignore_ascii_case(name))
                .map(|x| message::decoded(&x.raw))
        };
        let v = Vacation {
            handle,
            period_seconds,
            subject,
            from,
            reason,
            mime,
            to: self.env.from.unwrap_or("").to_string(),
            in_reply_to: find("message-id"),
            original_subject: find("subject"),
        };
        self.push_action(Action::Vacation(v))
    }

    fn deleteheader(&mut self, f: &mut Frame, n: &Node) -> Result<(), RuntimeError> {
        let name = self.s(f, n.str_at(0));
        if protected(&name) {
            return Ok(());
        }
        let patterns = if n.pos.len() > 1 {
            Some(self.list(f, n.list_at(1)))
        } else {
            None
        };
        let values: Vec<String> = self
            .fields
            .iter()
            .filter(|x| x.name.eq_ignore_ascii_case(&name))
            .map(|x| message::decoded(&x.raw))
            .collect();
        let total = values.len();
        let wanted_index = n.tag("index").map(|i| {
            let i = usize::try_from(i.as_num()).unwrap_or(usize::MAX);
            if n.has("last") {
                if i == 0 || i > total {
                    0
                } else {
                    total + 1 - i
                }
            } else {
                i
            }
        });
        let mut occ = Vec::new();
        for (i, v) in values.iter().enumerate() {
            let o = i + 1;
            if wanted_index.is_some_and(|w| w != o) {
                continue;
            }
            let hit = match &patterns {
                None => true,
                Some(p) => self.compare_values(f, n, std::slice::from_ref(v), p, false)?,
            };
            if hit {
                occ.push(o);
            }
        }
        if !occ.is_empty() {
            let e = HeaderEdit::Delete {
                name,
                occurrences: occ,
            };
            apply_one(&mut self.fields, &e);
            self.edits.push(e);
        }
        Ok(())
    }

    fn include(&mut self, f: &mut Frame, n: &Node) -> Result<Flow, RuntimeError> {
        let name = self.s(f, n.str_at(0));
        let loc = if n.has("global") {
            Location::Global
        } else {
            Location::Personal
        };
        if n.has("once") && self.included_once.contains(&(loc, name.clone())) {
            return Ok(Flow::Next);
        }
        if f.depth + 1 > self.limits.max_include_depth {
            return Err(rerr(
                n.line,
                format!(
                    "include nested deeper than {}",
                    self.limits.max_include_depth
                ),
            ));
        }
        if self.includes >= self.limits.max_includes {
            return Err(rerr(
                n.line,
                format!("more than {} includes", self.limits.max_includes),
            ));
        }
        self.includes += 1;
        let Some(src) = self.ctx.include(&name, loc) else {
            if n.has("optional") {
                return Ok(Flow::Next);
            }
            return Err(rerr(
                n.line,
                format!("include: script \"{name}\" not found"),
            ));
        };
        let script = compile(&src, self.limits)
            .map_err(|e| rerr(n.line, format!("include \"{name}\": {e}")))?;
        self.included_once.insert((loc, name));
        let mut sub = Frame {
            locals: HashMap::new(),
            globals: HashSet::new(),
            vars: script.caps.contains("variables"),
            depth: f.depth + 1,
        };
        match self.exec(&mut sub, &script.stmts)? {
            Flow::Stop => Ok(Flow::Stop),
            _ => Ok(Flow::Next),
        }
    }

    // ---- tests ----

    fn test(&mut self, f: &mut Frame, n: &Node) -> Result<bool, RuntimeError> {
        self.step(n.line)?;
        Ok(match n.name {
            "true" => true,
            "false" => false,
            "not" => match n.tests.first() {
                Some(t) => !self.test(f, t)?,
                None => true,
            },
            "allof" => {
                for t in &n.tests {
                    if !self.test(f, t)? {
                        return Ok(false);
                    }
                }
                true
            }
            "anyof" => {
                for t in &n.tests {
                    if self.test(f, t)? {
                        return Ok(true);
                    }
                }
                false
            }
            "exists" => {
                let names = self.list(f, n.list_at(0));
                self.scan_cost(names.len(), n.line)?;
                names
                    .iter()
                    .all(|h| self.fields.iter().any(|x| x.name.eq_ignore_ascii_case(h)))
            }
            "size" => {
                let lim = n.pos.first().map_or(0, Value::as_num);
                let size = self.raw.len() as u64;
                if n.has("over") {
                    size > lim
                } else {
                    size < lim
                }
            }
            "header" => {
                let names = self.list(f, n.list_at(0));
                let mut values = Vec::new();
                for h in &names {
                    for raw in self.field_values(n, h)? {
                        values.push(message::decoded(&raw));
                    }
                }
                self.compare_values(f, n, &values, n.list_at(1), true)?
            }
            "address" => {
                let names = self.list(f, n.list_at(0));
                let mut values = Vec::new();
                for h in &names {
                    for raw in self.field_values(n, h)? {
                        for a in message::addresses(&raw) {
                            if let Some(p) = address_part(n, &a) {
                                values.push(p);
                            }
                        }
                    }
                }
                self.compare_values(f, n, &values, n.list_at(1), true)?
            }
            "envelope" => {
                let parts = self.list(f, n.list_at(0));
                let mut values = Vec::new();
                for p in &parts {
                    match p.to_ascii_lowercase().as_str() {
                        "from" => match self.env.from {
                            Some(a) if !a.is_empty() => values.extend(address_part(n, a)),
                            _ => {
                                if n.one_of(&["localpart", "domain", "user", "detail"])
                                    .is_none()
                                {
                                    values.push(String::new());
                                }
                            }
                        },
                        "to" => values.extend(address_part(n, self.env.to)),
                        _ => {}
                    }
                }
                self.compare_values(f, n, &values, n.list_at(1), true)?
            }
            "body" => {
                let t = if n.has("raw") {
                    BodyTransform::Raw
                } else if let Some(c) = n.tag("content") {
                    BodyTransform::Content(self.list(f, c.as_list()))
                } else {
                    BodyTransform::Text
                };
                let key = match &t {
                    BodyTransform::Raw => "raw".to_string(),
                    BodyTransform::Text => "text".to_string(),
                    BodyTransform::Content(types) => {
                        format!("content:{}", types.join("\0").to_ascii_lowercase())
                    }
                };
                let texts = match self.bodies.get(&key) {
                    Some(t) => Rc::clone(t),
                    None => {
                        let mut texts = message::body_texts(self.raw, self.body, &t);
                        let mut budget = self.limits.max_body_bytes;
                        for s in &mut texts {
                            variables::truncate(s, budget);
                            budget -= s.len();
                        }
                        let texts = Rc::new(texts);
                        if self.bodies.len() < 16 {
                            self.bodies.insert(key, Rc::clone(&texts));
                        }
                        texts
                    }
                };
                self.compare_values(f, n, &texts, n.list_at(0), false)?
            }
            "string" => {
                let mut values = self.list(f, n.list_at(0));
                if n.has("count") {
                    values.retain(|v| !v.is_empty());
                }
                self.compare_values(f, n, &values, n.list_at(1), true)?
            }
            "hasflag" => {
                let (vars, keys) = if n.pos.len() == 2 {
                    (Some(n.list_at(0)), n.list_at(1))
                } else {
                    (None, n.list_at(0))
                };
                let values = match vars {
                    Some(v) => {
                        let vals: Vec<String> = v
                            .iter()
                            .map(|name| self.get_var(f, &self.s(f, name)))
                            .collect();
                        flag_words(&vals)
                    }
                    None => self.flags.clone(),
                };
                let keys = flag_words(&self.list(f, keys));
                self.compare_values(f, n, &values, &keys, false)?
            }
            "date" | "currentdate" => {
                let (date, part, keys) = if n.name == "date" {
                    let h = self.s(f, n.str_at(0));
                    let vals = self.field_values(n, &h)?;
                    let d = vals
                        .iter()
                        .find_map(|v| crate::date::parse_header_date(&message::decoded(v)));
                    (d, self.s(f, n.str_at(1)), n.list_at(2))
                } else {
                    (Some(self.ctx.now()), self.s(f, n.str_at(0)), n.list_at(1))
                };
                let Some(d) = date else { return Ok(false) };
                let d = self.zoned(f, n, d)?;
                let Some(v) = crate::date::part(&d, &part) else {
                    return Err(rerr(n.line, format!("unknown date part \"{part}\"")));
                };
                self.compare_values(f, n, &[v], keys, true)?
            }
            "environment" => {
                let item = self.s(f, n.str_at(0)).to_ascii_lowercase();
                let value = self.ctx.environment(&item).or_else(|| {
                    Some(match item.as_str() {
                        "name" => "Mailfleet".to_string(),
                        "version" => env!("CARGO_PKG_VERSION").to_string(),
                        "location" => "MDA".to_string(),
                        "phase" => "during".to_string(),
                        _ => return None,
                    })
                });
                match value {
                    Some(v) => self.compare_values(f, n, &[v], n.list_at(1), true)?,
                    None => false,
                }
            }
            "ihave" => n
                .list_at(0)
                .iter()
                .all(|c| crate::validate::ihave_supported(c)),
            "mailboxexists" => {
                let names = self.list(f, n.list_at(0));
                names.iter().all(|m| self.ctx.mailbox_exists(m))
            }
            other => return Err(rerr(n.line, format!("test \"{other}\" not implemented"))),
        })
    }

    fn zoned(
        &self,
        f: &Frame,
        n: &Node,
        d: DateTime<FixedOffset>,
    ) -> Result<DateTime<FixedOffset>, RuntimeError> {
        if n.has("originalzone") {
            return Ok(d);
        }
        let zone = match n.tag("zone") {
            Some(z) => {
                let z = self.s(f, z.as_str());
                crate::date::parse_zone(&z)
                    .ok_or_else(|| rerr(n.line, format!("invalid zone \"{z}\"")))?
            }
            None => *self.ctx.now().offset(),
        };
        Ok(d.with_timezone(&zone))
    }

    /// Raw values of the fields called `name`, narrowed by `:index`/`:last`
    /// (RFC 5260 §6: the Nth occurrence, counted from the end with :last).
    /// Looking through the header costs one step per 64 fields per name.
    fn scan_cost(&mut self, names: usize, line: usize) -> Result<(), RuntimeError> {
        self.steps += (names as u64).saturating_mul((self.fields.len() / 64) as u64);
        self.step(line)
    }

    fn field_values(&mut self, n: &Node, name: &str) -> Result<Vec<String>, RuntimeError> {
        self.scan_cost(1, n.line)?;
        let all: Vec<String> = self
            .fields
            .iter()
            .filter(|x| x.name.eq_ignore_ascii_case(name))
            .map(|x| x.raw.clone())
            .collect();
        Ok(match n.tag("index") {
            None => all,
            Some(i) => {
                let i = usize::try_from(i.as_num()).unwrap_or(usize::MAX);
                if i == 0 || i > all.len() {
                    return Ok(Vec::new());
                }
                let pos = if n.has("last") { all.len() - i } else { i - 1 };
                vec![all[pos].clone()]
            }
        })
    }

    fn regex(&mut self, pattern: &str, caseless: bool, line: usize) -> Result<Regex, RuntimeError> {
        let key = (pattern.to_string(), caseless);
        if let Some(r) = self.regexes.get(&key) {
            return Ok(r.clone());
        }
        let r = matcher::build_regex(pattern, caseless, self.limits)
            .map_err(|e| rerr(line, format!("pattern \"{pattern}\" rejected: {e}")))?;
        if self.regexes.len() < 256 {
            self.regexes.insert(key, r.clone());
        }
        Ok(r)
    }

    /// Applies the node's comparator and match type to every value × key.
    /// `set_vars`: a successful :matches/:regex sets ${0}..${N}.
    fn compare_values(
        &mut self,
        f: &Frame,
        n: &Node,
        values: &[String],
        raw_keys: &[String],
        set_vars: bool,
    ) -> Result<bool, RuntimeError> {
        let cmp = Cmp::from_name(n.tag("comparator").map(Value::as_str));
        let keys = self.list(f, raw_keys);
        let mt = match n.one_of(&["is", "contains", "matches", "regex", "count", "value"]) {
            Some("contains") => Mt::Contains,
            Some("matches") => Mt::Matches,
            Some("regex") => Mt::Regex,
            Some(t @ ("count" | "value")) => {
                let r = self.s(f, n.tag(t).map_or("", Value::as_str));
                let rel = Rel::parse(&r)
                    .ok_or_else(|| rerr(n.line, format!("invalid relation \"{r}\"")))?;
                if t == "count" {
                    Mt::Count(rel)
                } else {
                    Mt::Value(rel)
                }
            }
            _ => Mt::Is,
        };
        if let Mt::Count(rel) = mt {
            let count = values.len().to_string();
            self.step(n.line)?;
            return Ok(keys
                .iter()
                .any(|k| rel.holds(matcher::compare(cmp, &count, k))));
        }
        let caseless = cmp == Cmp::Casemap;
        for k in &keys {
            // i;ascii-casemap folds ASCII only: for :matches both sides are
            // ASCII-lowercased (byte offsets are unchanged, so captures are
            // cut from the original value). :regex uses the regex crate's
            // case-insensitive mode, which also folds non-ASCII letters.
            let re = match mt {
                Mt::Matches if caseless => Some(self.regex(
                    &matcher::glob_to_regex(&k.to_ascii_lowercase()),
                    false,
                    n.line,
                )?),
                Mt::Matches => Some(self.regex(&matcher::glob_to_regex(k), false, n.line)?),
                Mt::Regex => Some(self.regex(k, caseless, n.line)?),
                _ => None,
            };
            for v in values {
                // Long values (bodies) cost more: one step per 16 KiB.
                self.steps += (v.len() / 16_384) as u64;
                self.step(n.line)?;
                let hit = match mt {
                    Mt::Is => matcher::is(cmp, v, k),
                    Mt::Contains => matcher::contains(cmp, v, k),
                    Mt::Value(rel) => rel.holds(matcher::compare(cmp, v, k)),
                    Mt::Matches | Mt::Regex => {
                        let Some(re) = &re else { continue };
                        let folded;
                        let hay = if mt == Mt::Matches && caseless {
                            folded = v.to_ascii_lowercase();
                            folded.as_str()
                        } else {
                            v.as_str()
                        };
                        match re.captures(hay) {
                            Some(c) => {
                                if set_vars && f.vars {
                                    self.match_vars = c
                                        .iter()
                                        .take(10)
                                        .map(|m| {
                                            m.and_then(|m| v.get(m.range()))
                                                .unwrap_or("")
                                                .to_string()
                                        })
                                        .collect();
                                }
                                true
                            }
                            None => false,
                        }
                    }
                    Mt::Count(_) => false,
                };
                if hit {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }
}

/// `keep` and `fileinto "INBOX"` store in the same place (INBOX is
/// case-insensitive, RFC 3501): keep only the first of them, with the union
/// of their flags, so the message is not delivered twice.
fn merge_inbox(actions: &mut Vec<Action>) {
    let is_inbox = |a: &Action| match a {
        Action::Keep { .. } => true,
        Action::FileInto { mailbox, .. } => mailbox.eq_ignore_ascii_case("INBOX"),
        _ => false,
    };
    let Some(first) = actions.iter().position(is_inbox) else {
        return;
    };
    let mut extra: Vec<String> = Vec::new();
    let mut i = first + 1;
    while i < actions.len() {
        if is_inbox(&actions[i]) {
            if let Action::Keep { flags } | Action::FileInto { flags, .. } = actions.remove(i) {
                extra.push(flags.join(" "));
            }
        } else {
            i += 1;
        }
    }
    if let Action::Keep { flags } | Action::FileInto { flags, .. } = &mut actions[first] {
        extra.insert(0, flags.join(" "));
        *flags = flag_words(&extra);
    }
}

/// Redirect targets are the same if the local parts are equal and the
/// domains equal ignoring case (local parts are case-sensitive, RFC 5321).
fn same_address(a: &str, b: &str) -> bool {
    let (la, da) = message::split_address(a);
    let (lb, db) = message::split_address(b);
    la == lb && da.eq_ignore_ascii_case(db)
}

/// editheader does not touch trace and loop-prevention fields (RFC 5293
/// allows protecting them; Pigeonhole does too).
fn protected(name: &str) -> bool {
    name.eq_ignore_ascii_case("received") || name.eq_ignore_ascii_case("auto-submitted")
}

/// The address part named by the node (RFC 5228 §2.7.4, RFC 5233 with "+").
/// `None`: this address has no such part (e.g. :detail without "+").
fn address_part(n: &Node, a: &str) -> Option<String> {
    let (local, domain) = message::split_address(a);
    Some(
        match n.one_of(&["all", "localpart", "domain", "user", "detail"]) {
            Some("localpart") => local.to_string(),
            Some("domain") => domain.to_string(),
            Some("user") => local.split_once('+').map_or(local, |(u, _)| u).to_string(),
            Some("detail") => local.split_once('+')?.1.to_string(),
            _ => a.to_string(),
        },
    )
}
