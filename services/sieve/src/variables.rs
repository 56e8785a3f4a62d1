//! RFC 5229 variables: names, `${...}` expansion and `set` modifiers.
//!
//! Expansion is bounded: the result of one expansion and every variable's
//! value are cut at [`crate::Limits::max_variable_bytes`] (RFC 5229 §6
//! allows truncation) so that repeated doubling cannot exhaust memory.

/// identifier, or an identifier with dotted namespace parts.
pub(crate) fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.split('.').all(|p| {
            let mut c = p.chars();
            matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
                && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
        })
}

/// Replaces `${name}` and `${N}` references; anything that is not a valid
/// reference is left as written (RFC 5229 §3).
pub(crate) fn expand(s: &str, max: usize, lookup: &dyn Fn(&str) -> String) -> String {
    if !s.contains("${") {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(p) = rest.find("${") {
        out.push_str(&rest[..p]);
        let after = &rest[p + 2..];
        match after.find('}') {
            Some(e) if is_reference(&after[..e]) => {
                out.push_str(&lookup(&after[..e]));
                rest = &after[e + 1..];
            }
            _ => {
                out.push_str("${");
                rest = after;
            }
        }
        if out.len() > max {
            break;
        }
    }
    out.push_str(rest);
    truncate(&mut out, max);
    out
}

fn is_reference(n: &str) -> bool {
    (!n.is_empty() && n.bytes().all(|c| c.is_ascii_digit())) || valid_name(n)
}

pub(crate) fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

/// Applies `set` modifiers by precedence (RFC 5229 §4.1): case (40),
/// first letter (30), quoting (20), :length (10).
pub(crate) fn modify(value: String, mods: &[&str]) -> String {
    let mut v = value;
    if mods.contains(&"lower") {
        v = v.to_lowercase();
    }
    if mods.contains(&"upper") {
        v = v.to_uppercase();
    }
    if mods.contains(&"lowerfirst") || mods.contains(&"upperfirst") {
        let mut c = v.chars();
        if let Some(f) = c.next() {
            let first: String = if mods.contains(&"lowerfirst") {
                f.to_lowercase().collect()
            } else {
                f.to_uppercase().collect()
            };
            v = first + c.as_str();
        }
    }
    if mods.contains(&"quotewildcard") {
        let mut q = String::with_capacity(v.len());
        for c in v.chars() {
            if matches!(c, '*' | '?' | '\\') {
                q.push('\\');
            }
            q.push(c);
        }
        v = q;
    }
    if mods.contains(&"quoteregex") {
        v = regex::escape(&v);
    }
    if mods.contains(&"length") {
        v = v.chars().count().to_string();
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("a_1"));
        assert!(valid_name("global.x"));
        assert!(!valid_name("1a"));
        assert!(!valid_name(""));
        assert!(!valid_name("a-b"));
    }

    #[test]
    fn expansion() {
        let f = |n: &str| match n {
            "a" => "X".to_string(),
            "1" => "one".to_string(),
            _ => String::new(),
        };
        assert_eq!(
            expand("${a}-${1}-${b}-${-}-${a", 100, &f),
            "X-one--${-}-${a"
        );
        assert_eq!(expand("${a}${a}${a}", 2, &f), "XX");
    }

    #[test]
    fn modifiers() {
        assert_eq!(modify("hELLO".into(), &["lower", "upperfirst"]), "Hello");
        assert_eq!(modify("a*b".into(), &["quotewildcard"]), "a\\*b");
        assert_eq!(modify("a*b".into(), &["quotewildcard", "length"]), "4");
        assert_eq!(modify("äb".into(), &["length"]), "2");
    }
}
