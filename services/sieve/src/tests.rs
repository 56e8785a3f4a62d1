//! Behaviour of whole scripts: actions, implicit keep, extensions, limits.

use super::*;
use chrono::{FixedOffset, TimeZone};

pub(crate) struct Ctx {
    pub mailboxes: Vec<&'static str>,
    pub scripts: Vec<(&'static str, Location, &'static str)>,
}

impl Context for Ctx {
    fn mailbox_exists(&self, name: &str) -> bool {
        self.mailboxes.contains(&name)
    }
    fn include(&self, name: &str, location: Location) -> Option<String> {
        self.scripts
            .iter()
            .find(|(n, l, _)| *n == name && *l == location)
            .map(|(_, _, s)| s.to_string())
    }
    fn now(&self) -> chrono::DateTime<FixedOffset> {
        FixedOffset::east_opt(3600)
            .unwrap()
            .with_ymd_and_hms(2026, 3, 14, 15, 9, 26)
            .unwrap()
    }
}

const MSG: &str = "Return-Path: <bob@example.com>\r\n\
Received: from x by y\r\n\
From: Bob Smith <bob@example.com>\r\n\
To: Alice <alice@example.org>, carol+news@example.net\r\n\
Cc: dave@example.org\r\n\
Subject: Hello World =?UTF-8?Q?caf=C3=A9?=\r\n\
Date: Tue, 1 Apr 2025 09:05:07 +0200\r\n\
Message-ID: <m1@example.com>\r\n\
X-Spam-Score: 7\r\n\
X-Spam-Score: 2\r\n\
Content-Type: text/plain\r\n\
\r\n\
This is the body. Buy now!\r\n";

fn ctx() -> Ctx {
    Ctx {
        mailboxes: vec!["INBOX", "Junk"],
        scripts: vec![],
    }
}

fn env() -> Envelope<'static> {
    Envelope {
        from: Some("bob@example.com"),
        to: "alice+work@example.org",
        auth: None,
    }
}

pub(crate) fn go_with(
    src: &str,
    msg: &str,
    env: &Envelope,
    ctx: &Ctx,
) -> Result<Outcome, RuntimeError> {
    let l = Limits::default();
    let s = compile(src, &l).unwrap_or_else(|e| panic!("compile: {e}"));
    run(&s, msg.as_bytes(), env, ctx, &l)
}

fn go(src: &str) -> Vec<Action> {
    go_with(src, MSG, &env(), &ctx()).unwrap().actions
}

fn keep() -> Action {
    Action::Keep { flags: vec![] }
}

fn fi(m: &str) -> Action {
    Action::FileInto {
        mailbox: m.into(),
        flags: vec![],
        create: false,
    }
}

#[test]
fn implicit_keep() {
    assert_eq!(go(""), vec![keep()]);
    let o = go_with("", MSG, &env(), &ctx()).unwrap();
    assert!(o.implicit_keep);
    assert_eq!(go("discard;"), vec![Action::Discard]);
    assert_eq!(
        go("require \"fileinto\"; fileinto \"Junk\";"),
        vec![fi("Junk")]
    );
    assert_eq!(
        go("require [\"fileinto\",\"copy\"]; fileinto :copy \"Junk\";"),
        vec![fi("Junk"), keep()]
    );
    assert_eq!(
        go("redirect \"x@example.org\";"),
        vec![Action::Redirect {
            address: "x@example.org".into(),
            copy: false
        }]
    );
    assert_eq!(
        go("require \"fileinto\"; fileinto \"Junk\"; discard;"),
        vec![fi("Junk")]
    );
    assert_eq!(go("keep; stop; discard;"), vec![keep()]);
}

