//! DANE (RFC 7672) against real peers on 127.0.0.1: a DNS responder serving a root zone
//! signed with an Ed25519 key (the trust anchor given as `dnssec_trust_anchor`), in which
//! `dane.test` is signed and `plain.test` is an unsigned delegation (proved by a signed
//! NSEC), and SMTP sinks with and without STARTTLS.

#[path = "support/tls_sink.rs"]
mod tls_sink;
use bytes::Bytes;
use hickory_proto::dnssec::crypto::Ed25519SigningKey;
use hickory_proto::dnssec::rdata::{DNSSECRData, SigInput, DNSKEY, NSEC, RRSIG};
use hickory_proto::dnssec::{Algorithm, PublicKey, SigningKey, TBS};
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, MX, NS, SOA, TLSA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType, SerialNumber};
use mailfleet_delivery::{Settings, Worker};
use mailfleet_storage::{NewOutbound, NewOutboundRecipient, QueueId, RecipientState, Stores};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tls_sink::{start_sink, Sink};
use tokio::net::UdpSocket;

const SIGNED: &str = "dane.test";
const SIGNED_MX: &str = "mx.dane.test";
const UNSIGNED: &str = "plain.test";
const UNSIGNED_MX: &str = "mx.plain.test";
const TTL: u32 = 300;

fn name(s: &str) -> Name {
    Name::from_ascii(format!("{}.", s.trim_end_matches('.'))).expect("name")
}

