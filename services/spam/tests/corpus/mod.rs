//! A deterministic, SYNTHETIC labelled mail corpus for evaluating the Bayes filter.
//!
//! No real labelled ham/spam corpus of useful size is available offline here (the Debian
//! spamassassin package ships one sample of each; the spambayes sdist ships none), so this
//! generates one. It is built to be hard enough to mean something:
//! - ham and spam draw a large share of their words from the same common-English pool;
//! - ham includes newsletters and account notifications that use spam-like words ("offer",
//!   "free", "verify", "account", "password", "unsubscribe");
//! - some spam is written in business vocabulary (invoices, SEO and "partnership" pitches), and
//!   some carries word salad taken from the ham pools (Bayes poisoning) and random
//!   hash-busting strings;
//! - names, domains, numbers and orders of phrases vary with a seeded RNG.
//!
//! The same seed always gives the same corpus, on every platform.

#![allow(dead_code)]

/// SplitMix64: tiny, fast and fully specified, so the corpus never changes under us.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    pub fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const COMMON: &[&str] = &[
    "the",
    "and",
    "for",
    "you",
    "your",
    "with",
    "this",
    "that",
    "have",
    "will",
    "from",
    "are",
    "our",
    "all",
    "can",
    "about",
    "more",
    "please",
    "time",
    "today",
    "new",
    "now",
    "just",
    "here",
    "know",
    "get",
    "like",
    "would",
    "make",
    "need",
    "also",
    "want",
    "any",
    "next",
    "week",
    "day",
    "first",
    "only",
    "help",
    "information",
    "email",
    "message",
    "thanks",
    "best",
    "see",
    "there",
    "some",
    "what",
    "when",
    "which",
    "their",
    "been",
    "other",
    "after",
    "back",
    "well",
    "good",
    "great",
    "look",
    "take",
    "work",
    "people",
    "year",
    "because",
    "into",
    "could",
    "them",
    "these",
    "than",
    "then",
    "way",
    "even",
    "most",
    "many",
    "very",
    "still",
    "over",
    "such",
    "here",
    "really",
    "send",
    "again",
    "find",
    "give",
    "sure",
    "let",
    "right",
    "keep",
    "number",
    "part",
    "place",
    "include",
    "below",
    "above",
    "link",
    "online",
    "website",
    "service",
    "team",
    "contact",
    "company",
    "business",
    "account",
    "free",
    "offer",
    "order",
    "price",
    "money",
    "details",
    "update",
    "important",
    "note",
];

const HAM_WORK: &[&str] = &[
    "meeting",
    "agenda",
    "project",
    "deadline",
    "quarterly",
    "report",
    "budget",
    "review",
    "draft",
    "proposal",
    "slides",
    "presentation",
    "schedule",
    "calendar",
    "conference",
    "client",
    "contract",
    "requirements",
    "milestone",
    "roadmap",
    "sprint",
    "standup",
    "feedback",
    "comments",
    "attached",
    "spreadsheet",
    "figures",
    "forecast",
    "revenue",
    "headcount",
    "hiring",
    "candidate",
    "interview",
    "onboarding",
    "office",
    "room",
    "minutes",
    "action",
    "items",
    "owner",
    "decision",
    "approval",
    "sign-off",
    "vendor",
    "procurement",
    "purchase",
    "invoice",
    "payment",
    "receipt",
    "expense",
    "travel",
    "flight",
    "hotel",
    "visit",
    "workshop",
    "training",
    "policy",
    "compliance",
    "audit",
    "legal",
    "department",
    "manager",
    "colleague",
    "colleagues",
    "discussed",
    "tomorrow",
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "afternoon",
    "morning",
    "call",
    "dial-in",
    "zoom",
    "teams",
    "reschedule",
    "postpone",
    "confirm",
    "availability",
];

