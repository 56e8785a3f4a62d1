//! Blobs in an S3-compatible bucket (AWS S3, Garage, MinIO, Ceph RGW): the cluster backend.
//!
//! Every front-end of a cluster reads and writes the same bucket, so a message delivered by
//! one node can be fetched through any other without local disk.
//!
//! # Layout
//! Object key: `<key_prefix><aa>/<full id>`, where `aa` is the first hex pair of the id.
//! S3 scales request rates per key prefix, so the 256-way fan-out spreads a busy server's
//! load over 256 partitions instead of one; it also keeps `ListObjects` of one fan-out
//! bucket short for operators. The id is the SHA-256 of the bytes ([`BlobId::of`]), so a
//! key names exactly one content and an object, once written, never changes.
//!
//! # Failure handling
//! The SDK retries 5xx answers, throttling and timeouts itself ([`RetryConfig::standard`]
//! with `max_attempts`, exponential backoff with jitter), and every attempt has a deadline
//! (`timeout_secs`), so a dead or hung endpoint turns into [`StoreError::Unavailable`]
//! after a bounded time instead of hanging a SMTP or IMAP session. Once a response has
//! started streaming, the SDK's stalled-stream protection ends a body that stops flowing.

use super::BlobStore;
use crate::types::BlobId;
use crate::{StoreError, StoreResult};
use async_trait::async_trait;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use mailfleet_core::config::S3Config;
use std::ops::Range;
use std::time::Duration;

/// Bodies at least this large are checked with a HEAD before upload (see `put`).
const HEAD_BEFORE_PUT: u64 = 256 * 1024;
/// S3 allows at most this many parts in one multipart upload.
const MAX_PARTS: u64 = 10_000;
/// Parts of one upload sent at the same time: enough to fill a link to a remote endpoint,
/// few enough that one large message does not hold many part buffers' worth of sockets.
const PART_CONCURRENCY: usize = 4;
/// Region used for request signing when neither the configuration nor the environment
/// names one (S3-compatible servers accept any region they were configured with).
const FALLBACK_REGION: &str = "us-east-1";

/// A [`BlobStore`] on one bucket of an S3-compatible object store.
#[derive(Clone, Debug)]
pub struct S3BlobStore {
    client: Client,
    bucket: String,
    key_prefix: String,
    multipart_threshold: u64,
    part_size: u64,
}

impl S3BlobStore {
    /// Builds the client for `cfg`. Nothing is sent to the endpoint here: a store that is
    /// down at startup must not keep the process from starting (use [`S3BlobStore::check`]
    /// for readiness). Empty credentials select the AWS default chain (environment,
    /// profile, web identity/IRSA, IMDS), which is how pods on EKS get theirs.
    pub async fn connect(cfg: &S3Config) -> StoreResult<Self> {
        if cfg.bucket.is_empty() {
            return Err(StoreError::Invalid("storage.s3.bucket is empty".into()));
        }
        let timeout = Duration::from_secs(cfg.timeout_secs.max(1));
        let retry = RetryConfig::standard().with_max_attempts(cfg.max_attempts.max(1));
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(timeout)
            .operation_attempt_timeout(timeout)
            .build();

        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(retry.clone())
            .timeout_config(timeouts.clone());
        if !cfg.region.is_empty() {
            loader = loader.region(Region::new(cfg.region.clone()));
        }
        if !cfg.endpoint.is_empty() {
            loader = loader.endpoint_url(cfg.endpoint.clone());
        }
        if !cfg.access_key_id.is_empty() {
            loader = loader.credentials_provider(Credentials::new(
                cfg.access_key_id.clone(),
                cfg.secret_access_key.clone(),
                None,
                None,
                "mailfleet-config",
            ));
        }
        let shared = loader.load().await;

        let mut builder = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(cfg.path_style)
            // Newer SDKs add CRC checksums to every request and demand them on responses;
            // several S3-compatible stores reject or omit them. Content integrity is ours
            // anyway: the key is the SHA-256 of the bytes and `get` verifies it.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .retry_config(retry)
            .timeout_config(timeouts);
        if shared.region().is_none() {
            builder = builder.region(Region::new(FALLBACK_REGION));
        }

        Ok(Self {
            client: Client::from_conf(builder.build()),
            bucket: cfg.bucket.clone(),
            key_prefix: cfg.key_prefix.clone(),
            multipart_threshold: cfg.multipart_threshold,
            // Guards against a zero part size (an endless split); S3 itself still rejects
            // parts under 5 MiB, which configuration validation enforces.
            part_size: cfg.part_size.max(1),
        })
    }