#[test]
fn dedup() {
    assert_eq!(
        go("require \"fileinto\"; fileinto \"A\"; fileinto \"A\"; keep; keep;"),
        vec![fi("A"), keep()]
    );
    assert_eq!(
        go("redirect \"x@example.org\"; redirect \"x@EXAMPLE.org\"; redirect \"X@example.org\";"),
        vec![
            Action::Redirect {
                address: "x@example.org".into(),
                copy: false
            },
            Action::Redirect {
                address: "X@example.org".into(),
                copy: false
            }
        ]
    );
    // Mailbox names are kept as written.
    assert_eq!(
        go("require \"fileinto\"; fileinto \"INBOX.Junk\"; fileinto \"Junk\";"),
        vec![fi("INBOX.Junk"), fi("Junk")]
    );
}

#[test]
fn header_address_tests() {
    let t = |test: &str| {
        let a = go(&format!(
            "require [\"fileinto\",\"subaddress\",\"relational\",\"comparator-i;ascii-numeric\",\"index\",\"regex\"]; if {test} {{ fileinto \"T\"; }}"
        ));
        a == vec![fi("T")]
    };
    assert!(t("header :contains \"subject\" \"world\""));
    assert!(t("header :contains \"subject\" \"café\""));
    assert!(!t(
        "header :comparator \"i;octet\" :contains \"subject\" \"world\""
    ));
    assert!(t("header :matches \"subject\" \"hello*\""));
    assert!(t("header :is \"X-Spam-Score\" \"2\""));
    assert!(t(
        "header :value \"gt\" :comparator \"i;ascii-numeric\" \"X-Spam-Score\" \"5\""
    ));
    assert!(!t(
        "header :value \"gt\" :comparator \"i;ascii-numeric\" \"X-Spam-Score\" \"7\""
    ));
    assert!(t(
        "header :count \"eq\" :comparator \"i;ascii-numeric\" \"X-Spam-Score\" \"2\""
    ));
    assert!(t("header :index 2 :is \"X-Spam-Score\" \"2\""));
    assert!(t("header :index 1 :last :is \"X-Spam-Score\" \"2\""));
    assert!(!t("header :index 1 :is \"X-Spam-Score\" \"2\""));
    assert!(t("address :is :domain \"from\" \"EXAMPLE.com\""));
    assert!(t("address :is :localpart \"to\" \"carol+news\""));
    assert!(t("address :is :user \"to\" \"carol\""));
    assert!(t("address :is :detail \"to\" \"news\""));
    assert!(!t("address :is :detail \"cc\" \"\""));
    assert!(t(
        "address :count \"eq\" :comparator \"i;ascii-numeric\" [\"to\",\"cc\"] \"3\""
    ));
    assert!(t("exists [\"from\", \"date\"]"));
    assert!(!t("exists [\"from\", \"x-nope\"]"));
    assert!(t("size :over 100"));
    assert!(t("size :under 1M"));
    assert!(t("allof (true, not false)"));
    assert!(!t("anyof (false, not true)"));
    assert!(t("header :regex \"subject\" \"^hello [a-z]+\""));
    assert!(!t("header :regex \"subject\" \"^world\""));
}

#[test]
fn envelope_test() {
    let t = |test: &str| {
        go(&format!(
            "require [\"envelope\",\"fileinto\",\"subaddress\"]; if {test} {{ fileinto \"T\"; }}"
        )) == vec![fi("T")]
    };
    assert!(t("envelope :is \"from\" \"bob@example.com\""));
    assert!(t("envelope :is :detail \"to\" \"work\""));
    assert!(t("envelope :is :user \"to\" \"alice\""));
    assert!(t("envelope :domain :is \"to\" \"example.org\""));
    let null = Envelope {
        from: None,
        to: "alice@example.org",
        auth: None,
    };
    let a = go_with(
        "require \"envelope\"; if envelope :is \"from\" \"\" { discard; }",
        MSG,
        &null,
        &ctx(),
    )
    .unwrap();
    assert_eq!(a.actions, vec![Action::Discard]);
}