fn key_of(n: &Name) -> String {
    n.to_ascii().trim_end_matches('.').to_ascii_lowercase()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The MX's certificate: a self-signed leaf, as DANE-EE allows.
struct Cert {
    der: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    /// SHA-256 of its SubjectPublicKeyInfo: the data of a `3 1 1` TLSA record.
    spki_sha256: Vec<u8>,
}

fn cert() -> Cert {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec![SIGNED_MX.to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    Cert {
        der: cert.der().clone(),
        spki_sha256: Sha256::digest(key.public_key_der()).to_vec(),
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    }
}

fn acceptor(cert: &Cert) -> tokio_rustls::TlsAcceptor {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.der.clone()], cert.key.clone_key())
        .expect("server cert");
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// An Ed25519 zone key for `.`.
struct ZoneKey {
    key: Ed25519SigningKey,
    dnskey: DNSKEY,
    tag: u16,
}

fn zone_key() -> ZoneKey {
    let pkcs8 = Ed25519SigningKey::generate_pkcs8().expect("pkcs8");
    let key = Ed25519SigningKey::from_pkcs8(&pkcs8).expect("key");
    let public = key.to_public_key().expect("public key");
    let dnskey = DNSKEY::from_key(&public as &dyn PublicKey);
    let tag = dnskey.calculate_key_tag().expect("key tag");
    ZoneKey { key, dnskey, tag }
}

/// The RRSIG over `records` (one RRset), made with `key` but claiming `tag`.
fn sign(key: &Ed25519SigningKey, tag: u16, records: &[Record]) -> Record {
    let first = &records[0];
    let now = now() as u32;
    let input = SigInput {
        type_covered: first.record_type(),
        algorithm: Algorithm::ED25519,
        num_labels: first.name.num_labels(),
        original_ttl: TTL,
        sig_expiration: SerialNumber::new(now + 86_400),
        sig_inception: SerialNumber::new(now - 3_600),
        key_tag: tag,
        signer_name: Name::root(),
    };
    let tbs = TBS::from_input(&first.name, DNSClass::IN, &input, records.iter()).expect("tbs");
    let sig = key.sign(&tbs).expect("sign");
    Record::from_rdata(
        first.name.clone(),
        TTL,
        RData::DNSSEC(DNSSECRData::RRSIG(RRSIG::from_sig(input, sig))),
    )
}

/// RRsets by (owner, type), with the RRSIG of the signed ones.
#[derive(Default)]
struct Zone {
    rrsets: HashMap<(String, RecordType), Vec<Record>>,
    sigs: HashMap<(String, RecordType), Record>,
}

/// What the zone publishes for a scenario.
struct ZoneSpec {
    /// Usage and data of the `x 1 1` TLSA record at `_25._tcp.mx.dane.test`.
    tlsa: (u8, Vec<u8>),
    /// Sign that TLSA RRset with a key nobody trusts (a forgery: validation is bogus).
    forge_tlsa: bool,
    /// Likewise for the MX RRset of `dane.test`.
    forge_mx: bool,
}

fn build_zone(key: &ZoneKey, spec: &ZoneSpec) -> Zone {
    let mut zone = Zone::default();
    let mut signed: HashSet<(String, RecordType)> = HashSet::new();
    let mut add = |owner: &str, rdata: RData, sign: bool| {
        let record = Record::from_rdata(name(owner), TTL, rdata);
        let k = (key_of(&record.name), record.record_type());
        if sign {
            signed.insert(k.clone());
        }
        zone.rrsets.entry(k).or_default().push(record);
    };
    let lo = || RData::A(A(Ipv4Addr::LOCALHOST));
    let tlsa = |(usage, data): (u8, Vec<u8>)| {
        RData::TLSA(TLSA::new(usage.into(), 1.into(), 1.into(), data))
    };
    // The root zone: its key, its SOA, and the signed names of dane.test in it.
    add(
        ".",
        RData::DNSSEC(DNSSECRData::DNSKEY(key.dnskey.clone())),
        true,
    );
    add(
        ".",
        RData::SOA(SOA::new(
            name("ns.test"),
            name("hostmaster.test"),
            1,
            3600,
            600,
            86_400,
            TTL,
        )),
        true,
    );
    add(SIGNED, RData::MX(MX::new(10, name(SIGNED_MX))), true);
    add(SIGNED_MX, lo(), true);
    add(
        &format!("_25._tcp.{SIGNED_MX}"),
        tlsa(spec.tlsa.clone()),
        true,
    );
    // plain.test: a delegation without DS, which the signed NSEC at the cut proves.
    add(UNSIGNED, RData::NS(NS(name("ns.plain.test"))), false);
    add(
        UNSIGNED,
        RData::DNSSEC(DNSSECRData::NSEC(NSEC::new(
            Name::root(),
            [RecordType::NS, RecordType::RRSIG, RecordType::NSEC],
        ))),
        true,
    );
    // ... and its unsigned contents, including a TLSA record nothing can trust.
    add(UNSIGNED, RData::MX(MX::new(10, name(UNSIGNED_MX))), false);
    add(UNSIGNED_MX, lo(), false);
    add(
        &format!("_25._tcp.{UNSIGNED_MX}"),
        tlsa((3, vec![7; 32])),
        false,
    );
    let rogue = zone_key();
    for k in signed {
        let records = &zone.rrsets[&k];
        let forged = (spec.forge_tlsa && k.1 == RecordType::TLSA)
            || (spec.forge_mx && k.1 == RecordType::MX);
        let sig = if forged {
            sign(&rogue.key, key.tag, records)
        } else {
            sign(&key.key, key.tag, records)
        };
        zone.sigs.insert(k, sig);
    }
    zone
}

/// Answers from `zone` over UDP: RRSIGs only when the query sets DO; NODATA for other types
/// of known names (with the SOA and any NSEC of the name, signed, in the authority
/// section); NXDOMAIN for unknown names.
async fn start_dns(zone: Zone, strip: bool) -> SocketAddr {
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
            // A stripping path answers as if DO were never set: no RRSIG, no NSEC.
            let dnssec = !strip && query.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok);
            let mut reply = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
            reply.metadata.authoritative = true;
            reply.metadata.recursion_desired = query.metadata.recursion_desired;
            reply.metadata.recursion_available = true;
            if let Some(edns) = &query.edns {
                let mut e = edns.clone();
                e.set_max_payload(4096);
                reply.set_edns(e);
            }
            if let Some(q) = query.queries.first() {
                reply.add_query(q.clone());
                let owner = key_of(&q.name);
                let k = (owner.clone(), q.query_type);
                let known = zone.rrsets.keys().any(|(n, _)| *n == owner);
                match zone.rrsets.get(&k) {
                    Some(records) => {
                        for r in records {
                            reply.add_answer(r.clone());
                        }
                        if let (true, Some(sig)) = (dnssec, zone.sigs.get(&k)) {
                            reply.add_answer(sig.clone());
                        }
                    }
                    None if !known => reply.metadata.response_code = ResponseCode::NXDomain,
                    None if dnssec => {
                        for k in [(String::new(), RecordType::SOA), (owner, RecordType::NSEC)] {
                            if let (Some(records), Some(sig)) =
                                (zone.rrsets.get(&k), zone.sigs.get(&k))
                            {
                                for r in records {
                                    reply.add_authority(r.clone());
                                }
                                reply.add_authority(sig.clone());
                            }
                        }
                    }
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

struct Fixture {
    _dir: tempfile::TempDir,
    stores: Stores,
    settings: Settings,
    sink: Arc<Sink>,
}

/// Which TLSA record `_25._tcp.mx.dane.test` has.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tlsa {
    /// `3 1 1` of the sink's key.
    Matching,
    /// `3 1 1` of some other key.
    Other,
    /// `3 1 1` of the sink's key, with a forged signature.
    Forged,
    /// `1 1 1` (PKIX-EE, which SMTP does not use) of the sink's key.
    Unusable,
    /// `3 1 1` of the sink's key, but the MX RRset of `dane.test` carries a forged
    /// signature.
    ForgedMx,
    /// `3 1 1` of some other key, served by a DNS path that strips every DNSSEC record.
    Stripped,
}

/// One scenario: the zone with `tlsa`, the MX a sink with or without STARTTLS.
async fn fixture(tlsa: Tlsa, starttls: bool) -> Fixture {
    let dir = tempfile::tempdir().expect("tmp");
    let cert = cert();
    let key = zone_key();
    let anchor = dir.path().join("root.key");
    std::fs::write(&anchor, format!(". {TTL} IN DNSKEY {}\n", key.dnskey)).expect("anchor");
    let spec = ZoneSpec {
        tlsa: match tlsa {
            Tlsa::Matching | Tlsa::Forged | Tlsa::ForgedMx => (3, cert.spki_sha256.clone()),
            Tlsa::Other | Tlsa::Stripped => (3, self::cert().spki_sha256),
            Tlsa::Unusable => (1, cert.spki_sha256.clone()),
        },
        forge_tlsa: tlsa == Tlsa::Forged,
        forge_mx: tlsa == Tlsa::ForgedMx,
    };
    let dns = start_dns(build_zone(&key, &spec), tlsa == Tlsa::Stripped).await;
    let (mx_port, sink) = start_sink(starttls.then(|| acceptor(&cert))).await;
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
        // On, so that DANE's precedence runs through the real path (neither domain
        // publishes a policy).
        mta_sts: true,
        tls_ca_file: None,
        dane: true,
        dnssec_trust_anchor: Some(anchor),
        mta_sts_https_port: 443,
        mx_port,
    };
    Fixture {
        _dir: dir,
        stores,
        settings,
        sink,
    }
}

const MESSAGE: &str = "From: Alice <alice@local.test>\r\n\
    To: bob@example\r\n\
    Subject: DANE test\r\n\
    Message-ID: <dane1@local.test>\r\n\
    \r\n\
    Hello Bob.\r\n";

async fn enqueue(stores: &Stores, domain: &str) -> QueueId {
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
                address: format!("bob@{domain}"),
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

/// Delivers one message to `bob@<domain>`; returns its entry afterwards (`None` once
/// finished).
async fn deliver_one(f: &Fixture, domain: &str) -> Option<mailfleet_storage::OutboundMessage> {
    let id = enqueue(&f.stores, domain).await;
    let worker = Worker::new(f.stores.clone(), f.settings.clone()).expect("worker");
    worker.deliver(id).await.expect("deliver");
    f.stores.meta.get_outbound(id).await.expect("get")
}

fn last_error(entry: &mailfleet_storage::OutboundMessage) -> String {
    let r = &entry.recipients[0];
    assert_eq!(r.state, RecipientState::Queued);
    r.last_error.clone().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matching_tlsa_record_delivers_over_tls() {
    let f = fixture(Tlsa::Matching, true).await;
    let entry = deliver_one(&f, SIGNED).await;
    assert!(
        entry.is_none(),
        "delivered and dequeued: {:?}",
        entry.map(|e| last_error(&e))
    );
    let got = f.sink.messages.lock().expect("lock").clone();
    assert_eq!(got.len(), 1);
    assert!(got[0].0, "sent after STARTTLS");
    assert!(got[0].1.contains("Subject: DANE test"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_no_tlsa_record_matches_is_refused() {
    let f = fixture(Tlsa::Other, true).await;
    let entry = deliver_one(&f, SIGNED).await.expect("still queued");
    let err = last_error(&entry);
    assert!(err.starts_with("451 4.7.5 DANE"), "{err}");
    assert!(f.sink.messages.lock().expect("lock").is_empty());
    assert_eq!(
        f.sink.connections.load(Ordering::SeqCst),
        1,
        "no plain-text retry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mx_without_starttls_is_refused() {
    let f = fixture(Tlsa::Matching, false).await;
    let entry = deliver_one(&f, SIGNED).await.expect("still queued");
    let err = last_error(&entry);
    assert!(err.starts_with("451 4.7.5 DANE"), "{err}");
    assert!(err.contains("STARTTLS"), "{err}");
    assert!(f.sink.messages.lock().expect("lock").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_tlsa_record_is_a_temporary_failure() {
    let f = fixture(Tlsa::Forged, true).await;
    let entry = deliver_one(&f, SIGNED).await.expect("still queued");
    let err = last_error(&entry);
    assert!(err.starts_with("451 4.7.5 DANE"), "{err}");
    assert!(err.contains("bogus"), "{err}");
    assert_eq!(
        f.sink.connections.load(Ordering::SeqCst),
        0,
        "MX never contacted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsigned_zone_is_delivered_as_without_dane() {
    // The MX offers no STARTTLS at all, and its unsigned TLSA record matches nothing:
    // neither counts, because nothing about plain.test is DNSSEC-secure.
    let f = fixture(Tlsa::Matching, false).await;
    let entry = deliver_one(&f, UNSIGNED).await;
    assert!(
        entry.is_none(),
        "delivered and dequeued: {:?}",
        entry.map(|e| last_error(&e))
    );
    let got = f.sink.messages.lock().expect("lock").clone();
    assert_eq!(got.len(), 1);
    assert!(!got[0].0, "plain text: no TLS on offer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_but_unusable_tlsa_records_mean_opportunistic_tls() {
    let f = fixture(Tlsa::Unusable, false).await;
    assert!(
        deliver_one(&f, SIGNED).await.is_none(),
        "delivered and dequeued"
    );
    let got = f.sink.messages.lock().expect("lock").clone();
    assert_eq!(got.len(), 1);
    assert!(!got[0].0, "plain text: no TLS on offer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_dane_the_signed_zone_is_opportunistic() {
    let mut f = fixture(Tlsa::Other, false).await;
    f.settings.dane = false;
    assert!(
        deliver_one(&f, SIGNED).await.is_none(),
        "delivered and dequeued"
    );
    assert_eq!(f.sink.messages.lock().expect("lock").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bogus_mx_rrset_defers_instead_of_falling_back() {
    // The MX has no STARTTLS: the old fallback to opportunistic TLS would have delivered
    // in plain text.
    let f = fixture(Tlsa::ForgedMx, false).await;
    let entry = deliver_one(&f, SIGNED).await.expect("still queued");
    let err = last_error(&entry);
    assert!(err.starts_with("451 4.7.5 DANE"), "{err}");
    assert!(err.contains("MX records of dane.test"), "{err}");
    assert_eq!(
        f.sink.connections.load(Ordering::SeqCst),
        0,
        "MX never contacted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolver_that_strips_dnssec_makes_every_domain_insecure() {
    // The signed zone's TLSA record matches nothing and the MX offers no STARTTLS: with
    // DNSSEC stripped nothing can be secure, so this is plain delivery, not a deferral.
    let f = fixture(Tlsa::Stripped, false).await;
    let entry = deliver_one(&f, SIGNED).await;
    assert!(
        entry.is_none(),
        "delivered and dequeued: {:?}",
        entry.map(|e| last_error(&e))
    );
    let got = f.sink.messages.lock().expect("lock").clone();
    assert_eq!(got.len(), 1);
    assert!(!got[0].0, "plain text: no TLS on offer");
}
