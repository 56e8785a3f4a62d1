//! MTA-STS enforcement against real peers on 127.0.0.1: a DNS responder answering MX, A
//! and TXT for `sts.test`, an HTTPS server publishing its policy, and SMTP sinks with and
//! without STARTTLS. Certificates come from a test CA given as `tls_ca_file`.

#[path = "support/tls_sink.rs"]
mod tls_sink;
use bytes::Bytes;
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, MX, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use mailfleet_delivery::{Settings, Worker};
use mailfleet_storage::{NewOutbound, NewOutboundRecipient, QueueId, RecipientState, Stores};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tls_sink::{start_sink, Sink};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

const DOMAIN: &str = "sts.test";
const MX_HOST: &str = "mx.sts.test";
const POLICY_HOST: &str = "mta-sts.sts.test";

/// A test CA and one leaf for both the MX and the policy host.
struct Pki {
    ca_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

fn pki() -> Pki {
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Mailfleet test CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca = ca_params.self_signed(&ca_key).expect("ca cert");
    let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
    let mut leaf_params =
        rcgen::CertificateParams::new(vec![MX_HOST.to_string(), POLICY_HOST.to_string()])
            .expect("leaf params");
    leaf_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = leaf_params
        .signed_by(&leaf_key, &ca, &ca_key)
        .expect("leaf cert");
    Pki {
        ca_pem: ca.pem(),
        chain: vec![leaf.der().clone(), ca.der().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
    }
}

fn acceptor(pki: &Pki) -> tokio_rustls::TlsAcceptor {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(pki.chain.clone(), pki.key.clone_key())
        .expect("server cert");
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

type Zone = Arc<Mutex<HashMap<(String, RecordType), Vec<RData>>>>;

/// Answers A, MX and TXT queries from `zone` over UDP; other names get NXDOMAIN and other
/// types of known names an empty answer. TTLs are 0 so that a test may change the zone
/// under a running worker.
async fn start_dns(zone: Zone) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind dns");
    let addr = socket.local_addr().expect("dns addr");
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                return;
            };
            let Ok(query) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut reply = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
            reply.metadata.authoritative = true;
            reply.metadata.recursion_desired = query.metadata.recursion_desired;
            reply.metadata.recursion_available = true;
            if let Some(q) = query.queries.first() {
                reply.add_query(q.clone());
                let name = q.name.to_ascii().trim_end_matches('.').to_ascii_lowercase();
                let zone = zone.lock().expect("zone").clone();
                let known = zone.keys().any(|(n, _)| *n == name);
                match zone.get(&(name, q.query_type)) {
                    Some(answers) => {
                        for rdata in answers {
                            reply.add_answer(Record::from_rdata(q.name.clone(), 0, rdata.clone()));
                        }
                    }
                    None if !known => reply.metadata.response_code = ResponseCode::NXDomain,
                    None => {}
                }
            }
            if let Ok(bytes) = reply.to_vec() {
                let _ = socket.send_to(&bytes, peer).await;
            }
        }
    });
    addr
}

fn zone() -> HashMap<(String, RecordType), Vec<RData>> {
    let name = |s: &str| Name::from_ascii(format!("{s}.")).expect("name");
    let lo = RData::A(A(Ipv4Addr::LOCALHOST));
    let mut z = HashMap::new();
    z.insert(
        (DOMAIN.to_string(), RecordType::MX),
        vec![RData::MX(MX::new(10, name(MX_HOST)))],
    );
    z.insert((MX_HOST.to_string(), RecordType::A), vec![lo.clone()]);
    z.insert((POLICY_HOST.to_string(), RecordType::A), vec![lo]);
    z.insert(
        (format!("_mta-sts.{DOMAIN}"), RecordType::TXT),
        vec![RData::TXT(TXT::new(
            vec!["v=STSv1; id=20261123T01;".into()],
        ))],
    );
    z
}

/// Serves `policy` over HTTPS, one response per connection; `500` while `fail` is set.
async fn start_https(
    acceptor: tokio_rustls::TlsAcceptor,
    policy: String,
    fail: Arc<AtomicBool>,
) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind https");
    let port = listener.local_addr().expect("addr").port();
    let fetches = Arc::new(AtomicUsize::new(0));
    let count = fetches.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let policy = policy.clone();
            let count = count.clone();
            let fail = fail.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(sock).await else {
                    return;
                };
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&req);
                let ok = head.starts_with("GET /.well-known/mta-sts.txt HTTP/1.1\r\n")
                    && head
                        .to_ascii_lowercase()
                        .contains(&format!("\r\nhost: {POLICY_HOST}\r\n"));
                count.fetch_add(1, Ordering::SeqCst);
                let resp = if fail.load(Ordering::SeqCst) {
                    "HTTP/1.1 500 Oops\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into()
                } else if ok {
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{policy}",
                        policy.len()
                    )
                } else {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .into()
                };
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (port, fetches)
}

