//! RFC 5228 §2.4.2.4 "encoded-character": `${hex:48 49}` and
//! `${unicode:263A}` inside strings, replaced when the script is compiled
//! (only when it requires "encoded-character"). Sequences that do not fit
//! the syntax stay as written; ones that fit but name invalid UTF-8 or an
//! invalid code point are compile errors, so a script never carries
//! unrepresentable text.

/// Replaces the encoded sequences in `s`.
pub(crate) fn decode(s: &str) -> Result<String, String> {
    if !s.contains("${") {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(p) = rest.find("${") {
        out.push_str(&rest[..p]);
        let after = &rest[p + 2..];
        let close = after.find('}');
        let decoded = match close {
            Some(e) => {
                let body = &after[..e];
                match body.split_once(':') {
                    Some((kind, list)) if kind.eq_ignore_ascii_case("hex") => hex(list)?,
                    Some((kind, list)) if kind.eq_ignore_ascii_case("unicode") => unicode(list)?,
                    _ => None,
                }
            }
            None => None,
        };
        match (decoded, close) {
            (Some(d), Some(e)) => {
                out.push_str(&d);
                rest = &after[e + 1..];
            }
            _ => {
                out.push_str("${");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The whitespace-separated items, or `None` if the list is empty or has a
/// character other than blanks and hex digits.
fn items(list: &str) -> Option<Vec<&str>> {
    if !list
        .chars()
        .all(|c| c.is_ascii_hexdigit() || matches!(c, ' ' | '\t' | '\r' | '\n'))
    {
        return None;
    }
    let v: Vec<&str> = list.split_ascii_whitespace().collect();
    (!v.is_empty()).then_some(v)
}

fn hex(list: &str) -> Result<Option<String>, String> {
    let Some(items) = items(list) else {
        return Ok(None);
    };
    let mut bytes = Vec::new();
    for i in items {
        if i.len() > 2 {
            return Ok(None);
        }
        bytes.push(u8::from_str_radix(i, 16).map_err(|e| e.to_string())?);
    }
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| format!("${{hex:{}}} is not valid UTF-8", list.trim()))
}

fn unicode(list: &str) -> Result<Option<String>, String> {
    let Some(items) = items(list) else {
        return Ok(None);
    };
    let mut out = String::new();
    for i in items {
        let digits = i.trim_start_matches('0');
        if digits.len() > 6 {
            return Err(format!("${{unicode:{i}}} is out of range"));
        }
        let cp = if digits.is_empty() {
            0
        } else {
            u32::from_str_radix(digits, 16).map_err(|e| e.to_string())?
        };
        let c = char::from_u32(cp)
            .ok_or_else(|| format!("${{unicode:{i}}} is not a Unicode scalar value"))?;
        out.push(c);
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::decode;

    #[test]
    fn sequences() {
        assert_eq!(decode("${hex:48 69}!").unwrap(), "Hi!");
        assert_eq!(decode("${HEX: 4 41 }").unwrap(), "\u{4}A");
        assert_eq!(decode("a${unicode:263a}b${unicode:0041}").unwrap(), "a☺bA");
        assert_eq!(decode("${hex:c3 a9}").unwrap(), "é");
        // Not the syntax: left alone.
        assert_eq!(
            decode("${hex:}${hex:123}${foo}${unicode:xyz}${hex:41").unwrap(),
            "${hex:}${hex:123}${foo}${unicode:xyz}${hex:41"
        );
        // The syntax, but invalid.
        assert!(decode("${hex:ff}").is_err());
        assert!(decode("${unicode:D800}").is_err());
        assert!(decode("${unicode:110000}").is_err());
        assert!(decode("${unicode:1234567}").is_err());
    }
}
