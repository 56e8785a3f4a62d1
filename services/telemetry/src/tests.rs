use super::*;
use prometheus::proto::{MetricFamily, MetricType};
use std::time::Duration;

/// The value of the series of `family` whose labels are exactly `labels` (a counter's or
/// gauge's value, a histogram's sample count), or `None` when there is no such series.
fn value(family: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let families: Vec<MetricFamily> = metrics().registry().gather();
    let f = families.iter().find(|f| f.name() == family)?;
    let kind = f.get_field_type();
    f.get_metric().iter().find_map(|m| {
        let ls = m.get_label();
        let same = ls.len() == labels.len()
            && labels
                .iter()
                .all(|(k, v)| ls.iter().any(|l| l.name() == *k && l.value() == *v));
        if !same {
            return None;
        }
        match kind {
            MetricType::COUNTER => Some(m.get_counter().get_value()),
            MetricType::GAUGE => Some(m.get_gauge().get_value()),
            MetricType::HISTOGRAM => Some(m.get_histogram().get_sample_count() as f64),
            _ => None,
        }
    })
}

#[test]
fn every_family_is_rendered_in_text_format() {
    let text = metrics().render().expect("render");
    for family in [
        "mailfleet_build_info",
        "mailfleet_connections_active",
        "mailfleet_connections_total",
        "mailfleet_connections_refused_total",
        "mailfleet_tls_handshakes_total",
        "mailfleet_commands_total",
        "mailfleet_command_duration_seconds",
        "mailfleet_smtp_messages_refused_total",
        "mailfleet_smtp_messages_accepted_total",
        "mailfleet_smtp_message_size_bytes",
        "mailfleet_smtp_delivery_duration_seconds",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} missing from:\n{text}"
        );
    }
    assert!(text.contains(&format!("mailfleet_build_info{{version=\"{VERSION}\"}} 1")));
    #[cfg(target_os = "linux")]
    for family in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} missing"
        );
    }
    assert_eq!(metrics().content_type(), "text/plain; version=0.0.4");
}

#[test]
fn command_names_come_from_the_table_only() {
    let t = &metrics().imap;
    assert_eq!(t.label(t.command("fetch")), "FETCH");
    assert_eq!(t.label(t.command("Uid")), "other");
    assert_eq!(t.label(t.command("X-ANYTHING-A-CLIENT-SENDS")), "other");
    assert_eq!(t.command("nonsense"), t.other());
    // A name a client makes up does not become a label value.
    let labels = [
        ("protocol", "imap"),
        ("command", "X-ANYTHING-A-CLIENT-SENDS"),
        ("result", "ok"),
    ];
    t.record(
        t.command("X-ANYTHING-A-CLIENT-SENDS"),
        ImapStatus::Ok,
        Duration::ZERO,
    );
    assert_eq!(value("mailfleet_commands_total", &labels), None);
}

#[test]
fn a_recorded_command_counts_once_under_its_name_and_result() {
    let t = &metrics().pop3;
    let retr_ok = [("protocol", "pop3"), ("command", "RETR"), ("result", "ok")];
    let retr_err = [("protocol", "pop3"), ("command", "RETR"), ("result", "err")];
    let hist = [("protocol", "pop3"), ("command", "RETR")];
    let before = (
        value("mailfleet_commands_total", &retr_ok).expect("pre-created"),
        value("mailfleet_commands_total", &retr_err).expect("pre-created"),
        value("mailfleet_command_duration_seconds", &hist).expect("pre-created"),
    );
    t.record(t.command("retr"), Pop3Status::Ok, Duration::from_millis(3));
    t.record(t.command("RETR"), Pop3Status::Ok, Duration::from_millis(3));
    t.record(t.command("RETR"), Pop3Status::Err, Duration::from_millis(1));
    assert_eq!(
        value("mailfleet_commands_total", &retr_ok),
        Some(before.0 + 2.0)
    );
    assert_eq!(
        value("mailfleet_commands_total", &retr_err),
        Some(before.1 + 1.0)
    );
    assert_eq!(
        value("mailfleet_command_duration_seconds", &hist),
        Some(before.2 + 3.0)
    );
}