struct Fixture {
    _dir: tempfile::TempDir,
    stores: Stores,
    settings: Settings,
    sink: Arc<Sink>,
    fetches: Arc<AtomicUsize>,
    zone: Zone,
    /// Makes the policy server answer `500`.
    https_fail: Arc<AtomicBool>,
}

/// What the MX offers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum MxTls {
    None,
    /// STARTTLS with a certificate from the test CA.
    Trusted,
    /// STARTTLS with a certificate from a CA nobody trusts (an interceptor's).
    Untrusted,
}

/// Everything for one scenario: `policy` published for `sts.test`, its MX a sink with or
/// without STARTTLS.
async fn fixture(policy: &str, mx_tls: MxTls) -> Fixture {
    let dir = tempfile::tempdir().expect("tmp");
    let pki = pki();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).expect("write ca");
    let tls = acceptor(&pki);
    let zone: Zone = Arc::new(Mutex::new(zone()));
    let dns = start_dns(zone.clone()).await;
    let https_fail = Arc::new(AtomicBool::new(false));
    let (https_port, fetches) =
        start_https(tls.clone(), policy.to_string(), https_fail.clone()).await;
    let mx_acceptor = match mx_tls {
        MxTls::None => None,
        MxTls::Trusted => Some(tls),
        MxTls::Untrusted => Some(acceptor(&self::pki())),
    };
    let (mx_port, sink) = start_sink(mx_acceptor).await;
    let stores = mailfleet_storage::embedded::open(dir.path(), 16).expect("stores");
    let settings = Settings {
        hostname: "mx.local.test".into(),
        data_dir: dir.path().to_path_buf(),
        max_concurrent: 4,
        poll_interval: Duration::from_millis(50),
        lease_ttl: Duration::from_secs(30),
        retry_base: Duration::from_secs(60),
        retry_max: Duration::from_secs(600),
        max_lifetime: Duration::from_secs(5 * 24 * 3600),
        connect_timeout: Duration::from_secs(5),
        command_timeout: Duration::from_secs(5),
        starttls: true,
        resolver: Some(dns),
        smarthost: None,
        routes: BTreeMap::new(),
        dkim_sign: false,
        dkim_lifecycle: Default::default(),
        max_per_destination: 20,
        max_per_destination_per_minute: 0,
        delay_warning: Duration::from_secs(4 * 3600),
        connection_reuse: Duration::from_secs(5),
        shutdown_grace: Duration::from_secs(5),
        mta_sts: true,
        tls_ca_file: Some(ca_file),
        dane: false,
        dnssec_trust_anchor: None,
        mta_sts_https_port: https_port,
        mx_port,
    };
    Fixture {
        _dir: dir,
        stores,
        settings,
        sink,
        fetches,
        zone,
        https_fail,
    }
}

const MESSAGE: &str = "From: Alice <alice@local.test>\r\n\
    To: bob@sts.test\r\n\
    Subject: MTA-STS test\r\n\
    Message-ID: <sts1@local.test>\r\n\
    \r\n\
    Hello Bob.\r\n";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

async fn enqueue(stores: &Stores) -> QueueId {
    let blob = stores
        .blobs
        .put(Bytes::from_static(MESSAGE.as_bytes()))
        .await
        .expect("blob");
    stores
        .meta
        .enqueue_outbound(NewOutbound {
            blob,
            size: MESSAGE.len() as u64,
            sender: "alice@local.test".into(),
            account: None,
            envid: None,
            ret: None,
            recipients: vec![NewOutboundRecipient {
                address: format!("bob@{DOMAIN}"),
                notify: None,
                orcpt: None,
            }],
            created_at: now(),
            trace: None,
        })
        .await
        .expect("enqueue")
        .id
}

fn policy(mode: &str, mx: &str) -> String {
    format!("version: STSv1\r\nmode: {mode}\r\nmx: {mx}\r\nmax_age: 86400\r\n")
}

