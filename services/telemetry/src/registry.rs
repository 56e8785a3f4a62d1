//! The registry and the families in it. See the crate documentation for why it is global.

use crate::commands::{
    CommandTable, ImapStatus, Pop3Status, SmtpReplyClass, IMAP_COMMANDS, LATENCY_BUCKETS,
    POP3_COMMANDS, SMTP_COMMANDS,
};
use crate::labels::{
    DeliveryResult, DeliveryTls, ListenerKind, LoginResult, Mechanism, MessageRefusal, Protocol,
    RateLimit, RefuseReason, TlsOutcome,
};
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};
use std::sync::LazyLock;
use std::time::Duration;

/// The version reported by `mailfleet_build_info`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Message sizes, in bytes: 1 KiB to 64 MiB in steps of four.
const SIZE_BUCKETS: &[f64] = &[
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
];

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    // The definitions are constants of this crate: a failure is a bug in them, which the
    // unit tests catch, not a runtime condition.
    Metrics::new().expect("metric definitions are valid")
});

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// Every family, and the pre-resolved handles of the hot paths.
pub struct Metrics {
    registry: Registry,
    connections_active: IntGaugeVec,
    connections_total: IntCounterVec,
    connections_refused: IntCounterVec,
    /// `[protocol][outcome]`, in [`Protocol::ALL`] and [`TlsOutcome::ALL`] order.
    tls_handshakes: Vec<Vec<IntCounter>>,
    logins: IntCounterVec,
    /// IMAP commands by name and tagged status.
    pub imap: CommandTable<ImapStatus>,
    /// SMTP commands (inbound and submission) by verb and reply class.
    pub smtp: CommandTable<SmtpReplyClass>,
    pub submission: CommandTable<SmtpReplyClass>,
    /// POP3 commands by name and status.
    pub pop3: CommandTable<Pop3Status>,
    smtp_messages: SmtpMessageMetrics,
    submission_messages: SmtpMessageMetrics,
    /// Outbound delivery attempts by result and TLS mode.
    delivery_attempts: IntCounterVec,
    dsns: IntCounterVec,
    rate_limits: IntCounterVec,
    /// Storage calls by backend and operation (see [`crate::StorageOp`]).
    pub storage: crate::storage::StorageMetrics,
    /// Outbound queue depth and age by state, set when scraped.
    queue_messages: IntGaugeVec,
    queue_oldest: IntGaugeVec,
    certificate_expiry: IntGaugeVec,
    ready: IntGauge,
    /// Run before each render; a hook returning `false` is done (its owner is gone).
    scrape_hooks: std::sync::Mutex<Vec<ScrapeHook>>,
}

/// Brings a gauge up to date when the registry is rendered (see [`Metrics::on_scrape`]).
pub type ScrapeHook = Box<dyn Fn() -> bool + Send + Sync>;

fn counter_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let v = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(v.clone()))?;
    Ok(v)
}

fn gauge_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntGaugeVec> {
    let v = IntGaugeVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(v.clone()))?;
    Ok(v)
}

fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> prometheus::Result<HistogramVec> {
    let v = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )?;
    r.register(Box::new(v.clone()))?;
    Ok(v)
}