#[test]
fn smtp_reply_codes_count_by_class() {
    assert_eq!(SmtpReplyClass::from_code(250), SmtpReplyClass::C2xx);
    assert_eq!(SmtpReplyClass::from_code(354), SmtpReplyClass::C3xx);
    assert_eq!(SmtpReplyClass::from_code(451), SmtpReplyClass::C4xx);
    assert_eq!(SmtpReplyClass::from_code(554), SmtpReplyClass::C5xx);
    assert_eq!(SmtpReplyClass::from_code(999), SmtpReplyClass::C5xx);
    let t = metrics().smtp_commands(true);
    let labels = [
        ("protocol", "submission"),
        ("command", "RCPT"),
        ("result", "4xx"),
    ];
    let before = value("mailfleet_commands_total", &labels).expect("pre-created");
    t.record(
        t.command("rcpt"),
        SmtpReplyClass::from_code(452),
        Duration::ZERO,
    );
    assert_eq!(
        value("mailfleet_commands_total", &labels),
        Some(before + 1.0)
    );
}

#[test]
fn an_open_connection_is_active_until_its_guard_drops() {
    // A protocol and listener no other test of this crate opens, so the gauge is ours.
    let l = metrics().listener(Protocol::Pop3, ListenerKind::ImplicitTls);
    let labels = [("protocol", "pop3"), ("listener", "implicit_tls")];
    let total = value("mailfleet_connections_total", &labels).expect("resolved");
    let g1 = l.opened();
    let g2 = l.opened();
    assert_eq!(value("mailfleet_connections_active", &labels), Some(2.0));
    drop(g1);
    assert_eq!(value("mailfleet_connections_active", &labels), Some(1.0));
    drop(g2);
    assert_eq!(value("mailfleet_connections_active", &labels), Some(0.0));
    assert_eq!(
        value("mailfleet_connections_total", &labels),
        Some(total + 2.0)
    );
    l.refused(RefuseReason::PerIp);
    let refused = [
        ("protocol", "pop3"),
        ("listener", "implicit_tls"),
        ("reason", "per_ip"),
    ];
    assert_eq!(
        value("mailfleet_connections_refused_total", &refused),
        Some(1.0)
    );
}

#[test]
fn tls_handshakes_count_by_version_and_result() {
    let ok13 = [
        ("protocol", "imap"),
        ("version", "TLSv1.3"),
        ("result", "success"),
    ];
    let timeout = [
        ("protocol", "imap"),
        ("version", "none"),
        ("result", "timeout"),
    ];
    let before = (
        value("mailfleet_tls_handshakes_total", &ok13).expect("pre-created"),
        value("mailfleet_tls_handshakes_total", &timeout).expect("pre-created"),
    );
    metrics().tls_handshake(Protocol::Imap, TlsOutcome::Tls13);
    metrics().tls_handshake(Protocol::Imap, TlsOutcome::TimedOut);
    metrics().tls_handshake(Protocol::Imap, TlsOutcome::TimedOut);
    assert_eq!(
        value("mailfleet_tls_handshakes_total", &ok13),
        Some(before.0 + 1.0)
    );
    assert_eq!(
        value("mailfleet_tls_handshakes_total", &timeout),
        Some(before.1 + 2.0)
    );
}

#[test]
fn logins_and_messages_count_under_static_labels() {
    let labels = [
        ("protocol", "imap"),
        ("mechanism", "plain"),
        ("result", "throttled"),
    ];
    let before = value("mailfleet_logins_total", &labels).unwrap_or(0.0);
    metrics().login(Protocol::Imap, Mechanism::Plain, LoginResult::Throttled);
    assert_eq!(value("mailfleet_logins_total", &labels), Some(before + 1.0));

    let m = metrics().messages(false);
    let acc = [("protocol", "smtp")];
    let before = value("mailfleet_smtp_messages_accepted_total", &acc).expect("pre-created");
    m.accepted(2048, Duration::from_millis(4));
    assert_eq!(
        value("mailfleet_smtp_messages_accepted_total", &acc),
        Some(before + 1.0)
    );
    let refused = [("protocol", "smtp"), ("reason", "quota")];
    let before = value("mailfleet_smtp_messages_refused_total", &refused).expect("pre-created");
    m.refused(MessageRefusal::Quota);
    assert_eq!(
        value("mailfleet_smtp_messages_refused_total", &refused),
        Some(before + 1.0)
    );
}
