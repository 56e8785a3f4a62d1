//! `mailfleet serve`: open the stores, set up TLS, bind every listener, run until a signal.

use anyhow::Context;
use mailfleet_core::config::Config;
use mailfleet_core::shutdown::ShutdownController;
use mailfleet_core::tls::{self, CertSource, ReloadingResolver};
use mailfleet_smtp::inbound::{ConnLimits, Listener, ListenerKind, SessionConfig};
use mailfleet_smtp::pipeline::Pipeline;
use mailfleet_storage::Stores;
use std::sync::Arc;
use std::time::Duration;

/// How often unreferenced blobs are swept, and how long they must have been unreferenced.
const BLOB_GC_EVERY: Duration = Duration::from_secs(600);
/// Most blobs one sweep lists; the next sweep goes on where it stopped.
const BLOB_GC_MAX_PER_RUN: usize = 1_000_000;
const BLOB_GC_GRACE_SECS: i64 = 24 * 3600;

pub async fn open_stores(config: &Config) -> anyhow::Result<Stores> {
    let s = &config.storage;
    mailfleet_storage::open::open(s, &config.server.data_dir)
        .await
        .with_context(|| {
            format!(
                "opening storage (metadata: {:?}, blobs: {:?}, coordination: {:?}; data dir {})",
                s.metadata,
                s.blobs,
                s.coordination,
                config.server.data_dir.display()
            )
        })
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    // A cluster's front-ends sit behind one name and one load balancer: a client that
    // pinned or verified the certificate of one must see the same on every other, so a
    // certificate generated per pod would break clients at the first reconnection.
    if config.storage.is_cluster() && (config.tls.cert.is_none() || config.tls.key.is_none()) {
        anyhow::bail!(
            "cluster mode (S3 blobs + Redis coordination) needs one certificate shared by every \
             front-end: set `tls.cert` and `tls.key` (MAILFLEET_TLS__CERT / MAILFLEET_TLS__KEY), \
             for example a Kubernetes Secret mounted on each pod; a self-signed certificate per \
             pod is only generated in embedded mode"
        );
    }
    let stores = open_stores(&config).await?;
    // A burst of deliveries overflows the full-text queue into a catch-up that re-reads
    // the bodies afterwards, instead of slowing every delivery to the index's pace.
    stores
        .indexer
        .set_extractor(std::sync::Arc::new(|bytes: &[u8]| {
            let ix = mailfleet_mime::search_text::index_pieces(bytes);
            mailfleet_storage::MessageText::from_pairs(ix.pieces, ix.complete)
        }));
    let (controller, shutdown) = ShutdownController::new();

    let cert = CertSource::resolve(
        config.tls.cert.as_deref(),
        config.tls.key.as_deref(),
        &config.server.hostname,
        &config.server.data_dir.join("tls"),
    )
    .context("TLS certificate (configuration keys `tls.cert`, `tls.key`)")?;
    let resolver = ReloadingResolver::new(cert).context("loading the TLS certificate")?;
    let acceptor = tokio_rustls_acceptor(tls::server_config(resolver.clone(), &[])?);
    tokio::spawn(resolver.clone().watch(
        Duration::from_secs(config.tls.reload_interval_secs),
        shutdown.clone(),
    ));

    let smtp = &config.smtp;
    let session = Arc::new(SessionConfig {
        hostname: config.server.hostname.clone(),
        max_message_size: smtp.max_message_size,
        max_recipients: smtp.max_recipients,
        max_errors: smtp.max_errors,
        max_messages: smtp.max_messages_per_session,
        max_messages_per_ip_per_minute: smtp.max_messages_per_ip_per_minute,
        starttls: smtp.starttls,
    });
    let limits = ConnLimits {
        max_line: smtp.max_line_length,
        max_message_size: smtp.max_message_size,
        command_timeout: Duration::from_secs(smtp.command_timeout_secs),
        data_timeout: Duration::from_secs(smtp.data_timeout_secs),
        data_deadline: Duration::from_secs(smtp.data_deadline_secs),
        tls_handshake_timeout: Duration::from_secs(30),
    };
    // One budget for the message bytes of every SMTP session of the process: the
    // pipeline is cloned into the inbound and the submission listeners, and the clones
    // share it (`smtp.max_inflight_bytes`).
    let mut pipeline = Pipeline::new(stores.clone(), config.server.hostname.clone())
        .with_inflight_budget(mailfleet_core::budget::ByteBudget::new(
            smtp.max_inflight_bytes,
        ));
    let mut dns = None;
    let mut authenticator_dns = None;
    let dmarc_reports = config.reports.dmarc_enabled.then(|| {
        Arc::new(mailfleet_reports::DmarcCollector::new(
            config.reports.max_rows,
        ))
    });
    if smtp.authentication.enabled {
        let auth = mailfleet_smtp::pipeline::authenticate::SenderAuth::new(
            &smtp.authentication,
            &config.server.hostname,
        )
        .map_err(|e| anyhow::anyhow!("smtp.authentication: {e}"))?;
        dns = Some(auth.resolver());
        authenticator_dns = Some(auth.authenticator());
        if let Some(c) = &dmarc_reports {
            auth.report_dmarc_to(c.clone());
        }
        pipeline = pipeline.with_sender_auth(auth);
    } else if dmarc_reports.is_some() {
        anyhow::bail!("reports.dmarc_enabled needs smtp.authentication enabled (DMARC results)");
    }
    if let Some(spam) = smtp.spam.clone().filter(|s| s.enabled) {
        if smtp.rspamd.is_some() {
            tracing::warn!("smtp.spam is ignored: rspamd is configured and scores the mail");
        } else {
            if dns.is_none() && !spam.dnsbl.lists.is_empty() {
                anyhow::bail!("smtp.spam.dnsbl needs smtp.authentication enabled (its resolver)");
            }
            pipeline = pipeline.with_builtin_filter(
                mailfleet_smtp::pipeline::filter::builtin::Builtin::new(
                    spam,
                    smtp.spam_domains.clone(),
                    dns,
                ),
            );
        }
    }
    if config.sieve.enabled {
        let rules = mailfleet_smtp::pipeline::rules::Rules::new(&config.sieve)
            .map_err(|e| anyhow::anyhow!("sieve: {e}"))?;
        pipeline = pipeline.with_rules(rules);
    }
    pipeline = pipeline.with_filters(mailfleet_smtp::pipeline::filter::Filters {
        rspamd: smtp.rspamd.clone(),
        clamav: smtp.clamav.clone(),
        domains: smtp
            .spam_domains
            .iter()
            .map(|(d, t)| (d.trim_end_matches('.').to_ascii_lowercase(), *t))
            .collect(),
    });
    let grace = Duration::from_secs(config.server.shutdown_grace_secs);
    // One count per client address across every listener of the node (SMTP, submission,
    // IMAP, POP3, HTTP), as Postfix's anvil keeps one per client.
    let per_ip = mailfleet_core::net::PerIpLimit::new(config.server.max_connections_per_ip);
    // PROXY protocol for every mail listener (not HTTP): one policy for the node.
    let proxy = config.server.proxy()?.map(Arc::new);

    let mut tasks = Vec::new();
    for (listener, implicit) in bind_all("smtp", &smtp.listen, &smtp.listen_tls).await? {
        let kind = ListenerKind::from_implicit_tls(implicit);
        let l = Listener {
            listener,
            kind,
            session: session.clone(),
            limits,
            pipeline: pipeline.clone(),
            tls: Some(acceptor.clone())
                .filter(|_| kind == ListenerKind::ImplicitTls || smtp.starttls),
            max_connections: smtp.max_connections,
            per_ip: per_ip.clone(),
            proxy: proxy.clone(),
            shutdown: shutdown.clone(),
            grace,
            submission: None,
        };
        tasks.push(tokio::spawn(l.run()));
    }

    // One authenticator for every protocol: throttling state is shared through the
    // Coordinator, so limits hold across listeners (and, in cluster mode, across nodes).
    let authenticator = mailfleet_auth::Authenticator::new(
        stores.clone(),
        mailfleet_auth::AuthPolicy::from_config(&config.auth),
    );
    let more = Listeners {
        authenticator: &authenticator,
        acceptor: &acceptor,
        shutdown: &shutdown,
        grace,
        per_ip: per_ip.clone(),
        proxy: proxy.clone(),
    };
    tasks.extend(imap_listeners(&config, &stores, &more).await?);
    tasks.extend(
        more.submission(&config, &session, limits, &pipeline)
            .await?,
    );
    tasks.extend(more.pop3(&config, &stores).await?);
    tasks.extend(more.managesieve(&config, &stores).await?);
    let tls_reports = (config.reports.tlsrpt_enabled && config.delivery.enabled).then(|| {
        Arc::new(mailfleet_reports::TlsCollector::new(
            config.reports.max_rows,
        ))
    });
    if config.delivery.enabled {
        let settings = mailfleet_delivery::Settings::from_config(&config);
        let worker = mailfleet_delivery::Worker::new(stores.clone(), settings)
            .context("outbound delivery (configuration section `[delivery]`)")?;
        if let Some(c) = &tls_reports {
            worker.report_tls_to(c.clone());
        }
        tasks.push(tokio::spawn(worker.run(shutdown.clone())));
    }

    let mut probes = mailfleet_http::router(
        stores.clone(),
        Duration::from_millis(config.http.readiness_timeout_ms),
    );
    if config.http.metrics {
        probes = probes.merge(mailfleet_http::metrics_router(
            stores.clone(),
            Duration::from_millis(config.http.readiness_timeout_ms),
        ));
    }
    for (listener, _) in bind_all("http", &config.http.listen, &[]).await? {
        tasks.push(tokio::spawn(mailfleet_http::serve(
            listener,
            probes.clone(),
            shutdown.clone(),
            per_ip.clone(),
        )));
    }

    if dmarc_reports.is_some() || tls_reports.is_some() {
        let dns = match authenticator_dns {
            Some(a) => a,
            None => mail_auth::MessageAuthenticator::new_system_conf()
                .context("the DNS resolver of the TLS reports (the system configuration)")?,
        };
        let service = mailfleet_reports::ReportService {
            stores: stores.clone(),
            dmarc: dmarc_reports,
            tls: tls_reports,
            sender: mailfleet_reports::ReportSender::new(
                stores.clone(),
                mailfleet_reports::SenderSettings::from_config(&config),
                Box::new(dns),
            ),
            flush_every: Duration::from_secs(config.reports.flush_secs),
            send_every: Duration::from_secs(config.reports.interval_secs),
            holder: format!("{}:{}", config.server.hostname, std::process::id()),
        };
        tasks.push(tokio::spawn(service.run(shutdown.clone())));
    }

    tokio::spawn(blob_gc(stores.clone(), shutdown.clone()));
    tracing::info!(
        hostname = %config.server.hostname,
        data_dir = %config.server.data_dir.display(),
        "mailfleet ready"
    );

    wait_for_signal(resolver.clone()).await;
    tracing::info!(
        grace_secs = grace.as_secs(),
        "shutting down: no new connections"
    );
    controller.trigger();
    for t in tasks {
        let _ = t.await;
    }
    // Texts still queued for the full-text index: written now rather than left pending
    // (a crash leaves them pending, which searches handle; a clean stop need not).
    if tokio::time::timeout(grace, stores.indexer.flush())
        .await
        .is_err()
    {
        tracing::warn!("full-text index queue not written in time; those messages stay pending");
    }
    tracing::info!("shutdown complete");
    Ok(())
}

