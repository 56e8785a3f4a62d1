//! The conformance suite and S3-specific behaviour of `S3BlobStore`, against a real S3
//! server (Garage, see `support/garage.rs`). Skipped with a notice when Garage is not
//! installed, except under CI where that is a failure.

#[path = "support/garage.rs"]
mod garage;

use bytes::Bytes;
use garage::Garage;
use mailfleet_storage::blob::s3::S3BlobStore;
use mailfleet_storage::{conformance, BlobId, BlobStore, StoreError};
use std::ops::Range;
use std::time::{Duration, Instant};

const MIB: usize = 1024 * 1024;

/// Bytes that differ from position to position, so a range read from the wrong offset
/// (or a part stitched in the wrong order) cannot compare equal by accident.
fn patterned(len: usize, seed: u8) -> Bytes {
    Bytes::from(
        (0..len)
            .map(|i| ((i % 251) as u8) ^ ((i / 251 % 253) as u8) ^ seed)
            .collect::<Vec<u8>>(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_blob_store_conformance() {
    let Some(g) = Garage::start_or_skip("s3_blob_store_conformance") else {
        return;
    };
    let store = S3BlobStore::connect(&g.s3_config()).await.expect("connect");
    store.check().await.expect("bucket is ready");
    conformance::blob_store(&store).await;

    // Readiness reports what is wrong, as a temporary failure.
    let mut cfg = g.s3_config();
    cfg.secret_access_key = "0".repeat(64);
    cfg.max_attempts = 1;
    let denied = S3BlobStore::connect(&cfg).await.expect("connect");
    match denied.check().await {
        Err(StoreError::Unavailable(m)) => {
            eprintln!("bad secret: {m}");
            assert!(m.contains("access denied"), "{m}")
        }
        other => panic!("bad secret: {other:?}"),
    }
    match denied.put(Bytes::from_static(b"x")).await {
        Err(StoreError::Unavailable(m)) => assert!(m.contains("access denied"), "{m}"),
        other => panic!("bad secret: {other:?}"),
    }
    let mut cfg = g.s3_config();
    cfg.bucket = "no-such-bucket".into();
    let missing = S3BlobStore::connect(&cfg).await.expect("connect");
    match missing.check().await {
        Err(StoreError::Unavailable(m)) => eprintln!("missing bucket: {m}"),
        other => panic!("missing bucket: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_multipart_upload_and_ranges_across_parts() {
    let Some(g) = Garage::start_or_skip("s3_multipart_upload_and_ranges_across_parts") else {
        return;
    };
    let mut cfg = g.s3_config();
    cfg.multipart_threshold = 6 * MIB as u64;
    cfg.part_size = 5 * MIB as u64;
    let store = S3BlobStore::connect(&cfg).await.expect("connect");

    let data = patterned(12 * MIB + 333, 7);
    let id = store.put(data.clone()).await.expect("multipart put");
    assert_eq!(id, BlobId::of(&data));
    assert_eq!(store.get(&id).await.expect("get"), data);

    // The object was really assembled from parts: S3 ETags of multipart objects end in
    // "-<number of parts>".
    let client = raw_client(&g).await;
    let head = client
        .head_object()
        .bucket(&g.bucket)
        .key(store.key_of(&id))
        .send()
        .await
        .expect("head");
    let etag = head
        .e_tag()
        .unwrap_or_default()
        .trim_matches('"')
        .to_string();
    assert!(etag.ends_with("-3"), "multipart ETag, got {etag:?}");
    assert_eq!(head.content_length(), Some(data.len() as i64));

    let five = 5 * MIB as u64;
    let ten = 10 * MIB as u64;
    let len = data.len() as u64;
    for range in [
        five - 10..five + 10,
        ten - 3..ten + 3,
        five - 1..ten + 1,
        0..len,
        len - 5..len + 1000,
        len..len + 10,
        7..7,
    ] {
        let got = store.get_range(&id, range.clone()).await.expect("range");
        let start = range.start.min(len) as usize;
        let end = range.end.min(len).max(start as u64) as usize;
        assert_eq!(got, data.slice(start..end), "range {range:?}");
    }

    // A second put of the same bytes is answered from HeadObject, and is the same blob.
    assert_eq!(store.put(data.clone()).await.expect("again"), id);
    // No upload was left incomplete.
    let uploads = client
        .list_multipart_uploads()
        .bucket(&g.bucket)
        .send()
        .await
        .expect("list uploads");
    assert!(uploads.uploads().is_empty(), "{:?}", uploads.uploads());

    store.delete(&id).await.expect("delete");
    assert!(!store.exists(&id).await.expect("exists"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_ranged_get_edges() {
    let Some(g) = Garage::start_or_skip("s3_ranged_get_edges") else {
        return;
    };
    let store = S3BlobStore::connect(&g.s3_config()).await.expect("connect");
    let data = patterned(1000, 3);
    let id = store.put(data.clone()).await.expect("put");
    for range in [
        0..1,
        999..1000,
        10..20,
        500..5000,
        1000..1001,
        5000..6000,
        // Reversed: empty, like the filesystem store.
        Range { start: 20, end: 10 },
    ] {
        let got = store.get_range(&id, range.clone()).await.expect("range");
        let start = range.start.min(1000) as usize;
        let end = range.end.min(1000).max(start as u64) as usize;
        assert_eq!(got, data.slice(start..end), "range {range:?}");
    }

    // The empty blob is a blob like any other.
    let empty = store.put(Bytes::new()).await.expect("put empty");
    assert_eq!(empty, BlobId::of(b""));
    assert!(store.get(&empty).await.expect("get empty").is_empty());
    assert!(store
        .get_range(&empty, 0..10)
        .await
        .expect("range of empty")
        .is_empty());

    // Absent blobs: NotFound for reads, false for exists, success for delete.
    let absent = BlobId::of(b"never stored in this bucket");
    assert!(matches!(
        store.get_range(&absent, 0..10).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.get_range(&absent, 3..3).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.get(&absent).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(!store.exists(&absent).await.expect("exists"));
    store.delete(&absent).await.expect("delete absent");
}

/// A dead or hung S3 endpoint fails requests with `Unavailable` within a bounded time, and
/// the same store works again once the endpoint is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_outage_is_unavailable_and_recovers() {
    let Some(mut g) = Garage::start_or_skip("s3_outage_is_unavailable_and_recovers") else {
        return;
    };
    let mut cfg = g.s3_config();
    cfg.timeout_secs = 2;
    cfg.max_attempts = 2;
    let store = S3BlobStore::connect(&cfg).await.expect("connect");
    let before = patterned(4096, 1);
    let id = store.put(before.clone()).await.expect("put");
    // Two attempts of at most 2 s each, plus one backoff: well under this.
    let bound = Duration::from_secs(15);

    // Stopped: connections are refused.
    tokio::task::block_in_place(|| g.stop());
    assert_unavailable("stopped", bound, store.put(patterned(100, 2))).await;
    assert_unavailable("stopped", bound, store.get(&id)).await;
    assert_unavailable("stopped", bound, store.exists(&id)).await;

    // Hung: connections are accepted by the kernel, nothing answers.
    tokio::task::block_in_place(|| g.start());
    g.pause();
    assert_unavailable("hung", bound, store.get(&id)).await;
    assert_unavailable("hung", bound, store.put(patterned(100, 3))).await;
    g.resume();

    // Back: the same store (and its connection pool) works again, data intact.
    tokio::task::block_in_place(|| g.restart());
    assert_eq!(store.get(&id).await.expect("get after restart"), before);
    let after = patterned(100, 4);
    let id2 = store.put(after.clone()).await.expect("put after restart");
    assert_eq!(store.get(&id2).await.expect("get new"), after);
}

async fn assert_unavailable<T: std::fmt::Debug>(
    what: &str,
    bound: Duration,
    op: impl std::future::Future<Output = Result<T, StoreError>>,
) {
    let started = Instant::now();
    let r = tokio::time::timeout(bound * 2, op)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {:?}", bound * 2));
    let took = started.elapsed();
    match r {
        Err(StoreError::Unavailable(m)) => {
            eprintln!("{what}: Unavailable after {took:?}: {m}");
            assert!(m.contains("S3 "), "error names the operation: {m}");
        }
        other => panic!("{what}: expected Unavailable, got {other:?}"),
    }
    assert!(took < bound, "{what}: took {took:?}");
}

async fn raw_client(g: &Garage) -> aws_sdk_s3::Client {
    let creds = aws_sdk_s3::config::Credentials::new(
        g.access_key_id.clone(),
        g.secret_access_key.clone(),
        None,
        None,
        "test",
    );
    let conf = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .endpoint_url(&g.endpoint)
        .region(aws_sdk_s3::config::Region::new(g.region.clone()))
        .credentials_provider(creds)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}