    /// Readiness: the bucket exists and these credentials may use it (`HeadBucket`).
    pub async fn check(&self) -> StoreResult<()> {
        match self.client.head_bucket().bucket(&self.bucket).send().await {
            Ok(_) => Ok(()),
            Err(e) if status(&e) == Some(404) => Err(StoreError::Unavailable(format!(
                "S3 HeadBucket: bucket {:?} does not exist",
                self.bucket
            ))),
            Err(e) => Err(unavailable("HeadBucket", &self.bucket, &e)),
        }
    }

    /// The object key of `id`.
    pub fn key_of(&self, id: &BlobId) -> String {
        let s = id.as_str();
        format!("{}{}/{}", self.key_prefix, &s[0..2], s)
    }

    /// `HeadObject`: whether the object exists, `NotFound` mapped to `false`.
    async fn head(&self, key: &str) -> StoreResult<bool> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(map_err("HeadObject", key, &e)),
        }
    }

    /// One `PutObject`. S3 makes the object visible only once the whole body has arrived,
    /// so a failed or interrupted put never leaves a truncated blob under its id.
    async fn put_single(&self, key: &str, data: Bytes) -> StoreResult<()> {
        let len = data.len() as i64;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_length(len)
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| map_err("PutObject", key, &e))?;
        Ok(())
    }

    /// A multipart upload, for bodies past `multipart_threshold`: a large single PUT is
    /// retried from its first byte after any failure and holds one connection for the
    /// whole transfer, while parts are retried one by one (by the SDK) and sent
    /// [`PART_CONCURRENCY`] at a time. The object appears only at
    /// `CompleteMultipartUpload`, as atomically as a single PUT; on any failure the upload
    /// is aborted so its parts do not linger (and get billed) in the bucket.
    async fn put_multipart(&self, key: &str, data: Bytes) -> StoreResult<()> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| map_err("CreateMultipartUpload", key, &e))?;
        let upload_id = created.upload_id().map(str::to_owned).ok_or_else(|| {
            StoreError::Unavailable(format!(
                "S3 CreateMultipartUpload {key}: the answer carries no upload id"
            ))
        })?;

        let result = self.upload_parts(key, &upload_id, &data).await;
        if result.is_err() {
            if let Err(e) = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload_id)
                .send()
                .await
            {
                // The bucket's lifecycle rule for incomplete uploads is the backstop.
                tracing::warn!(
                    key,
                    upload_id,
                    error = %describe(&e),
                    "S3 AbortMultipartUpload failed"
                );
            }
        }
        result
    }

    async fn upload_parts(&self, key: &str, upload_id: &str, data: &Bytes) -> StoreResult<()> {
        let len = data.len() as u64;
        // Grow the part size when the configured one would need more than S3's part limit.
        let part_size = self.part_size.max(len.div_ceil(MAX_PARTS));
        let ranges: Vec<(i32, Range<usize>)> = (0..len.div_ceil(part_size))
            .map(|i| {
                let start = i * part_size;
                let end = (start + part_size).min(len);
                // At most MAX_PARTS parts, so the number always fits an i32.
                (i as i32 + 1, start as usize..end as usize)
            })
            .collect();

        let parts: Vec<CompletedPart> = futures::stream::iter(ranges)
            .map(|(number, range)| {
                let body = data.slice(range.clone());
                async move {
                    let out = self
                        .client
                        .upload_part()
                        .bucket(&self.bucket)
                        .key(key)
                        .upload_id(upload_id)
                        .part_number(number)
                        .content_length(body.len() as i64)
                        .body(ByteStream::from(body))
                        .send()
                        .await
                        .map_err(|e| map_err("UploadPart", &format!("{key} part {number}"), &e))?;
                    let etag = out.e_tag().ok_or_else(|| {
                        StoreError::Unavailable(format!(
                            "S3 UploadPart {key} part {number}: the answer carries no ETag"
                        ))
                    })?;
                    Ok::<_, StoreError>(
                        CompletedPart::builder()
                            .part_number(number)
                            .e_tag(etag)
                            .build(),
                    )
                }
            })
            .buffered(PART_CONCURRENCY)
            .try_collect()
            .await?;

        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| map_err("CompleteMultipartUpload", key, &e))?;
        Ok(())
    }
}