/// Binds the `[imap]` listeners.
async fn imap_listeners(
    config: &Config,
    stores: &Stores,
    shared: &Listeners<'_>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let (authenticator, acceptor, shutdown, grace) = (
        shared.authenticator,
        shared.acceptor,
        shared.shutdown,
        shared.grace,
    );
    let (per_ip, proxy) = (&shared.per_ip, &shared.proxy);
    let imap = &config.imap;
    let session = Arc::new(mailfleet_imap::ImapConfig {
        hostname: config.server.hostname.clone(),
        starttls: imap.starttls,
        plaintext_auth_without_tls: imap.allow_plaintext_auth,
        max_message_size: imap.max_message_size as usize,
        max_failed_logins: config.auth.max_attempts_per_connection.max(1),
        idle_timeout: Duration::from_secs(imap.idle_timeout_secs),
        user_sessions: mailfleet_imap::UserSessions::new(imap.max_sessions_per_user),
        views: mailfleet_imap::SharedViews::new(),
        // The built-in filter learns from moves into and out of Junk (rspamd, when it is
        // the filter, learns through its own controller instead).
        junk_training: config
            .smtp
            .spam
            .clone()
            .filter(|s| s.enabled && config.smtp.rspamd.is_none())
            .map(Arc::new),
    });
    let limits = mailfleet_imap::ConnLimits {
        max_literal: imap.max_message_size,
        max_command: imap.max_message_size.saturating_add(imap.max_command_size),
        max_errors: imap.max_errors,
        tls_handshake_timeout: Duration::from_secs(30),
        idle_recheck: Duration::from_secs(imap.idle_recheck_secs),
    };
    let login: Arc<dyn mailfleet_imap::LoginService> = Arc::new(authenticator.clone());
    let mut tasks = Vec::new();
    for (listener, implicit_tls) in bind_all("imap", &imap.listen, &imap.listen_tls).await? {
        let l = mailfleet_imap::Listener {
            listener,
            implicit_tls,
            tls: (implicit_tls || imap.starttls).then(|| acceptor.clone()),
            config: session.clone(),
            limits,
            stores: stores.clone(),
            login: login.clone(),
            max_connections: imap.max_connections,
            per_ip: per_ip.clone(),
            proxy: proxy.clone(),
            shutdown: shutdown.clone(),
            grace,
        };
        tasks.push(tokio::spawn(l.run()));
    }
    Ok(tasks)
}