/// Delivers one message; returns its entry afterwards (`None` once finished).
async fn deliver_one(f: &Fixture) -> Option<mailfleet_storage::OutboundMessage> {
    let id = enqueue(&f.stores).await;
    let worker = Worker::new(f.stores.clone(), f.settings.clone()).expect("worker");
    worker.deliver(id).await.expect("deliver");
    f.stores.meta.get_outbound(id).await.expect("get")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforce_delivers_over_verified_tls() {
    let f = fixture(&policy("enforce", "*.sts.test"), MxTls::Trusted).await;
    let worker = Worker::new(f.stores.clone(), f.settings.clone()).expect("worker");
    for _ in 0..2 {
        let id = enqueue(&f.stores).await;
        worker.deliver(id).await.expect("deliver");
        assert!(
            f.stores.meta.get_outbound(id).await.expect("get").is_none(),
            "delivered and dequeued"
        );
    }
    let got = f.sink.messages.lock().expect("lock").clone();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|(tls, _)| *tls), "sent after STARTTLS");
    assert!(got[0].1.contains("Subject: MTA-STS test"));
    assert_eq!(
        f.fetches.load(Ordering::SeqCst),
        1,
        "the second message used the cached policy (same TXT id)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforce_refuses_a_certificate_it_cannot_verify() {
    let f = fixture(&policy("enforce", MX_HOST), MxTls::Untrusted).await;
    let entry = deliver_one(&f).await.expect("still queued");
    let r = &entry.recipients[0];
    assert_eq!(r.state, RecipientState::Queued);
    let err = r.last_error.as_deref().unwrap_or("");
    assert!(err.starts_with("451 4.7.5 MTA-STS"), "{err}");
    assert!(f.sink.messages.lock().expect("lock").is_empty());
    assert_eq!(
        f.sink.connections.load(Ordering::SeqCst),
        1,
        "no plain-text retry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforce_refuses_an_mx_without_starttls() {
    let f = fixture(&policy("enforce", MX_HOST), MxTls::None).await;
    let entry = deliver_one(&f).await.expect("still queued");
    let r = &entry.recipients[0];
    assert_eq!(r.state, RecipientState::Queued);
    let err = r.last_error.as_deref().unwrap_or("");
    assert!(err.starts_with("451 4.7.5"), "{err}");
    assert!(err.contains("MTA-STS") && err.contains("STARTTLS"), "{err}");
    assert!(f.sink.messages.lock().expect("lock").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforce_refuses_an_mx_outside_the_policy() {
    let f = fixture(&policy("enforce", "mail.elsewhere.test"), MxTls::Trusted).await;
    let entry = deliver_one(&f).await.expect("still queued");
    let r = &entry.recipients[0];
    assert_eq!(r.state, RecipientState::Queued);
    assert_eq!(
        r.last_error.as_deref(),
        Some("451 4.7.5 MTA-STS: no MX of sts.test matches its policy")
    );
    assert_eq!(
        f.sink.connections.load(Ordering::SeqCst),
        0,
        "MX never contacted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn testing_mode_still_delivers_in_plain_text() {
    let f = fixture(&policy("testing", MX_HOST), MxTls::None).await;
    assert!(deliver_one(&f).await.is_none(), "delivered and dequeued");
    let got = f.sink.messages.lock().expect("lock").clone();
    assert_eq!(got.len(), 1);
    assert!(!got[0].0, "no TLS on offer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_route_is_not_subject_to_the_policy() {
    let mut f = fixture(&policy("enforce", MX_HOST), MxTls::None).await;
    let port = f.settings.mx_port;
    f.settings
        .routes
        .insert(DOMAIN.to_string(), format!("127.0.0.1:{port}"));
    assert!(deliver_one(&f).await.is_none(), "delivered and dequeued");
    assert_eq!(f.sink.messages.lock().expect("lock").len(), 1);
    assert_eq!(f.fetches.load(Ordering::SeqCst), 0, "no policy fetched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_txt_record_there_is_no_policy() {
    let f = fixture(&policy("enforce", "mail.elsewhere.test"), MxTls::None).await;
    f.zone
        .lock()
        .expect("zone")
        .remove(&(format!("_mta-sts.{DOMAIN}"), RecordType::TXT));
    assert!(deliver_one(&f).await.is_none(), "delivered and dequeued");
    assert_eq!(f.sink.messages.lock().expect("lock").len(), 1);
    assert_eq!(f.fetches.load(Ordering::SeqCst), 0, "no TXT, no fetch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_refetch_keeps_the_cached_policy() {
    let f = fixture(&policy("enforce", MX_HOST), MxTls::Trusted).await;
    let worker = Worker::new(f.stores.clone(), f.settings.clone()).expect("worker");
    let first = enqueue(&f.stores).await;
    worker.deliver(first).await.expect("deliver");
    assert!(f
        .stores
        .meta
        .get_outbound(first)
        .await
        .expect("get")
        .is_none());
    // The TXT id changes, the policy server breaks and the MX now points elsewhere, as an
    // attacker who controls DNS and blocks HTTPS would arrange it.
    f.https_fail.store(true, Ordering::SeqCst);
    {
        let mut zone = f.zone.lock().expect("zone");
        let evil = Name::from_ascii("evil.test.").expect("name");
        zone.insert(
            (DOMAIN.to_string(), RecordType::MX),
            vec![RData::MX(MX::new(10, evil))],
        );
        zone.insert(
            ("evil.test".to_string(), RecordType::A),
            vec![RData::A(A(Ipv4Addr::LOCALHOST))],
        );
        zone.insert(
            (format!("_mta-sts.{DOMAIN}"), RecordType::TXT),
            vec![RData::TXT(TXT::new(vec!["v=STSv1; id=changed;".into()]))],
        );
    }
    let second = enqueue(&f.stores).await;
    worker.deliver(second).await.expect("deliver");
    let entry = f
        .stores
        .meta
        .get_outbound(second)
        .await
        .expect("get")
        .expect("still queued");
    assert_eq!(
        entry.recipients[0].last_error.as_deref(),
        Some("451 4.7.5 MTA-STS: no MX of sts.test matches its policy")
    );
    assert_eq!(f.fetches.load(Ordering::SeqCst), 2, "the refetch was tried");
    assert_eq!(f.sink.messages.lock().expect("lock").len(), 1);
}

/// The TLS-RPT counts (RFC 8460) the worker's sessions leave, as the report sender reads
/// them from the store.
/// One message delivered by a worker that counts its sessions for TLS reports: the
/// fixture, the queue entry and the counts written.
async fn deliver_counted(
    policy: &str,
    mx_tls: MxTls,
) -> (Fixture, QueueId, Vec<mailfleet_reports::tlsrpt::StoredTls>) {
    let f = fixture(policy, mx_tls).await;
    let c = Arc::new(mailfleet_reports::TlsCollector::new(100));
    let worker = Worker::new(f.stores.clone(), f.settings.clone()).expect("worker");
    worker.report_tls_to(c.clone());
    let id = enqueue(&f.stores).await;
    worker.deliver(id).await.expect("deliver");
    let counts = tls_counts(&f, &c).await;
    (f, id, counts)
}

async fn tls_counts(
    f: &Fixture,
    c: &mailfleet_reports::TlsCollector,
) -> Vec<mailfleet_reports::tlsrpt::StoredTls> {
    c.flush(f.stores.meta.as_ref()).await.expect("flush");
    f.stores
        .meta
        .list_data(
            mailfleet_storage::DataScope::Global,
            mailfleet_reports::TLSRPT_KIND,
            100,
        )
        .await
        .expect("list")
        .into_iter()
        .map(|(_, d)| serde_json::from_slice(&d.value).expect("stored counts"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_counted_for_tls_reports() {
    use mail_auth::report::tlsrpt::ResultType;
    use mailfleet_reports::TlsPolicyKind;
    // Verified TLS under an enforced policy: a success of the STS policy.
    let (_f, _id, counts) = deliver_counted(&policy("enforce", "*.sts.test"), MxTls::Trusted).await;
    assert_eq!(counts.len(), 1, "{counts:?}");
    assert_eq!(counts[0].domain, "sts.test");
    assert_eq!(counts[0].policy, TlsPolicyKind::Sts);
    assert_eq!(counts[0].success, 1);
    assert!(counts[0].failures.is_empty());

    // A certificate the worker cannot verify: a failure of that type, with the MX.
    let (f, id, counts) = deliver_counted(&policy("enforce", MX_HOST), MxTls::Untrusted).await;
    assert_eq!(counts.len(), 1, "{counts:?}");
    assert_eq!(counts[0].success, 0);
    let failure = &counts[0].failures[0];
    let entry = f
        .stores
        .meta
        .get_outbound(id)
        .await
        .expect("get")
        .expect("queued");
    let why = entry.recipients[0].last_error.clone().unwrap_or_default();
    assert_eq!(failure.failed_session_count, 1);
    assert_eq!(
        failure.result_type,
        ResultType::CertificateNotTrusted,
        "{failure:?}: {why}"
    );
    assert_eq!(failure.receiving_mx_hostname.as_deref(), Some(MX_HOST));
}