const HAM_PERSONAL: &[&str] = &[
    "mom",
    "dad",
    "kids",
    "family",
    "weekend",
    "dinner",
    "lunch",
    "birthday",
    "party",
    "photos",
    "vacation",
    "holiday",
    "trip",
    "beach",
    "garden",
    "dog",
    "cat",
    "school",
    "homework",
    "soccer",
    "practice",
    "recipe",
    "cake",
    "restaurant",
    "movie",
    "concert",
    "tickets",
    "saturday",
    "sunday",
    "grandma",
    "wedding",
    "anniversary",
    "love",
    "miss",
    "hug",
    "visit",
    "drive",
    "pick",
    "airport",
    "house",
    "moving",
    "apartment",
    "neighbors",
    "doctor",
    "appointment",
    "feeling",
    "better",
    "hope",
    "fun",
    "laughed",
    "remember",
    "coffee",
    "catch",
    "soon",
    "cheers",
    "xoxo",
    "hiking",
    "camping",
    "bike",
    "book",
    "club",
];

const HAM_TECH: &[&str] = &[
    "patch",
    "commit",
    "branch",
    "merge",
    "rebase",
    "compile",
    "compiler",
    "build",
    "tests",
    "failing",
    "passing",
    "regression",
    "benchmark",
    "performance",
    "memory",
    "leak",
    "segfault",
    "kernel",
    "driver",
    "module",
    "crate",
    "library",
    "function",
    "struct",
    "trait",
    "async",
    "thread",
    "mutex",
    "deadlock",
    "release",
    "version",
    "changelog",
    "documentation",
    "bug",
    "issue",
    "tracker",
    "reproduce",
    "stack",
    "trace",
    "backtrace",
    "config",
    "option",
    "flag",
    "default",
    "upstream",
    "downstream",
    "maintainer",
    "review",
    "nit",
    "lgtm",
    "revert",
    "bisect",
    "linux",
    "debian",
    "package",
    "dependency",
    "api",
    "parser",
    "protocol",
    "server",
    "client",
    "socket",
    "timeout",
    "latency",
    "cache",
];

const HAM_NEWSLETTER: &[&str] = &[
    "newsletter",
    "edition",
    "monthly",
    "digest",
    "articles",
    "stories",
    "featured",
    "community",
    "events",
    "webinar",
    "register",
    "members",
    "subscription",
    "preferences",
    "unsubscribe",
    "offer",
    "members-only",
    "discount",
    "sale",
    "shipping",
    "free",
    "catalog",
    "season",
    "collection",
    "new",
    "arrivals",
    "store",
    "points",
    "rewards",
    "survey",
    "feedback",
    "podcast",
    "episode",
    "blog",
    "read",
    "more",
    "library",
    "museum",
    "exhibition",
    "volunteer",
    "donate",
    "charity",
    "local",
    "council",
    "announcement",
];

const HAM_NOTIFY: &[&str] = &[
    "your",
    "order",
    "shipped",
    "tracking",
    "delivery",
    "package",
    "estimated",
    "arrival",
    "password",
    "reset",
    "requested",
    "ignore",
    "didn't",
    "security",
    "sign-in",
    "device",
    "verify",
    "email",
    "address",
    "account",
    "statement",
    "available",
    "balance",
    "bill",
    "due",
    "autopay",
    "receipt",
    "subscription",
    "renewal",
    "renewed",
    "plan",
    "invoice",
    "confirmation",
    "booking",
    "reservation",
    "itinerary",
    "check-in",
    "appointment",
    "reminder",
    "calendar",
    "code",
    "two-factor",
    "settings",
    "support",
    "ticket",
];

const SPAM_OFFER: &[&str] = &[
    "free",
    "winner",
    "won",
    "prize",
    "claim",
    "limited",
    "exclusive",
    "offer",
    "deal",
    "discount",
    "save",
    "cheap",
    "lowest",
    "price",
    "guaranteed",
    "risk-free",
    "act",
    "now",
    "hurry",
    "expires",
    "bonus",
    "gift",
    "card",
    "voucher",
    "click",
    "here",
    "unsubscribe",
    "amazing",
    "incredible",
    "opportunity",
    "instant",
    "cash",
    "earn",
    "income",
    "home",
    "extra",
    "100%",
    "satisfaction",
    "order",
    "today",
    "buy",
    "special",
    "promotion",
    "selected",
    "congratulations",
    "reward",
    "luxury",
    "watches",
    "replica",
    "designer",
    "brands",
    "clearance",
    "100",
    "off",
    "shipping",
    "worldwide",
];