impl Metrics {
    fn new() -> prometheus::Result<Self> {
        let r = Registry::new();
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let build = IntGaugeVec::new(
            Opts::new(
                "mailfleet_build_info",
                "Always 1; the labels say which build is running.",
            ),
            &["version"],
        )?;
        r.register(Box::new(build.clone()))?;
        build.with_label_values(&[VERSION]).set(1);

        let connections_active = IntGaugeVec::new(
            Opts::new(
                "mailfleet_connections_active",
                "Client connections open now.",
            ),
            &["protocol", "listener"],
        )?;
        r.register(Box::new(connections_active.clone()))?;
        let connections_total = counter_vec(
            &r,
            "mailfleet_connections_total",
            "Client connections accepted (refused ones are not counted here).",
            &["protocol", "listener"],
        )?;
        let connections_refused = counter_vec(
            &r,
            "mailfleet_connections_refused_total",
            "Client connections closed at accept time because of a limit.",
            &["protocol", "listener", "reason"],
        )?;
        // Every protocol and listener kind at zero: a dashboard shows an unused listener
        // as zero connections, not as no data.
        for p in Protocol::ALL {
            for k in [ListenerKind::Plain, ListenerKind::ImplicitTls] {
                let labels = [p.as_str(), k.as_str()];
                connections_active.with_label_values(&labels);
                connections_total.with_label_values(&labels);
                for reason in [RefuseReason::MaxConnections, RefuseReason::PerIp] {
                    connections_refused.with_label_values(&[labels[0], labels[1], reason.as_str()]);
                }
            }
        }
        let tls = counter_vec(
            &r,
            "mailfleet_tls_handshakes_total",
            "Server-side TLS handshakes (implicit TLS and STARTTLS) by negotiated version and result.",
            &["protocol", "version", "result"],
        )?;
        let tls_handshakes = Protocol::ALL
            .iter()
            .map(|p| {
                TlsOutcome::ALL
                    .iter()
                    .map(|o| {
                        let (version, result) = o.labels();
                        tls.with_label_values(&[p.as_str(), version, result])
                    })
                    .collect()
            })
            .collect();
        let commands = counter_vec(
            &r,
            "mailfleet_commands_total",
            "Commands completed, by protocol, command name (unknown names: other) and result.",
            &["protocol", "command", "result"],
        )?;
        let durations = histogram_vec(
            &r,
            "mailfleet_command_duration_seconds",
            "Time from a command's arrival to its final reply.",
            &["protocol", "command"],
            LATENCY_BUCKETS,
        )?;
        let logins = counter_vec(
            &r,
            "mailfleet_logins_total",
            "Login attempts by protocol, mechanism and result.",
            &["protocol", "mechanism", "result"],
        )?;
        let accepted = counter_vec(
            &r,
            "mailfleet_smtp_messages_accepted_total",
            "Messages accepted (stored or queued) at the end of DATA or the last BDAT.",
            &["protocol"],
        )?;
        let refused = counter_vec(
            &r,
            "mailfleet_smtp_messages_refused_total",
            "Complete messages refused, by reason.",
            &["protocol", "reason"],
        )?;
        let sizes = histogram_vec(
            &r,
            "mailfleet_smtp_message_size_bytes",
            "Size of each accepted message as received (its sum is the bytes accepted).",
            &["protocol"],
            SIZE_BUCKETS,
        )?;
        let durable = histogram_vec(
            &r,
            "mailfleet_smtp_delivery_duration_seconds",
            "Time from the end of DATA (or the last BDAT) to the message being durable (stored or queued), for accepted messages.",
            &["protocol"],
            LATENCY_BUCKETS,
        )?;
        let delivery_attempts = counter_vec(
            &r,
            "mailfleet_delivery_attempts_total",
            "Outbound delivery attempts, one per message and destination, by result and TLS mode.",
            &["result", "tls"],
        )?;
        let dsns = counter_vec(
            &r,
            "mailfleet_dsns_sent_total",
            "Delivery status notifications generated, by action (failed, delayed).",
            &["action"],
        )?;
        let rate_limits = counter_vec(
            &r,
            "mailfleet_rate_limit_hits_total",
            "Requests refused or postponed by a rate or concurrency limit, by limit.",
            &["limit"],
        )?;
        for l in RateLimit::ALL {
            rate_limits.with_label_values(&[l.as_str()]);
        }
        for result in [
            DeliveryResult::Delivered,
            DeliveryResult::Deferred,
            DeliveryResult::Bounced,
        ] {
            for tls in [
                DeliveryTls::None,
                DeliveryTls::Opportunistic,
                DeliveryTls::MtaSts,
                DeliveryTls::Dane,
            ] {
                delivery_attempts.with_label_values(&[result.as_str(), tls.as_str()]);
            }
        }
        for action in ["failed", "delayed"] {
            dsns.with_label_values(&[action]);
        }
        for p in Protocol::ALL {
            for m in Mechanism::ALL {
                if p.offers(m) {
                    for res in LoginResult::ALL {
                        logins.with_label_values(&[p.as_str(), m.as_str(), res.as_str()]);
                    }
                }
            }
        }
        let queue_messages = gauge_vec(
            &r,
            "mailfleet_queue_messages",
            "Outbound queue entries with a recipient still to deliver, by state: due (its next attempt is now or past) or deferred (waiting for a retry). The whole cluster's queue: every node reports the same value.",
            &["state"],
        )?;
        let queue_oldest = gauge_vec(
            &r,
            "mailfleet_queue_oldest_age_seconds",
            "Age of the oldest outbound queue entry in each state (0 when there is none).",
            &["state"],
        )?;
        for state in ["due", "deferred"] {
            queue_messages.with_label_values(&[state]);
            queue_oldest.with_label_values(&[state]);
        }
        let certificate_expiry = gauge_vec(
            &r,
            "mailfleet_tls_certificate_expiry_timestamp_seconds",
            "When each server certificate loaded now expires (its notAfter, Unix seconds).",
            &["certificate"],
        )?;
        let ready = IntGauge::new(
            "mailfleet_ready",
            "1 when this node's stores answer (the /readyz check, run at each scrape), else 0.",
        )?;
        r.register(Box::new(ready.clone()))?;
        let storage = crate::storage::StorageMetrics::new(&r)?;
        let smtp_messages =
            SmtpMessageMetrics::new(Protocol::Smtp, &accepted, &refused, &sizes, &durable);
        let submission_messages =
            SmtpMessageMetrics::new(Protocol::Submission, &accepted, &refused, &sizes, &durable);
        Ok(Self {
            imap: CommandTable::new("imap", IMAP_COMMANDS, &commands, &durations),
            smtp: CommandTable::new("smtp", SMTP_COMMANDS, &commands, &durations),
            submission: CommandTable::new("submission", SMTP_COMMANDS, &commands, &durations),
            pop3: CommandTable::new("pop3", POP3_COMMANDS, &commands, &durations),
            registry: r,
            connections_active,
            connections_total,
            connections_refused,
            tls_handshakes,
            logins,
            smtp_messages,
            submission_messages,
            delivery_attempts,
            dsns,
            rate_limits,
            storage,
            queue_messages,
            queue_oldest,
            certificate_expiry,
            ready,
            scrape_hooks: std::sync::Mutex::default(),
        })
    }