#[async_trait]
impl BlobStore for S3BlobStore {
    /// Content-addressed put. `HeadObject` comes first: the same bytes are stored again
    /// constantly (one delivery to many recipients, an IMAP COPY, a client re-uploading a
    /// draft), and a HEAD is a few hundred bytes where a PUT re-sends the whole message.
    /// Two nodes storing the same new blob at once both upload; they write the same bytes
    /// under the same key, so whichever lands last changes nothing.
    ///
    /// On AWS, `HeadObject` of a missing key answers 403 instead of 404 unless the
    /// credentials also have `s3:ListBucket`; grant it, or every first put is refused.
    ///
    /// A put whose future is dropped mid-multipart (the client went away) cannot abort
    /// its upload; a bucket lifecycle rule expiring incomplete uploads cleans those up.
    async fn put(&self, data: Bytes) -> StoreResult<BlobId> {
        let id = digest(&data).await?;
        let key = self.key_of(&id);
        let len = data.len() as u64;
        // Below HEAD_BEFORE_PUT a PUT costs what a HEAD does, and writing the same bytes
        // again under their own hash changes nothing; so only large bodies pay a HEAD
        // first, to skip re-uploading a copy that is already there.
        if len >= HEAD_BEFORE_PUT && self.head(&key).await? {
            tracing::trace!(%id, "blob already stored");
            return Ok(id);
        }
        if len >= self.multipart_threshold && len > self.part_size {
            self.put_multipart(&key, data).await?;
        } else {
            self.put_single(&key, data).await?;
        }
        Ok(id)
    }

    /// The whole blob, checked against its id: a blob is fetched whole only for FETCH of
    /// the full message, POP3 RETR and outbound delivery, where handing out bytes that are
    /// not the ones delivered would be worse than an error. Hashing costs far less than
    /// the transfer.
    async fn get(&self, id: &BlobId) -> StoreResult<Bytes> {
        let key = self.key_of(id);
        let out = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) => return Err(map_err("GetObject", &key, &e)),
        };
        let data = read_body(out.body, &key).await?;
        if digest(&data).await? != *id {
            return Err(StoreError::Corrupt(format!(
                "S3 object {key}: content does not match its SHA-256 id"
            )));
        }
        Ok(data)
    }

    /// A ranged `GetObject` (IMAP partial FETCH of a large attachment reads only what it
    /// needs). S3 cannot express an empty range (`bytes=5-4` is ignored and the whole
    /// object is returned), so an empty request only checks that the blob exists; a start
    /// past the end is answered by S3 with 416 `InvalidRange`, which means empty here.
    async fn get_range(&self, id: &BlobId, range: Range<u64>) -> StoreResult<Bytes> {
        let key = self.key_of(id);
        if range.start >= range.end {
            return if self.head(&key).await? {
                Ok(Bytes::new())
            } else {
                Err(StoreError::NotFound(format!("blob {id}")))
            };
        }
        let out = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&key)
            .range(format!("bytes={}-{}", range.start, range.end - 1))
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if status(&e) == Some(416) || e.code() == Some("InvalidRange") => {
                return Ok(Bytes::new())
            }
            Err(e) => return Err(map_err("GetObject", &key, &e)),
        };
        let partial = out.content_range().is_some();
        let data = read_body(out.body, &key).await?;
        if partial {
            // S3 already clamped the end to the object's size.
            return Ok(data);
        }
        // A server that ignores `Range` answers 200 with the whole object: cut it here.
        let len = data.len() as u64;
        let start = range.start.min(len);
        let end = range.end.clamp(start, len);
        Ok(data.slice(start as usize..end as usize))
    }

    async fn exists(&self, id: &BlobId) -> StoreResult<bool> {
        self.head(&self.key_of(id)).await
    }

    /// `DeleteObject` succeeds on a missing key in S3; a 404 from a stricter server is
    /// taken as success too, since the blob is gone either way.
    async fn delete(&self, id: &BlobId) -> StoreResult<()> {
        let key = self.key_of(id);
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(map_err("DeleteObject", &key, &e)),
        }
    }
}