const SPAM_PHARMA: &[&str] = &[
    "viagra",
    "cialis",
    "pills",
    "pharmacy",
    "prescription",
    "meds",
    "medication",
    "canadian",
    "generic",
    "online",
    "discreet",
    "shipping",
    "weight",
    "loss",
    "diet",
    "lose",
    "pounds",
    "fast",
    "enhancement",
    "male",
    "performance",
    "doctor",
    "approved",
    "fda",
    "tablets",
    "dosage",
    "mg",
    "order",
    "cheap",
    "lowest",
    "no",
    "needed",
    "overnight",
    "v1agra",
    "c1alis",
    "herbal",
    "supplement",
    "miracle",
    "burn",
    "fat",
    "results",
    "guaranteed",
];

const SPAM_PHISH: &[&str] = &[
    "account",
    "suspended",
    "verify",
    "verification",
    "confirm",
    "identity",
    "unusual",
    "activity",
    "detected",
    "login",
    "log",
    "password",
    "expire",
    "expired",
    "immediately",
    "within",
    "hours",
    "failure",
    "permanently",
    "locked",
    "restore",
    "access",
    "secure",
    "security",
    "department",
    "bank",
    "paypal",
    "apple",
    "microsoft",
    "office365",
    "mailbox",
    "quota",
    "exceeded",
    "storage",
    "full",
    "update",
    "billing",
    "information",
    "payment",
    "declined",
    "click",
    "link",
    "below",
    "avoid",
    "termination",
    "dear",
    "customer",
    "user",
    "valued",
    "sincerely",
    "support",
    "team",
    "case",
    "id",
];

const SPAM_SCAM: &[&str] = &[
    "million",
    "dollars",
    "usd",
    "transfer",
    "fund",
    "funds",
    "beneficiary",
    "inheritance",
    "late",
    "client",
    "barrister",
    "attorney",
    "bank",
    "foreign",
    "partner",
    "confidential",
    "proposal",
    "percent",
    "share",
    "urgent",
    "reply",
    "assistance",
    "nigeria",
    "deposit",
    "consignment",
    "diplomat",
    "lottery",
    "international",
    "draw",
    "ticket",
    "winning",
    "claims",
    "agent",
    "processing",
    "fee",
    "crypto",
    "bitcoin",
    "investment",
    "returns",
    "profit",
    "trading",
    "platform",
    "guaranteed",
    "daily",
    "wallet",
    "double",
];

const SPAM_BIZ: &[&str] = &[
    "seo",
    "ranking",
    "google",
    "first",
    "page",
    "website",
    "traffic",
    "leads",
    "marketing",
    "services",
    "agency",
    "affordable",
    "packages",
    "design",
    "redesign",
    "app",
    "development",
    "outsourcing",
    "team",
    "offshore",
    "quote",
    "proposal",
    "invoice",
    "overdue",
    "payment",
    "attached",
    "document",
    "shared",
    "view",
    "download",
    "partnership",
    "collaboration",
    "guest",
    "post",
    "backlinks",
    "domain",
    "authority",
    "boost",
    "sales",
    "roi",
    "database",
    "contacts",
    "b2b",
    "email",
    "list",
    "verified",
];