    /// The registry, for rendering (`GET /metrics`).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Every family in the Prometheus text exposition format (version 0.0.4), after the
    /// scrape hooks have brought their gauges up to date.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        self.storage.reset_leases_held();
        self.scrape_hooks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|hook| hook());
        prometheus::TextEncoder::new().encode_to_string(&self.registry.gather())
    }

    /// Registers `hook` to run before each render, for a gauge whose value is cheaper to
    /// compute when asked than to keep up to date (the leases a coordinator holds). The
    /// hook returns `false` once its owner is gone, and is then dropped.
    pub fn on_scrape(&self, hook: ScrapeHook) {
        self.scrape_hooks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(hook);
    }

    /// The `Content-Type` of [`Self::render`]'s output.
    pub fn content_type(&self) -> &'static str {
        prometheus::TEXT_FORMAT
    }

    /// The handles of one listener, resolved once when it starts.
    pub fn listener(&self, protocol: Protocol, kind: ListenerKind) -> ListenerMetrics {
        let labels = [protocol.as_str(), kind.as_str()];
        let refused = |reason: RefuseReason| {
            self.connections_refused
                .with_label_values(&[labels[0], labels[1], reason.as_str()])
        };
        ListenerMetrics {
            protocol,
            active: self.connections_active.with_label_values(&labels),
            total: self.connections_total.with_label_values(&labels),
            refused_max: refused(RefuseReason::MaxConnections),
            refused_per_ip: refused(RefuseReason::PerIp),
        }
    }

    /// Counts one TLS handshake.
    pub fn tls_handshake(&self, protocol: Protocol, outcome: TlsOutcome) {
        let i = TlsOutcome::ALL.iter().position(|o| *o == outcome);
        if let Some(c) = i.and_then(|i| self.tls_handshakes.get(protocol.index())?.get(i)) {
            c.inc();
        }
    }

    /// Counts one login attempt. Logins are rare next to commands (and each costs an
    /// argon2id run), so the label lookup here is a hash of three static strings.
    pub fn login(&self, protocol: Protocol, mechanism: Mechanism, result: LoginResult) {
        self.logins
            .with_label_values(&[protocol.as_str(), mechanism.as_str(), result.as_str()])
            .inc();
    }

    /// The message counters of the SMTP or submission listeners.
    pub fn messages(&self, submission: bool) -> &SmtpMessageMetrics {
        if submission {
            &self.submission_messages
        } else {
            &self.smtp_messages
        }
    }

    /// The command table of SMTP or submission.
    pub fn smtp_commands(&self, submission: bool) -> &CommandTable<SmtpReplyClass> {
        if submission {
            &self.submission
        } else {
            &self.smtp
        }
    }

    /// Counts one outbound delivery attempt.
    pub fn delivery_attempt(&self, result: crate::DeliveryResult, tls: crate::DeliveryTls) {
        self.delivery_attempts
            .with_label_values(&[result.as_str(), tls.as_str()])
            .inc();
    }

    /// Counts a request refused or postponed by `limit`.
    pub fn rate_limit_hit(&self, limit: RateLimit) {
        self.rate_limits.with_label_values(&[limit.as_str()]).inc();
    }

    /// Sets the outbound queue gauges of one state (`due` or `deferred`).
    pub fn set_queue(&self, state: &'static str, messages: u64, oldest_age: Duration) {
        self.queue_messages
            .with_label_values(&[state])
            .set(i64::try_from(messages).unwrap_or(i64::MAX));
        self.queue_oldest
            .with_label_values(&[state])
            .set(i64::try_from(oldest_age.as_secs()).unwrap_or(i64::MAX));
    }

    /// Replaces the certificate expiry series with `certs` (label, notAfter in Unix
    /// seconds): a reloaded certificate set leaves no stale series behind.
    pub fn set_certificates(&self, certs: &[(String, i64)]) {
        self.certificate_expiry.reset();
        for (name, not_after) in certs {
            self.certificate_expiry
                .with_label_values(&[name.as_str()])
                .set(*not_after);
        }
    }

    /// Sets `mailfleet_ready`.
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// Counts one DSN generated (`action`: `failed` or `delayed`, RFC 3464).
    pub fn dsn_sent(&self, delayed: bool) {
        let action = if delayed { "delayed" } else { "failed" };
        self.dsns.with_label_values(&[action]).inc();
    }
}