/// Blobs past this size are hashed on the blocking pool: SHA-256 of tens of megabytes
/// would otherwise stall every other session on the same runtime worker.
const HASH_INLINE_MAX: usize = 256 * 1024;

async fn digest(data: &Bytes) -> StoreResult<BlobId> {
    if data.len() <= HASH_INLINE_MAX {
        return Ok(BlobId::of(data));
    }
    let data = data.clone();
    tokio::task::spawn_blocking(move || BlobId::of(&data))
        .await
        .map_err(|e| StoreError::Unavailable(format!("hashing task failed: {e}")))
}

async fn read_body(body: ByteStream, key: &str) -> StoreResult<Bytes> {
    body.collect().await.map(|b| b.into_bytes()).map_err(|e| {
        StoreError::Unavailable(format!(
            "S3 GetObject {key}: reading the body failed: {}",
            chain(&e)
        ))
    })
}

fn status<E>(e: &SdkError<E, HttpResponse>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

/// A missing key (not a missing bucket, which is a misconfiguration, not an absent blob).
fn is_not_found<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> bool {
    match e.code() {
        Some("NoSuchKey") | Some("NotFound") => true,
        Some("NoSuchBucket") => false,
        _ => status(e) == Some(404),
    }
}

/// Maps an SDK error on `key` to a [`StoreError`]: a missing key is `NotFound`, everything
/// else is `Unavailable` (what the SDK hands back has already used up its retries; the
/// protocols answer a temporary failure and the client tries again later).
fn map_err<E>(op: &str, key: &str, e: &SdkError<E, HttpResponse>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    if is_not_found(e) {
        return StoreError::NotFound(format!("S3 object {key}"));
    }
    unavailable(op, key, e)
}

fn unavailable<E>(op: &str, target: &str, e: &SdkError<E, HttpResponse>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let detail = describe(e);
    if status(e) == Some(403) || e.code() == Some("AccessDenied") {
        return StoreError::Unavailable(format!(
            "S3 {op} {target}: access denied (check storage.s3 credentials and the bucket \
             policy; HeadObject also needs s3:ListBucket): {detail}"
        ));
    }
    if e.code() == Some("NoSuchBucket") {
        return StoreError::Unavailable(format!(
            "S3 {op} {target}: the bucket does not exist: {detail}"
        ));
    }
    StoreError::Unavailable(format!("S3 {op} {target}: {detail}"))
}

/// One line for the log and the error: the HTTP status and S3 error code when the server
/// answered, then the whole `source()` chain, where the useful part of an SDK error is
/// ("dispatch failure" alone does not say "connection refused").
fn describe<E>(e: &SdkError<E, HttpResponse>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let mut out = String::new();
    if let Some(status) = status(e) {
        out.push_str(&format!("HTTP {status}"));
        if let Some(code) = e.code() {
            out.push_str(&format!(" {code}"));
        }
        if let Some(message) = e.message() {
            out.push_str(&format!(" ({message})"));
        }
        out.push_str(": ");
    }
    out.push_str(&chain(e));
    out
}

/// `e` and its sources, `: `-separated, without repeating a level that says the same.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        next = cause.source();
    }
    parts.join(": ")
}