/// Binds every address of a protocol's `listen` and `listen_tls` keys. Returns each
/// listener with whether it is implicit-TLS; a failure names the key.
async fn bind_all(
    section: &str,
    plain: &[std::net::SocketAddr],
    implicit: &[std::net::SocketAddr],
) -> anyhow::Result<Vec<(tokio::net::TcpListener, bool)>> {
    let mut out = Vec::new();
    let all = plain
        .iter()
        .map(|a| (a, false))
        .chain(implicit.iter().map(|a| (a, true)));
    for (addr, implicit_tls) in all {
        let key = if implicit_tls { "listen_tls" } else { "listen" };
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("configuration key `{section}.{key}`: cannot listen on {addr}")
        })?;
        tracing::info!(%addr, implicit_tls, "{section} listening");
        out.push((listener, implicit_tls));
    }
    Ok(out)
}

fn tokio_rustls_acceptor(cfg: Arc<rustls::ServerConfig>) -> tokio_rustls::TlsAcceptor {
    tokio_rustls::TlsAcceptor::from(cfg)
}

/// Waits for SIGTERM or SIGINT. SIGHUP reloads the TLS certificate (as daemons
/// conventionally do) instead of killing the process.
async fn wait_for_signal(resolver: Arc<ReloadingResolver>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return,
                _ = term.recv() => return,
                _ = hup.recv() => match resolver.reload() {
                    Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
                    Err(e) => tracing::warn!(error = %e, "SIGHUP: TLS certificate reload failed"),
                },
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = resolver;
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn blob_gc(stores: Stores, mut shutdown: mailfleet_core::shutdown::Shutdown) {
    let mut tick = tokio::time::interval(BLOB_GC_EVERY);
    let holder = format!(
        "{}:{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    );
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait() => return,
        }
        // One node sweeps at a time: the claims are safe under any concurrency, but every
        // node reading the same orphan log would only multiply the reads.
        let lease = match stores
            .coord
            .acquire_lease("blob-gc", &holder, BLOB_GC_EVERY)
            .await
        {
            Ok(Some(l)) => l,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "blob garbage collection lease failed");
                continue;
            }
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        match mailfleet_storage::blob::gc::collect(
            stores.meta.as_ref(),
            stores.blobs.as_ref(),
            now,
            BLOB_GC_GRACE_SECS,
            BLOB_GC_MAX_PER_RUN,
        )
        .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "unreferenced blobs deleted"),
            Err(e) => tracing::warn!(error = %e, "blob garbage collection failed"),
        }
        let _ = stores.coord.release_lease(&lease).await;
    }
}