const FIRST: &[&str] = &[
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory",
    "niaj", "olivia", "peggy", "rupert", "sybil", "trent", "victor", "walter", "yvonne", "zoe",
    "maria", "james", "li", "wei", "fatima", "omar", "priya", "raj", "sofia",
];
const LAST: &[&str] = &[
    "smith", "jones", "garcia", "miller", "davis", "martin", "lee", "walker", "hall", "young",
    "king", "wright", "lopez", "hill", "scott", "green", "adams", "baker", "nelson", "carter",
];
const HAM_DOMAINS: &[&str] = &[
    "example.com",
    "example.org",
    "corp.example",
    "mail.example.net",
    "university.example",
    "lists.example.org",
    "family.example",
    "shop.example",
    "bank.example",
    "news.example",
];
const SPAM_DOMAINS: &[&str] = &[
    "deals-4u.example",
    "pharma-direct.example",
    "secure-verify.example",
    "win-now.example",
    "cheap-meds.example",
    "account-alert.example",
    "biz-growth.example",
    "crypto-gain.example",
    "example.com",
    "mail.example.net",
];

#[derive(Debug, Clone)]
pub struct Sample {
    pub spam: bool,
    pub raw: String,
}

fn name(rng: &mut Rng) -> (String, String) {
    let f = rng.pick(FIRST);
    let l = rng.pick(LAST);
    (
        format!(
            "{}{} {}{}",
            &f[..1].to_uppercase(),
            &f[1..],
            &l[..1].to_uppercase(),
            &l[1..]
        ),
        format!("{f}.{l}"),
    )
}

const POOLS: &[&[&str]] = &[
    HAM_WORK,
    HAM_PERSONAL,
    HAM_TECH,
    HAM_NEWSLETTER,
    HAM_NOTIFY,
    SPAM_OFFER,
    SPAM_PHARMA,
    SPAM_PHISH,
    SPAM_SCAM,
    SPAM_BIZ,
];

/// `n` words: `topic_share` percent topical, the rest common English. Of the topical words,
/// 30% come from a second pool picked at random per message from all ten pools, ham and spam
/// alike, so every message carries some of the other class's vocabulary.
fn words(rng: &mut Rng, topic: &[&str], n: usize, topic_share: u64) -> Vec<String> {
    let alt = POOLS[rng.below(POOLS.len())];
    (0..n)
        .map(|_| {
            if rng.chance(topic_share) {
                if rng.chance(30) {
                    rng.pick(alt).to_string()
                } else {
                    rng.pick(topic).to_string()
                }
            } else {
                rng.pick(COMMON).to_string()
            }
        })
        .collect()
}

fn sentences(rng: &mut Rng, w: Vec<String>) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < w.len() {
        let len = rng.range(5, 14).min(w.len() - i);
        let mut s = w[i..i + len].join(" ");
        if let Some(first) = s.get(..1) {
            s = first.to_uppercase() + &s[1..];
        }
        out.push_str(&s);
        out.push_str(if rng.chance(10) { "! " } else { ". " });
        if rng.chance(20) {
            out.push_str("\r\n\r\n");
        }
        i += len;
    }
    out
}

fn random_subject(rng: &mut Rng, topic: &[&str]) -> String {
    let n = rng.range(2, 6);
    let w: Vec<&str> = (0..n)
        .map(|_| {
            if rng.chance(50) {
                rng.pick(topic)
            } else {
                rng.pick(COMMON)
            }
        })
        .collect();
    let s = w.join(" ");
    s[..1].to_uppercase() + &s[1..]
}

fn junk_string(rng: &mut Rng) -> String {
    let len = rng.range(5, 12);
    (0..len)
        .map(|_| (b'a' + rng.below(26) as u8) as char)
        .collect()
}

fn message(
    rng: &mut Rng,
    from_domain: &str,
    subject: &str,
    body: &str,
    extra_headers: &str,
    html: bool,
    n: usize,
) -> String {
    let (display, local) = name(rng);
    let (_, to_local) = name(rng);
    let to_domain = rng.pick(&["example.org", "example.com", "corp.example"]);
    let day = rng.range(1, 28);
    let hour = rng.range(0, 23);
    let mut raw = format!(
        "From: {display} <{local}@{from_domain}>\r\nTo: {to_local}@{to_domain}\r\nSubject: {subject}\r\nDate: Tue, {day} Nov 2026 {hour:02}:{:02}:00 +0000\r\nMessage-ID: <{n}.{}@{from_domain}>\r\nMIME-Version: 1.0\r\n{extra_headers}",
        rng.below(60),
        rng.next_u64() % 1_000_000
    );
    if html {
        let paragraphs: Vec<String> = body
            .split("\r\n\r\n")
            .map(|p| format!("<p>{p}</p>"))
            .collect();
        raw.push_str(&format!(
            "Content-Type: text/html; charset=utf-8\r\n\r\n<html><body>{}</body></html>\r\n",
            paragraphs.join("\r\n")
        ));
    } else {
        raw.push_str("Content-Type: text/plain; charset=utf-8\r\n\r\n");
        raw.push_str(body);
        raw.push_str("\r\n");
    }
    raw
}