/// One listener's connection series.
#[derive(Clone, Debug)]
pub struct ListenerMetrics {
    protocol: Protocol,
    active: IntGauge,
    total: IntCounter,
    refused_max: IntCounter,
    refused_per_ip: IntCounter,
}

impl ListenerMetrics {
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Counts an accepted connection; it stays in `mailfleet_connections_active` until the
    /// guard drops.
    pub fn opened(&self) -> ConnectionGuard {
        self.total.inc();
        self.active.inc();
        ConnectionGuard {
            active: self.active.clone(),
        }
    }

    /// Counts a connection closed at accept time.
    pub fn refused(&self, reason: RefuseReason) {
        match reason {
            RefuseReason::MaxConnections => self.refused_max.inc(),
            RefuseReason::PerIp => self.refused_per_ip.inc(),
        }
    }
}

/// An open connection in `mailfleet_connections_active`.
#[derive(Debug)]
pub struct ConnectionGuard {
    active: IntGauge,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.active.dec();
    }
}

/// The message series of the SMTP or the submission listeners.
pub struct SmtpMessageMetrics {
    protocol: &'static str,
    accepted: IntCounter,
    refused: IntCounterVec,
    size: Histogram,
    durable: Histogram,
}

impl SmtpMessageMetrics {
    fn new(
        protocol: Protocol,
        accepted: &IntCounterVec,
        refused: &IntCounterVec,
        size: &HistogramVec,
        durable: &HistogramVec,
    ) -> Self {
        let p = protocol.as_str();
        // Every reason exists from the start, so `rate()` and `increase()` see a zero.
        for reason in [
            MessageRefusal::TooBig,
            MessageRefusal::Loop,
            MessageRefusal::Quota,
            MessageRefusal::MalformedHeader,
            MessageRefusal::SenderNotOwned,
            MessageRefusal::SenderAuthentication,
            MessageRefusal::Content,
            MessageRefusal::NoMemory,
            MessageRefusal::TemporaryFailure,
        ] {
            refused.with_label_values(&[p, reason.as_str()]);
        }
        Self {
            protocol: p,
            accepted: accepted.with_label_values(&[p]),
            refused: refused.clone(),
            size: size.with_label_values(&[p]),
            durable: durable.with_label_values(&[p]),
        }
    }

    /// Counts an accepted message of `bytes` that took `to_durable` from the end of its
    /// data to being stored or queued.
    pub fn accepted(&self, bytes: usize, to_durable: Duration) {
        self.accepted.inc();
        self.size.observe(bytes as f64);
        self.durable.observe(to_durable.as_secs_f64());
    }

    /// Counts a refused message.
    pub fn refused(&self, reason: MessageRefusal) {
        self.refused
            .with_label_values(&[self.protocol, reason.as_str()])
            .inc();
    }
}