/// What the IMAP, submission and POP3 listeners share.
struct Listeners<'a> {
    authenticator: &'a mailfleet_auth::Authenticator,
    acceptor: &'a tokio_rustls::TlsAcceptor,
    shutdown: &'a mailfleet_core::shutdown::Shutdown,
    grace: Duration,
    per_ip: mailfleet_core::net::PerIpLimit,
    proxy: Option<Arc<mailfleet_core::proxy::ProxyProtocol>>,
}

impl Listeners<'_> {
    /// Binds the `[submission]` listeners: the SMTP session in submission mode, with the
    /// `[smtp]` message limits. STARTTLS is always offered on the plain ones, since AUTH
    /// needs TLS.
    async fn submission(
        &self,
        config: &Config,
        session: &Arc<SessionConfig>,
        limits: ConnLimits,
        pipeline: &Pipeline,
    ) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
        let sub = &config.submission;
        let session = Arc::new(SessionConfig {
            starttls: true,
            ..(**session).clone()
        });
        let mut tasks = Vec::new();
        for (listener, implicit) in bind_all("submission", &sub.listen, &sub.listen_tls).await? {
            let kind = ListenerKind::from_implicit_tls(implicit);
            let l = Listener {
                listener,
                kind,
                session: session.clone(),
                limits,
                pipeline: pipeline.clone(),
                tls: Some(self.acceptor.clone()),
                max_connections: sub.max_connections,
                per_ip: self.per_ip.clone(),
                proxy: self.proxy.clone(),
                shutdown: self.shutdown.clone(),
                grace: self.grace,
                submission: Some(self.authenticator.clone()),
            };
            tasks.push(tokio::spawn(l.run()));
        }
        Ok(tasks)
    }

    /// Binds the `[pop3]` listeners.
    async fn pop3(
        &self,
        config: &Config,
        stores: &Stores,
    ) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
        use mailfleet_pop3::{ConnLimits, Listener, ListenerKind, SessionConfig};
        let pop3 = &config.pop3;
        let session = Arc::new(SessionConfig {
            hostname: config.server.hostname.clone(),
            starttls: pop3.starttls,
            allow_plaintext_auth: pop3.allow_plaintext_auth,
            max_errors: pop3.max_errors,
            max_messages: pop3.max_messages,
        });
        let limits = ConnLimits {
            max_line: pop3.max_line_length,
            command_timeout: Duration::from_secs(pop3.command_timeout_secs),
            tls_handshake_timeout: Duration::from_secs(30),
        };
        let mut tasks = Vec::new();
        for (listener, implicit) in bind_all("pop3", &pop3.listen, &pop3.listen_tls).await? {
            let kind = ListenerKind::from_implicit_tls(implicit);
            let l = Listener {
                listener,
                kind,
                session: session.clone(),
                limits,
                stores: stores.clone(),
                auth: self.authenticator.clone(),
                tls: Some(self.acceptor.clone())
                    .filter(|_| kind == ListenerKind::ImplicitTls || pop3.starttls),
                max_connections: pop3.max_connections,
                per_ip: self.per_ip.clone(),
                proxy: self.proxy.clone(),
                shutdown: self.shutdown.clone(),
                grace: self.grace,
            };
            tasks.push(tokio::spawn(l.run()));
        }
        Ok(tasks)
    }

    /// Binds the `[managesieve]` listeners (none when `managesieve.enabled` is false).
    async fn managesieve(
        &self,
        config: &Config,
        stores: &Stores,
    ) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
        use mailfleet_managesieve::{ConnLimits, Listener, ListenerKind, SessionConfig};
        let ms = &config.managesieve;
        if !ms.enabled {
            return Ok(Vec::new());
        }
        let session = Arc::new(SessionConfig {
            hostname: config.server.hostname.clone(),
            starttls: ms.starttls,
            allow_plaintext_auth: ms.allow_plaintext_auth,
            max_errors: ms.max_errors,
            max_script_size: ms.max_script_size,
        });
        let limits = ConnLimits {
            max_line: ms.max_line_length,
            command_timeout: Duration::from_secs(ms.command_timeout_secs),
            tls_handshake_timeout: Duration::from_secs(30),
        };
        let mut tasks = Vec::new();
        for (listener, implicit) in bind_all("managesieve", &ms.listen, &ms.listen_tls).await? {
            let kind = ListenerKind::from_implicit_tls(implicit);
            let l = Listener {
                listener,
                kind,
                session: session.clone(),
                limits,
                stores: stores.clone(),
                auth: self.authenticator.clone(),
                tls: Some(self.acceptor.clone())
                    .filter(|_| kind == ListenerKind::ImplicitTls || ms.starttls),
                max_connections: ms.max_connections,
                per_ip: self.per_ip.clone(),
                proxy: self.proxy.clone(),
                shutdown: self.shutdown.clone(),
                grace: self.grace,
            };
            tasks.push(tokio::spawn(l.run()));
        }
        Ok(tasks)
    }
}