fn ham(rng: &mut Rng, n: usize) -> String {
    let kind = rng.below(100);
    let (topic, share, subjects, domain, html, extra): (&[&str], u64, &[&str], &str, bool, String) = match kind {
        0..=29 => (HAM_WORK, 30, &["Re: project update", "Agenda for Thursday", "Budget review", "Q3 report draft", "Re: contract comments", "Meeting notes", "Fwd: travel plans", "Invoice from vendor"], rng.pick(&["corp.example", "example.com", "example.org"]), false, String::new()),
        30..=49 => (HAM_PERSONAL, 30, &["Dinner on Saturday?", "Photos from the trip", "Re: birthday party", "Hi!", "Weekend plans", "Re: re: kids soccer", "Miss you", "Recipe you asked for"], rng.pick(&["family.example", "mail.example.net", "example.com"]), false, String::new()),
        50..=69 => (HAM_TECH, 30, &["[PATCH] fix parser regression", "Re: build failing on debian", "Release 1.4 changelog", "Re: deadlock in async runtime", "[dev] benchmark results", "Question about the config option"], "lists.example.org", false, "List-Id: <dev.lists.example.org>\r\nList-Unsubscribe: <mailto:leave@lists.example.org>\r\n".to_string()),
        70..=84 => (HAM_NEWSLETTER, 30, &["Our monthly newsletter", "This week's digest", "New arrivals and a members-only offer", "Free shipping this weekend", "Upcoming events", "Your rewards points"], rng.pick(&["news.example", "shop.example"]), rng.chance(60), "List-Unsubscribe: <https://news.example/unsub>\r\n".to_string()),
        _ => (HAM_NOTIFY, 30, &["Your order has shipped", "Password reset requested", "Your statement is available", "Verify your email address", "Booking confirmation", "Appointment reminder", "New sign-in to your account"], rng.pick(&["shop.example", "bank.example", "example.com"]), rng.chance(50), String::new()),
    };
    let subject = if rng.chance(50) {
        rng.pick(subjects).to_string()
    } else {
        random_subject(rng, topic)
    };
    let n_words = rng.range(25, 160);
    let w = words(rng, topic, n_words, share);
    let mut body = sentences(rng, w);
    if subject.starts_with("Re:") && rng.chance(70) {
        let w = words(rng, topic, 30, share);
        let quoted = sentences(rng, w);
        body.push_str("\r\n\r\nOn Monday someone wrote:\r\n> ");
        body.push_str(&quoted.replace("\r\n", "\r\n> "));
    }
    // Hard ham: a colleague forwards a phishing or scam sample as a warning.
    if kind < 30 && rng.chance(15) {
        let pool = [SPAM_PHISH, SPAM_SCAM, SPAM_OFFER][rng.below(3)];
        let w = words(rng, pool, 40, 50);
        let sample = sentences(rng, w);
        body.push_str("\r\n\r\nHeads up, we received this; do not click anything:\r\n> ");
        body.push_str(&sample.replace("\r\n", "\r\n> "));
    }
    if rng.chance(50) {
        let (display, _) = name(rng);
        body.push_str(&format!(
            "\r\n\r\n{}\r\n{display}",
            rng.pick(&["Thanks,", "Best,", "Cheers,", "Regards,"])
        ));
    }
    if kind >= 70 {
        body.push_str(&format!(
            "\r\n\r\nRead more: https://{domain}/{}",
            junk_string(rng)
        ));
    }
    message(rng, domain, &subject, &body, &extra, html, n)
}

