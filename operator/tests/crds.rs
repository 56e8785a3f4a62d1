//! The committed CRDs are the ones the types generate, and their CEL rules (what the API
//! server will enforce) accept and refuse what they should, evaluated with the `cel` crate.

use mailfleet_operator::crd::crd_yaml;
use serde_json::{json, Value};
use std::path::PathBuf;

fn crd_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../charts/mailfleet/crds")
}

/// Set `MAILFLEET_WRITE_CRDS=1` to rewrite the files after changing the types.
#[test]
fn committed_crds_match_the_types() {
    for (file, yaml) in crd_yaml() {
        let path = crd_dir().join(file);
        if std::env::var_os("MAILFLEET_WRITE_CRDS").is_some() {
            std::fs::write(&path, &yaml).expect("write");
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == yaml,
            "{} drifted from operator/src/crd.rs: run `mailfleet-operator crds charts/mailfleet/crds` \
             (or MAILFLEET_WRITE_CRDS=1 cargo test -p mailfleet-operator --test crds)",
            path.display()
        );
    }
}

fn schema(kind: &str) -> Value {
    let (_, yaml) = crd_yaml()
        .into_iter()
        .find(|(f, _)| f.starts_with(kind))
        .expect("crd");
    let crd: Value = serde_yaml_ng::from_str(&yaml).expect("yaml");
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

/// Every CEL rule of `schema` evaluated on `new` (and `old` for transition rules, as the API
/// server does on an update): the messages of the rules that fail.
fn violations(schema: &Value, new: &Value, old: Option<&Value>) -> Vec<String> {
    let mut out = Vec::new();
    walk(schema, Some(new), old, &mut out);
    out
}

fn walk(schema: &Value, new: Option<&Value>, old: Option<&Value>, out: &mut Vec<String>) {
    let Some(value) = new else { return };
    if let Some(rules) = schema["x-kubernetes-validations"].as_array() {
        for r in rules {
            let rule = r["rule"].as_str().expect("rule");
            let transition = rule.contains("oldSelf");
            if transition && old.is_none() {
                continue;
            }
            let program = cel::Program::compile(rule).unwrap_or_else(|e| panic!("{rule}: {e:?}"));
            let mut ctx = cel::Context::default();
            ctx.add_variable("self", value.clone()).expect("self");
            if let Some(o) = old {
                ctx.add_variable("oldSelf", o.clone()).expect("oldSelf");
            }
            match program.execute(&ctx) {
                Ok(cel::Value::Bool(true)) => {}
                Ok(cel::Value::Bool(false)) => {
                    out.push(r["message"].as_str().unwrap_or(rule).to_string())
                }
                other => panic!("{rule} evaluated to {other:?}"),
            }
        }
    }
    if let Some(props) = schema["properties"].as_object() {
        for (name, sub) in props {
            walk(sub, value.get(name), old.and_then(|o| o.get(name)), out);
        }
    }
    if let (Some(items), Some(list)) = (schema.get("items"), value.as_array()) {
        for v in list {
            walk(items, Some(v), None, out);
        }
    }
}

fn user(address: &str, quota: &str) -> Value {
    json!({"spec": {
        "address": address, "quota": quota, "aliases": ["sales@example.com"],
        "passwordSecretRef": {"name": "alice-password"}
    }})
}

#[test]
fn user_rules() {
    let s = schema("users");
    assert!(violations(&s, &user("alice@example.com", "2Gi"), None).is_empty());
    assert_eq!(
        violations(&s, &user("alice@Example.com", "2Gi"), None),
        vec!["address must be local@domain with a lowercase domain"]
    );
    assert_eq!(
        violations(&s, &user("alice@example.com", "2 GB"), None).len(),
        1,
        "a quota that is not a quantity of bytes"
    );
    let old = user("alice@example.com", "1Gi");
    assert!(
        violations(&s, &user("alice@example.com", "5Gi"), Some(&old)).is_empty(),
        "quota may change"
    );
    assert_eq!(
        violations(&s, &user("bob@example.com", "1Gi"), Some(&old)),
        vec!["address is immutable"]
    );
    let mut catch_all = user("alice@example.com", "1Gi");
    catch_all["spec"]["aliases"] = json!(["@example.com"]);
    assert_eq!(
        violations(&s, &catch_all, None),
        vec!["aliases are addresses; a catch-all is set on the Domain"]
    );
    let mut apps = user("alice@example.com", "1Gi");
    apps["spec"]["appPasswords"] = json!([
        {"name": "phone", "secretRef": {"name": "alice-phone"}},
        {"name": "laptop", "secretRef": {"name": "alice-laptop", "key": "pw"}}
    ]);
    assert!(violations(&s, &apps, None).is_empty());
    apps["spec"]["appPasswords"][1]["name"] = json!("phone");
    assert_eq!(
        violations(&s, &apps, None),
        vec!["app password names must be unique"]
    );
    apps["spec"]["appPasswords"][1]["name"] = json!("");
    assert_eq!(
        violations(&s, &apps, None),
        vec!["name is 1 to 64 characters"]
    );
}

#[test]
fn domain_rules() {
    let s = schema("domains");
    let d = |name: &str, rotation: u32| json!({"spec": {"domainName": name, "dkim": {"rotationDays": rotation}}});
    assert!(violations(&s, &d("example.com", 90), None).is_empty());
    assert!(violations(&s, &d("example.com", 0), None).is_empty());
    assert_eq!(violations(&s, &d("Example.com", 0), None).len(), 1);
    assert_eq!(
        violations(&s, &d("localhost", 0), None).len(),
        1,
        "one label is not a mail domain"
    );
    assert_eq!(
        violations(&s, &d("example.com", 3), None).len(),
        1,
        "rotation too fast"
    );
    assert_eq!(
        violations(&s, &d("example.org", 0), Some(&d("example.com", 0))),
        vec!["domainName is immutable"]
    );
    let full = json!({"spec": {
        "domainName": "example.com", "aliases": ["example.net", "example.org"],
        "quota": "100Gi",
        "dkim": {"selector": "s2026", "algorithms": ["ed25519-sha256", "rsa-sha256"]}
    }});
    assert!(violations(&s, &full, None).is_empty());
    let mut bad = full.clone();
    bad["spec"]["aliases"] = json!(["Example.NET"]);
    bad["spec"]["quota"] = json!("lots");
    bad["spec"]["dkim"] = json!({"selector": "-x", "algorithms": ["rsa-sha256", "rsa-sha256"]});
    let mut v = violations(&s, &bad, None);
    v.sort();
    assert_eq!(
        v,
        vec![
            "aliases must be lowercase DNS names with at least two labels",
            "each algorithm once",
            "quota must be a number of bytes with an optional K, M, G or T (Ki, Mi, Gi, Ti) suffix",
            "selector must be 1 to 40 of a-z, 0-9 and '-', not at either end",
        ]
    );
}

#[test]
fn printer_columns_and_short_names() {
    for (file, yaml) in crd_yaml() {
        let crd: Value = serde_yaml_ng::from_str(&yaml).expect("yaml");
        assert!(
            crd["spec"]["names"]["shortNames"]
                .as_array()
                .is_some_and(|s| !s.is_empty()),
            "{file}"
        );
        let columns = crd["spec"]["versions"][0]["additionalPrinterColumns"]
            .as_array()
            .expect("columns");
        assert!(columns.iter().any(|c| c["name"] == "Ready"), "{file}");
        assert!(
            crd["spec"]["versions"][0]["subresources"]["status"].is_object(),
            "{file}"
        );
    }
}