#[test]
fn flags() {
    assert_eq!(
        go("require \"imap4flags\"; addflag \"\\\\Seen\"; addflag [\"\\\\seen\", \"a b\"]; removeflag \"a\";"),
        vec![Action::Keep { flags: vec!["\\Seen".into(), "b".into()] }]
    );
    assert_eq!(
        go("require [\"imap4flags\",\"fileinto\"]; setflag \"x\"; fileinto :flags \"y\" \"A\"; fileinto \"B\"; if hasflag \"X\" { keep; }"),
        vec![
            Action::FileInto { mailbox: "A".into(), flags: vec!["y".into()], create: false },
            Action::FileInto { mailbox: "B".into(), flags: vec!["x".into()], create: false },
            Action::Keep { flags: vec!["x".into()] },
        ]
    );
    assert_eq!(
        go("require [\"imap4flags\",\"variables\"]; addflag \"v\" \"q\"; if hasflag :is \"v\" \"q\" { keep :flags \"${v}z\"; }"),
        vec![Action::Keep { flags: vec!["qz".into()] }]
    );
}

#[test]
fn variables() {
    let a = go(r#"require ["variables","fileinto"];
        if header :matches "from" "* <*@*>" { set "dom" "${3}"; set :upper "who" "${1}"; }
        set :length "n" "${who}";
        fileinto "${dom}/${who}/${n}/${unknown}x";"#);
    assert_eq!(a, vec![fi("example.com/BOB SMITH/9/x")]);
    let a = go(
        r#"require ["variables","fileinto"]; set "a" "x*y"; set :quotewildcard "b" "${a}";
        if string :matches "x*y" "${b}" { fileinto "yes"; }"#,
    );
    assert_eq!(a, vec![fi("yes")]);
    let a = go(r#"require ["variables","fileinto","regex"];
        if header :regex "subject" "^(\\w+) (\\w+)" { fileinto "${2}-${1}"; }"#);
    assert_eq!(a, vec![fi("World-Hello")]);
    let a = go(
        r#"require ["variables","fileinto","relational"]; if string :count "eq" ["a","","b"] "2" { fileinto "two"; }"#,
    );
    assert_eq!(a, vec![fi("two")]);
}

#[test]
fn variable_growth_bounded() {
    let s = "require \"variables\"; set \"a\" \"xxxxxxxxxxxxxxxx\";".to_string()
        + &"set \"a\" \"${a}${a}\";".repeat(30);
    let o = go_with(&s, MSG, &env(), &ctx()).unwrap();
    assert_eq!(o.actions, vec![keep()]);
}

#[test]
fn reject_and_conflicts() {
    assert_eq!(
        go("require \"reject\"; reject \"go away\";"),
        vec![Action::Reject {
            reason: "go away".into(),
            ereject: false
        }]
    );
    assert_eq!(
        go("require \"ereject\"; ereject \"no\";"),
        vec![Action::Reject {
            reason: "no".into(),
            ereject: true
        }]
    );
    let e = go_with(
        "require [\"reject\",\"fileinto\"]; fileinto \"A\"; reject \"x\";",
        MSG,
        &env(),
        &ctx(),
    )
    .unwrap_err();
    assert!(e.message.contains("conflicts"), "{e}");
    assert!(go_with(
        "require \"reject\"; reject \"x\"; reject \"y\";",
        MSG,
        &env(),
        &ctx()
    )
    .is_err());
}

#[test]
fn vacation() {
    let other = Envelope {
        from: Some("bob@example.com"),
        to: "zed@example.org",
        auth: None,
    };
    let o = go_with(
        "require \"vacation\"; vacation :days 3 :subject \"Away\" :addresses \"nobody@example.net\" \"I am away\";",
        MSG,
        &other,
        &ctx(),
    )
    .unwrap();
    assert_eq!(
        o.vacation_suppressed.as_deref(),
        Some("recipient not named in To/Cc/Bcc")
    );
    assert_eq!(o.actions, vec![keep()]);
    let o = go_with(
        "require \"vacation\"; vacation :addresses \"carol+news@example.net\" \"x\";",
        MSG,
        &other,
        &ctx(),
    )
    .unwrap();
    assert!(matches!(o.actions[0], Action::Vacation(_)));
    let me = Envelope {
        from: Some("bob@example.com"),
        to: "alice@example.org",
        auth: None,
    };
    let o = go_with(
        "require \"vacation\"; vacation :days 3 :subject \"Away\" \"I am away\";",
        MSG,
        &me,
        &ctx(),
    )
    .unwrap();
    let Action::Vacation(v) = &o.actions[0] else {
        panic!("{o:?}")
    };
    assert_eq!(v.period_seconds, 3 * 86400);
    assert_eq!(v.to, "bob@example.com");
    assert_eq!(v.reply_subject(), "Away");
    assert_eq!(v.in_reply_to.as_deref(), Some("<m1@example.com>"));
    assert_eq!(o.actions[1], keep());
    let list = MSG.replace("X-Spam-Score: 7", "List-Id: <x.example.com>");
    let o = go_with("require \"vacation\"; vacation \"x\";", &list, &me, &ctx()).unwrap();
    assert_eq!(o.actions, vec![keep()]);
    assert!(o.vacation_suppressed.unwrap().contains("mailing list"));
    let null = Envelope {
        from: None,
        to: "alice@example.org",
        auth: None,
    };
    let o = go_with("require \"vacation\"; vacation \"x\";", MSG, &null, &ctx()).unwrap();
    assert_eq!(o.actions, vec![keep()]);
    // The +detail recipient still matches alice@ in To.
    let o = go_with(
        "require \"vacation\"; vacation :handle \"h\" \"x\";",
        MSG,
        &env(),
        &ctx(),
    )
    .unwrap();
    let Action::Vacation(v) = &o.actions[0] else {
        panic!("{o:?}")
    };
    assert_eq!(v.handle, "h");
    assert_eq!(v.period_seconds, 7 * 86400);
}

#[test]
fn editheader() {
    let o = go_with(
        r#"require ["editheader","fileinto","index"];
        addheader "X-Sieve" "yes";
        addheader :last "X-Tail" "ünï";
        deleteheader :index 1 "X-Spam-Score";
        deleteheader "Received";
        if header :is "X-Sieve" "yes" { if not header :is "x-spam-score" "7" { fileinto "edited"; } }"#,
        MSG,
        &env(),
        &ctx(),
    )
    .unwrap();
    assert_eq!(o.actions, vec![fi("edited")]);
    let out = String::from_utf8(apply_edits(MSG.as_bytes(), &o.header_edits)).unwrap();
    assert!(out.starts_with("X-Sieve: yes\r\nReturn-Path"));
    assert!(out.contains("Received: from x"));
    assert!(!out.contains("X-Spam-Score: 7"));
    assert!(out.contains("X-Spam-Score: 2"));
    assert!(out.contains("X-Tail: =?UTF-8?B?"));
    assert!(out.ends_with("\r\n\r\nThis is the body. Buy now!\r\n"));
    let o = go_with(
        r#"require "editheader"; deleteheader :matches "x-spam-score" "[0-9]*"; deleteheader :contains "x-spam-score" "7";"#,
        MSG,
        &env(),
        &ctx(),
    )
    .unwrap();
    assert_eq!(
        o.header_edits,
        vec![HeaderEdit::Delete {
            name: "x-spam-score".into(),
            occurrences: vec![1]
        }]
    );
}

#[test]
fn body_test() {
    let t = |test: &str| {
        go(&format!(
            "require [\"body\",\"fileinto\"]; if {test} {{ fileinto \"T\"; }}"
        )) == vec![fi("T")]
    };
    assert!(t("body :contains \"buy now\""));
    assert!(t("body :raw :contains \"Buy now\""));
    assert!(t("body :content \"text\" :contains \"buy\""));
    assert!(!t("body :content \"image\" :contains \"buy\""));
    assert!(!t("body :contains \"x-spam-score\""));
}

#[test]
fn dates() {
    let t = |test: &str| {
        go(&format!(
            "require [\"date\",\"fileinto\",\"relational\"]; if {test} {{ fileinto \"T\"; }}"
        )) == vec![fi("T")]
    };
    assert!(t("date :originalzone \"date\" \"hour\" \"09\""));
    assert!(t("date :zone \"+0000\" \"date\" \"hour\" \"07\""));
    assert!(t("date \"date\" \"hour\" \"08\""));
    assert!(t("date :value \"ge\" \"date\" \"date\" \"2025-01-01\""));
    assert!(t("currentdate :is \"year\" \"2026\""));
    assert!(t("currentdate :zone \"+0000\" :is \"hour\" \"14\""));
    assert!(!t("date :is \"x-nope\" \"year\" \"2025\""));
}

#[test]
fn mailbox_ext() {
    assert_eq!(
        go("require [\"mailbox\",\"fileinto\"]; if mailboxexists \"Junk\" { fileinto :create \"New\"; }"),
        vec![Action::FileInto { mailbox: "New".into(), flags: vec![], create: true }]
    );
    assert_eq!(
        go("require [\"mailbox\",\"fileinto\"]; if mailboxexists [\"Junk\",\"Nope\"] { discard; }"),
        vec![keep()]
    );
}

#[test]
fn include_ext() {
    let c = Ctx {
        mailboxes: vec![],
        scripts: vec![
            ("spam", Location::Personal, "require [\"fileinto\",\"include\",\"variables\"]; global \"box\"; fileinto \"${box}\"; return; discard;"),
            ("g", Location::Global, "require \"include\"; include :personal \"spam\";"),
            ("loop", Location::Personal, "require \"include\"; include \"loop\";"),
            ("bad", Location::Personal, "foo;"),
        ],
    };
    let o = go_with(
        "require [\"include\",\"variables\"]; global \"box\"; set \"box\" \"Spam\"; include :global \"g\"; include :once \"spam\"; include :once \"spam\"; include :optional \"nope\";",
        MSG,
        &env(),
        &c,
    )
    .unwrap();
    assert_eq!(o.actions, vec![fi("Spam")]);
    let e = go_with("require \"include\"; include \"loop\";", MSG, &env(), &c).unwrap_err();
    assert!(e.message.contains("nested deeper"), "{e}");
    let e = go_with("require \"include\"; include \"nope\";", MSG, &env(), &c).unwrap_err();
    assert!(e.message.contains("not found"), "{e}");
    let e = go_with("require \"include\"; include \"bad\";", MSG, &env(), &c).unwrap_err();
    assert!(e.message.contains("unknown command"), "{e}");
}

#[test]
fn limits() {
    let l = Limits {
        max_script_bytes: 10,
        ..Limits::default()
    };
    assert!(compile("keep; keep; keep;", &l)
        .unwrap_err()
        .message
        .contains("limit"));
    let src = "redirect \"a@x.y\"; redirect \"b@x.y\"; redirect \"c@x.y\"; redirect \"d@x.y\"; redirect \"e@x.y\";";
    assert!(go_with(src, MSG, &env(), &ctx())
        .unwrap_err()
        .message
        .contains("redirects"));
    let src = "require \"fileinto\";".to_string()
        + &(0..40)
            .map(|i| format!("fileinto \"f{i}\";"))
            .collect::<String>();
    assert!(go_with(&src, MSG, &env(), &ctx())
        .unwrap_err()
        .message
        .contains("actions"));
    let src = "if anyof(".to_string()
        + &vec!["header :contains \"subject\" \"zzz\""; 1500].join(",")
        + ") { keep; }";
    let l = Limits {
        max_steps: 500,
        ..Limits::default()
    };
    let s = compile(&src, &Limits::default()).unwrap();
    let e = run(&s, MSG.as_bytes(), &env(), &ctx(), &l).unwrap_err();
    assert!(e.message.contains("steps"), "{e}");
}

/// `compile` never panics: mutated valid scripts and random bytes.
#[test]
fn compile_never_panics() {
    let seeds = [
        "require [\"fileinto\",\"variables\",\"regex\",\"relational\",\"date\",\"editheader\"];\nif header :matches \"subject\" \"*x*\" { fileinto \"${1}\"; } elsif not size :over 10K { discard; }",
        "require \"vacation\"; vacation :days 3 :subject \"s\" text:\nhello\n.\n;",
        "if anyof (address :all :is \"from\" \"a@b\", exists \"x\") { stop; }",
    ];
    let alphabet: &[u8] =
        b"\"\\[](){},;:# \n*/?$0123456789abcdefghijklmnopqrstuvwxyzKMG.-_\xc3\xa9\xff";
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let l = Limits::default();
    for i in 0..4000 {
        let mut b: Vec<u8> = seeds[i % seeds.len()].as_bytes().to_vec();
        if i % 4 == 3 {
            b = (0..(rnd() % 200))
                .map(|_| alphabet[(rnd() % alphabet.len() as u64) as usize])
                .collect();
        } else {
            for _ in 0..(1 + rnd() % 6) {
                let p = (rnd() as usize) % (b.len() + 1);
                match rnd() % 3 {
                    0 if p < b.len() => {
                        b.remove(p);
                    }
                    1 => b.insert(p, alphabet[(rnd() % alphabet.len() as u64) as usize]),
                    _ if p < b.len() => b[p] = alphabet[(rnd() % alphabet.len() as u64) as usize],
                    _ => {}
                }
            }
        }
        let s = String::from_utf8_lossy(&b);
        if let Ok(script) = compile(&s, &l) {
            let _ = run(&script, MSG.as_bytes(), &env(), &ctx(), &l);
        }
    }
}

#[test]
fn vacation_period_floor() {
    let me = Envelope {
        from: Some("bob@example.com"),
        to: "alice@example.org",
        auth: None,
    };
    let src = "require [\"vacation\", \"vacation-seconds\"]; vacation :seconds 60 \"x\";";
    let o = go_with(src, MSG, &me, &ctx()).unwrap();
    let Action::Vacation(v) = &o.actions[0] else {
        panic!("{o:?}")
    };
    assert_eq!(v.period_seconds, 86_400);
    let l = Limits {
        min_vacation_seconds: 0,
        ..Limits::default()
    };
    let s = compile(src, &l).unwrap();
    let o = run(&s, MSG.as_bytes(), &me, &ctx(), &l).unwrap();
    let Action::Vacation(v) = &o.actions[0] else {
        panic!("{o:?}")
    };
    assert_eq!(v.period_seconds, 60);
    let o = go_with(
        "require \"vacation\"; vacation :days 0 \"x\";",
        MSG,
        &me,
        &ctx(),
    )
    .unwrap();
    let Action::Vacation(v) = &o.actions[0] else {
        panic!("{o:?}")
    };
    assert_eq!(v.period_seconds, 86_400);
    // One vacation per run; reject and vacation exclude each other.
    assert!(go_with(
        "require \"vacation\"; vacation \"a\"; vacation \"b\";",
        MSG,
        &me,
        &ctx()
    )
    .is_err());
    assert!(go_with(
        "require [\"vacation\",\"reject\"]; vacation \"a\"; reject \"b\";",
        MSG,
        &me,
        &ctx()
    )
    .is_err());
}

#[test]
fn runtime_errors_name_the_line() {
    let e = go_with(
        "require \"variables\";\nset \"a\" \"not an address\";\nredirect \"${a}\";",
        MSG,
        &env(),
        &ctx(),
    )
    .unwrap_err();
    assert_eq!(e.line, 3);
    assert!(
        e.to_string()
            .starts_with("line 3: redirect: invalid address"),
        "{e}"
    );
}

#[test]
fn big_body_is_bounded() {
    let big = MSG.to_string() + &"spam spam spam spam\r\n".repeat(100_000);
    let src = "require [\"body\",\"fileinto\"];".to_string()
        + &"if body :contains \"zzz\" { discard; }".repeat(100)
        + "if body :contains \"spam spam\" { fileinto \"S\"; }";
    // 2 MB body: 1 MiB is looked at, each comparison costs 64 steps.
    let o = go_with(&src, &big, &env(), &ctx()).unwrap();
    assert_eq!(o.actions, vec![fi("S")]);
    let l = Limits {
        max_steps: 5_000,
        ..Limits::default()
    };
    let s = compile(&src, &l).unwrap();
    assert!(run(&s, big.as_bytes(), &env(), &ctx(), &l)
        .unwrap_err()
        .message
        .contains("steps"));
}

#[test]
fn capabilities_listed() {
    for c in CAPABILITIES {
        let src = format!("require \"{c}\";");
        assert!(compile(&src, &Limits::default()).is_ok(), "{c}");
    }
    let s = compile(
        "require [\"fileinto\", \"body\"]; keep;",
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(s.required(), vec!["body", "fileinto"]);
}

/// `run` never panics on odd messages: mutated headers and bodies.
#[test]
fn run_never_panics_on_messages() {
    let src = r#"require ["variables","fileinto","regex","relational","date","editheader","body","envelope","index","subaddress","vacation","imap4flags"];
        if header :matches "subject" "*x*" { fileinto "${1}"; }
        if address :detail :contains ["to","cc","from"] "a" { addflag "x"; }
        if date :zone "+0000" :value "gt" "date" "year" "2000" { keep; }
        if body :content "text" :contains "a" { stop; }
        if header :regex "x" "^a+$" { discard; }
        addheader "X-A" "b"; deleteheader :index 1 "to";
        vacation "v";"#;
    let l = Limits::default();
    let s = compile(src, &l).unwrap();
    let alphabet: &[u8] = b"\r\n:;<>@\"=?()., \tabcXYZ-+\xc3\xa9\xff\x00";
    let mut x: u64 = 0x1234_5678_9ABC_DEF1;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..2000 {
        let mut b = MSG.as_bytes().to_vec();
        if i % 5 == 4 {
            b = (0..(rnd() % 400))
                .map(|_| alphabet[(rnd() % alphabet.len() as u64) as usize])
                .collect();
        } else {
            for _ in 0..(1 + rnd() % 10) {
                let p = (rnd() as usize) % (b.len() + 1);
                let c = alphabet[(rnd() % alphabet.len() as u64) as usize];
                if rnd() % 2 == 0 || p == b.len() {
                    b.insert(p, c);
                } else {
                    b[p] = c;
                }
            }
        }
        let _ = run(&s, &b, &env(), &ctx(), &l);
        let _ = apply_edits(
            &b,
            &[HeaderEdit::Delete {
                name: "to".into(),
                occurrences: vec![1],
            }],
        );
    }
}

#[test]
fn vacation_from_checked() {
    let l = Limits::default();
    assert!(compile(
        "require \"vacation\"; vacation :from \"not an address\" \"x\";",
        &l
    )
    .is_err());
    assert!(compile(
        "require \"vacation\"; vacation :from \"Alice <alice@example.org>\" \"x\";",
        &l
    )
    .is_ok());
    let me = Envelope {
        from: Some("bob@example.com"),
        to: "alice@example.org",
        auth: None,
    };
    let o = go_with(
        "require \"vacation\"; vacation :subject \"a\r\nBcc: x@y.z\" \"x\";",
        MSG,
        &me,
        &ctx(),
    )
    .unwrap();
    let Action::Vacation(v) = &o.actions[0] else {
        panic!("{o:?}")
    };
    assert!(!v.reply_subject().contains('\n'));
}

#[test]
fn many_header_fields_bounded() {
    let mut m = String::new();
    for i in 0..50_000 {
        m.push_str(&format!("X-{i}: v\r\n"));
    }
    m.push_str("Subject: late\r\n\r\nbody text\r\n");
    let src = "require [\"body\",\"fileinto\"]; if exists \"subject\" { fileinto \"seen\"; } if body :contains \"body text\" { fileinto \"body\"; }";
    let o = go_with(src, &m, &env(), &ctx()).unwrap();
    // The Subject is past max_header_fields: invisible, but the body is found.
    assert_eq!(o.actions, vec![fi("body")]);
    let l = Limits {
        max_steps: 500,
        ..Limits::default()
    };
    let src = "if anyof(".to_string() + &vec!["exists \"x-nope\""; 100].join(",") + ") { keep; }";
    let s = compile(&src, &l).unwrap();
    assert!(run(&s, m.as_bytes(), &env(), &ctx(), &l)
        .unwrap_err()
        .message
        .contains("steps"));
}

#[test]
fn script_is_shareable() {
    fn send_sync<T: Send + Sync + Clone>() {}
    send_sync::<Script>();
    send_sync::<Outcome>();
    send_sync::<Limits>();
}

#[test]
fn encoded_character() {
    assert_eq!(
        go("require [\"encoded-character\",\"fileinto\"]; fileinto \"${hex:4a 75 6e 6b}/${unicode:1F600}\";"),
        vec![fi("Junk/😀")]
    );
    // Without the require the text stays as written.
    assert_eq!(
        go("require \"fileinto\"; fileinto \"${hex:41}\";"),
        vec![fi("${hex:41}")]
    );
    let e = compile(
        "require \"encoded-character\";\nredirect \"${hex:ff}@x.y\";",
        &Limits::default(),
    )
    .unwrap_err();
    assert_eq!(e.line, 2);
}

#[test]
fn inbox_stored_once() {
    assert_eq!(
        go("require [\"fileinto\",\"imap4flags\"]; fileinto :flags \"a\" \"inbox\"; keep :flags \"b\";"),
        vec![Action::FileInto { mailbox: "inbox".into(), flags: vec!["a".into(), "b".into()], create: false }]
    );
    assert_eq!(
        go("require [\"fileinto\",\"copy\"]; fileinto :copy \"INBOX\";"),
        vec![fi("INBOX")]
    );
}

#[test]
fn environment_ext() {
    let t = |test: &str| {
        go(&format!(
            "require [\"environment\",\"fileinto\"]; if {test} {{ fileinto \"T\"; }}"
        )) == vec![fi("T")]
    };
    assert!(t("environment :is \"location\" \"MDA\""));
    assert!(t("environment :is \"name\" \"mailfleet\""));
    assert!(t("environment :is \"phase\" \"during\""));
    assert!(!t("environment :matches \"remote-ip\" \"*\""));
    assert!(compile("if environment :is \"name\" \"x\" {}", &Limits::default()).is_err());
}

#[test]
fn ihave_ext() {
    // Known capability: usable inside the block without require.
    assert_eq!(
        go("require \"ihave\"; if ihave \"fileinto\" { fileinto \"F\"; } else { discard; }"),
        vec![fi("F")]
    );
    assert_eq!(
        go("require [\"ihave\",\"imap4flags\"]; if ihave \"imap4flags\" { addflag \"x\"; }"),
        vec![Action::Keep {
            flags: vec!["x".into()]
        }]
    );
    // variables and encoded-character change all strings: require only.
    assert_eq!(
        go("require [\"ihave\",\"fileinto\",\"variables\"]; if ihave \"variables\" { fileinto \"yes\"; } else { fileinto \"no\"; }"),
        vec![fi("no")]
    );
    // Unknown capability: the block is not validated and does not run.
    assert_eq!(
        go("require \"ihave\"; if ihave \"x-frobnicate\" { frobnicate :hard; } else { discard; }"),
        vec![Action::Discard]
    );
    let e = go_with("require \"ihave\";\nerror \"no way\";", MSG, &env(), &ctx()).unwrap_err();
    assert_eq!(e.to_string(), "line 2: error: no way");
    assert!(compile("if ihave \"fileinto\" {}", &Limits::default()).is_err());
    // Outside the block the capability is still not required.
    assert!(compile(
        "require \"ihave\"; if ihave \"fileinto\" {} fileinto \"x\";",
        &Limits::default()
    )
    .is_err());
}