fn spam(rng: &mut Rng, n: usize) -> String {
    let kind = rng.below(100);
    let (topic, share, subjects): (&[&str], u64, &[&str]) = match kind {
        0..=24 => (
            SPAM_OFFER,
            25,
            &[
                "You have been selected!",
                "Exclusive offer just for you",
                "Limited time: 80% off",
                "Claim your free gift card",
                "Congratulations winner",
                "Replica watches at lowest price",
            ],
        ),
        25..=44 => (
            SPAM_PHARMA,
            25,
            &[
                "Cheap meds online",
                "Lose 20 pounds fast",
                "Discreet pharmacy shipping",
                "Best prices on pills",
                "Doctor approved formula",
            ],
        ),
        45..=64 => (
            SPAM_PHISH,
            25,
            &[
                "Your account has been suspended",
                "Unusual sign-in activity detected",
                "Verify your account within 24 hours",
                "Mailbox quota exceeded",
                "Payment declined: update billing",
                "Security alert",
            ],
        ),
        65..=79 => (
            SPAM_SCAM,
            25,
            &[
                "Urgent business proposal",
                "Confidential: fund transfer",
                "You won the international lottery",
                "Double your bitcoin",
                "Inheritance claim",
            ],
        ),
        _ => (
            SPAM_BIZ,
            25,
            &[
                "Quick question about your website",
                "Get on the first page of Google",
                "Partnership proposal",
                "Invoice overdue",
                "Document shared with you",
                "Verified B2B contact list",
            ],
        ),
    };
    let mut subject = if rng.chance(50) {
        rng.pick(subjects).to_string()
    } else {
        random_subject(rng, topic)
    };
    if rng.chance(15) {
        subject = subject.to_uppercase();
    }
    let n_words = rng.range(20, 120);
    let w = words(rng, topic, n_words, share);
    let mut body = sentences(rng, w);
    // Bayes poisoning: word salad from a ham pool.
    if rng.chance(25) {
        let pool = [HAM_WORK, HAM_PERSONAL, HAM_TECH, HAM_NEWSLETTER][rng.below(4)];
        let salad: Vec<String> = (0..rng.range(15, 60))
            .map(|_| rng.pick(pool).to_string())
            .collect();
        body.push_str("\r\n\r\n");
        body.push_str(&salad.join(" "));
    }
    // Hash busters.
    for _ in 0..rng.below(6) {
        body.push(' ');
        body.push_str(&junk_string(rng));
    }
    let domain = rng.pick(SPAM_DOMAINS);
    let url_host = if rng.chance(15) {
        format!(
            "{}.{}.{}.{}",
            rng.range(1, 223),
            rng.below(256),
            rng.below(256),
            rng.range(1, 254)
        )
    } else {
        rng.pick(SPAM_DOMAINS).to_string()
    };
    body.push_str(&format!("\r\n\r\nhttps://{url_host}/{}", junk_string(rng)));
    if rng.chance(40) {
        body.push_str("\r\n\r\nTo unsubscribe click here.");
    }
    let html = rng.chance(55);
    message(rng, domain, &subject, &body, "", html, n)
}

/// `n_ham` ham and `n_spam` spam messages, interleaved in a seeded random order.
pub fn generate(seed: u64, n_ham: usize, n_spam: usize) -> Vec<Sample> {
    let mut rng = Rng::new(seed);
    let mut out: Vec<Sample> = Vec::with_capacity(n_ham + n_spam);
    for i in 0..n_ham {
        out.push(Sample {
            spam: false,
            raw: ham(&mut rng, i),
        });
    }
    for i in 0..n_spam {
        out.push(Sample {
            spam: true,
            raw: spam(&mut rng, n_ham + i),
        });
    }
    // Fisher–Yates with the same RNG.
    for i in (1..out.len()).rev() {
        let j = rng.below(i + 1);
        out.swap(i, j);
    }
    out
}
