//! The validated program: every command and test is known, its tagged
//! arguments are resolved to the names in [`crate::validate`]'s tables and
//! its positional arguments have the right types. The interpreter can
//! therefore read arguments without re-checking them.

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    Str(String),
    List(Vec<String>),
    Num(u64),
}

impl Value {
    /// A string argument as a one-element list, or the list itself.
    pub(crate) fn as_list(&self) -> &[String] {
        match self {
            Value::Str(s) => std::slice::from_ref(s),
            Value::List(l) => l,
            Value::Num(_) => &[],
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        match self {
            Value::Str(s) => s,
            Value::List(l) => l.first().map_or("", String::as_str),
            Value::Num(_) => "",
        }
    }

    pub(crate) fn as_num(&self) -> u64 {
        match self {
            Value::Num(n) => *n,
            _ => 0,
        }
    }
}

/// One command or test with resolved arguments.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub name: &'static str,
    pub line: usize,
    /// Tagged arguments in source order, with their value if the tag takes one.
    pub tags: Vec<(&'static str, Option<Value>)>,
    pub pos: Vec<Value>,
    pub tests: Vec<Node>,
}

impl Node {
    pub(crate) fn has(&self, tag: &str) -> bool {
        self.tags.iter().any(|(t, _)| *t == tag)
    }

    pub(crate) fn tag(&self, tag: &str) -> Option<&Value> {
        self.tags
            .iter()
            .find(|(t, _)| *t == tag)
            .and_then(|(_, v)| v.as_ref())
    }

    /// The first of `names` that is present.
    pub(crate) fn one_of(&self, names: &[&'static str]) -> Option<&'static str> {
        self.tags
            .iter()
            .map(|(t, _)| *t)
            .find(|t| names.contains(t))
    }

    pub(crate) fn str_at(&self, i: usize) -> &str {
        self.pos.get(i).map_or("", Value::as_str)
    }

    pub(crate) fn list_at(&self, i: usize) -> &[String] {
        self.pos.get(i).map_or(&[], Value::as_list)
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Stmt {
    /// `if`/`elsif` branches in order, then the optional `else` block.
    If {
        branches: Vec<(Node, Vec<Stmt>)>,
        otherwise: Option<Vec<Stmt>>,
    },
    Cmd(Node),
}
