//! The custom resources, as Rust types: the CRDs under `charts/mailfleet/crds/` are
//! generated from them (`mailfleet-operator crds`), and a test fails when the committed YAML
//! drifts. Validation the API server applies is written here as CEL rules
//! (`x-kubernetes-validations`), so a bad resource is refused at `kubectl apply`, before the
//! operator sees it.

// Several `printcolumn(type_ = ...)` in one `#[kube(...)]` read to clippy as a repeated
// attribute; they are separate columns.
#![allow(clippy::duplicated_attributes)]

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// The API group of Mailfleet's resources.
pub const GROUP: &str = "mail.mailfleet.io";

/// What happens to the mail when the resource is deleted.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum DeletionPolicy {
    /// The account is suspended and keeps its mail; the domain stays hosted. Both are
    /// handed back to the administrator (the operator's mark is cleared).
    #[default]
    Retain,
    /// The account and all its mail are deleted (a domain once it has no accounts left).
    Delete,
}

/// A hosted mail domain.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "mail.mailfleet.io",
    version = "v1alpha1",
    kind = "Domain",
    namespaced,
    status = "DomainStatus",
    shortname = "mdom",
    category = "mailfleet",
    printcolumn(name = "Domain", type_ = "string", json_path = ".spec.domainName"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct DomainSpec {
    /// The domain name, e.g. `example.com`. Immutable: a new domain is a new resource.
    #[x_kube(validation = Rule::new("self == oldSelf").message("domainName is immutable"))]
    #[x_kube(validation = Rule::new("self.matches('^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\\\\.)+[a-z]{2,63}$')").message("domainName must be a lowercase DNS name with at least two labels"))]
    pub domain_name: String,
    /// Where mail to unknown addresses of the domain goes (an address of a hosted domain);
    /// absent: such mail is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.contains('@')").message("catchAll must be an address"))]
    pub catch_all: Option<String>,
    /// Domain aliases: other domains whose mail is delivered here, `local@alias` to
    /// `local@<domainName>`. Each is hosted and managed by this resource (with MX and SPF
    /// records in the status).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    #[x_kube(validation = Rule::new("self.all(a, a.matches('^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\\\\.)+[a-z]{2,63}$'))").message("aliases must be lowercase DNS names with at least two labels"))]
    pub aliases: Vec<String>,
    /// The most the quotas of the domain's accounts may add up to, as a quantity of bytes
    /// (`100Gi`); absent or `0`: no limit. With a limit every User of the domain needs a
    /// quota, and a User whose quota would go over it is Degraded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]+([KMGT]i?)?$')").message("quota must be a number of bytes with an optional K, M, G or T (Ki, Mi, Gi, Ti) suffix"))]
    pub quota: Option<String>,
    /// The host published in the MX record and the autoconfig SRV records; absent: the
    /// server's `server.hostname`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mx_host: Option<String>,
    #[serde(default)]
    pub dkim: DkimSpec,
    #[serde(default)]
    pub dmarc: DmarcSpec,
    #[serde(default)]
    pub mta_sts: MtaStsSpec,
    /// Where TLS reports (RFC 8460) go; absent: `tls-reports@<domain>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_rpt_address: Option<String>,
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// DKIM signing keys, kept in the shared metadata store. A change of selector or algorithms
/// goes like a rotation: the new keys are published first and sign once DNS has had time
/// to serve them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DkimSpec {
    /// The selector (`<selector>._domainkey.<domain>`); with both algorithms the keys are
    /// `<selector>-rsa` and `<selector>-ed25519`. Absent: `mailfleet`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$')").message("selector must be 1 to 40 of a-z, 0-9 and '-', not at either end"))]
    pub selector: Option<String>,
    /// The signature algorithms: `rsa-sha256` (RSA-2048) and/or `ed25519-sha256`
    /// (RFC 8463). Absent: both, as RFC 8463 advises while Ed25519 verifiers are rare.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2))]
    #[x_kube(validation = Rule::new("self.all(a, self.exists_one(b, b == a))").message("each algorithm once"))]
    pub algorithms: Option<Vec<DkimAlgorithmName>>,
    /// Start a rotation when the newest keys are this many days old; 0 or absent: never.
    /// A rotation publishes new selectors first and signs with them once
    /// `delivery.dkim_publish_delay_hours` have passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == 0 || self >= 7").message("rotationDays must be 0 or at least 7 (a rotation takes days to reach every resolver)"))]
    pub rotation_days: Option<u32>,
}

/// A DKIM signature algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum DkimAlgorithmName {
    #[serde(rename = "rsa-sha256")]
    RsaSha256,
    #[serde(rename = "ed25519-sha256")]
    Ed25519Sha256,
}

/// The DMARC record published for the domain.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DmarcSpec {
    #[serde(default)]
    pub policy: DmarcPolicy,
    /// Where aggregate reports go; absent: `postmaster@<domain>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_address: Option<String>,
}

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum DmarcPolicy {
    None,
    #[default]
    Quarantine,
    Reject,
}

/// The MTA-STS policy (RFC 8461) the records announce.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MtaStsSpec {
    #[serde(default)]
    pub mode: MtaStsMode,
}

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum MtaStsMode {
    None,
    #[default]
    Testing,
    Enforce,
}

/// A status condition (the shape of `metav1.Condition`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Ready`, `Reconciling` or `Degraded`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: String,
    pub message: String,
    pub observed_generation: Option<i64>,
    /// RFC 3339; changes only when `status` does.
    pub last_transition_time: String,
}

/// One DNS record the domain needs, and whether DNS answered with it at the last check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DnsRecord {
    /// What the record is for: `MX`, `SPF`, `DKIM`, `DMARC`, `MTA-STS`, `TLS-RPT`,
    /// `autoconfig`.
    pub purpose: String,
    /// Fully qualified, with the trailing dot.
    pub name: String,
    #[serde(rename = "type")]
    pub type_: String,
    pub value: String,
    /// Whether the resolver the operator uses returned this value.
    pub published: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DomainStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub records: Vec<DnsRecord>,
    /// DKIM selectors with their state (`published`, `active`, `retired`).
    #[serde(default)]
    pub dkim_selectors: Vec<String>,
    /// The quotas of the domain's accounts added up, in bytes, when the domain has a quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocated_quota_bytes: Option<u64>,
}

/// A mailbox account.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "mail.mailfleet.io",
    version = "v1alpha1",
    kind = "User",
    namespaced,
    status = "UserStatus",
    shortname = "muser",
    category = "mailfleet",
    printcolumn(name = "Address", type_ = "string", json_path = ".spec.address"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Used", type_ = "integer", json_path = ".status.usedBytes"),
    printcolumn(
        name = "Suspended",
        type_ = "boolean",
        json_path = ".spec.suspended",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct UserSpec {
    /// The login and primary address. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("address is immutable"))]
    #[x_kube(validation = Rule::new("self.matches('^[^@\\\\s]+@[a-z0-9.-]+$')").message("address must be local@domain with a lowercase domain"))]
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("size(self) <= 256").message("displayName is at most 256 characters"))]
    pub display_name: Option<String>,
    /// Storage quota as a Kubernetes quantity of bytes (`500Mi`, `2Gi`); absent or `0`:
    /// unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]+([KMGT]i?)?$')").message("quota must be a number of bytes with an optional K, M, G or T (Ki, Mi, Gi, Ti) suffix"))]
    pub quota: Option<String>,
    /// More addresses delivered to this account (of hosted domains).
    #[serde(default)]
    #[x_kube(validation = Rule::new("self.all(a, a.contains('@') && !a.startsWith('@'))").message("aliases are addresses; a catch-all is set on the Domain"))]
    pub aliases: Vec<String>,
    /// The protocols the account may log in with; absent: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocols: Option<Vec<LoginProtocol>>,
    /// Refuse every login (mail is still delivered and kept).
    #[serde(default)]
    pub suspended: bool,
    /// The Secret (in the resource's namespace) holding the password, or an argon2 PHC hash
    /// of it. Changing the Secret changes the password.
    pub password_secret_ref: SecretKeyRef,
    /// App passwords (one per device; the only passwords protocol logins accept once TOTP
    /// is on), each read from a Secret holding one in the server's format: 20 characters
    /// of a-z and 2-7, dashes allowed (`mailfleet app-password add` prints one; so does
    /// `head -c 13 /dev/urandom | base32 | tr A-Z a-z | head -c 20`). Changing the Secret
    /// replaces it; removing an entry revokes it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    #[x_kube(validation = Rule::new("self.all(a, self.exists_one(b, b.name == a.name))").message("app password names must be unique"))]
    pub app_passwords: Vec<AppPasswordSpec>,
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LoginProtocol {
    Imap,
    Pop3,
    Submission,
    Jmap,
}

/// An app password of a User, from a Secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppPasswordSpec {
    /// What the user sees it as ("phone", "thunderbird"); unique per User.
    #[x_kube(validation = Rule::new("size(self) >= 1 && size(self) <= 64").message("name is 1 to 64 characters"))]
    pub name: String,
    /// The Secret key holding it (absent key: `password`).
    pub secret_ref: SecretKeyRef,
}

/// A key of a Secret in the resource's namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    pub name: String,
    /// The key in the Secret's data; absent: `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub used_bytes: u64,
    #[serde(default)]
    pub messages: u64,
    /// The account's mailboxes.
    #[serde(default)]
    pub mailboxes: Vec<String>,
    /// The app passwords the operator set, with the `resourceVersion` of the Secret each
    /// was read from (so an unchanged Secret costs no hash verification).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub app_passwords: Vec<AppPasswordStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppPasswordStatus {
    pub name: String,
    pub secret_resource_version: String,
}

/// The CRDs as the YAML committed under `charts/mailfleet/crds/` (one file each).
pub fn crd_yaml() -> Vec<(&'static str, String)> {
    use kube::CustomResourceExt;
    let header =
        "# Generated from operator/src/crd.rs by `mailfleet-operator crds`; do not edit.\n";
    vec![
        (
            "domains.mail.mailfleet.io.yaml",
            format!(
                "{header}{}",
                serde_yaml_ng::to_string(&Domain::crd()).expect("CRD serialises")
            ),
        ),
        (
            "users.mail.mailfleet.io.yaml",
            format!(
                "{header}{}",
                serde_yaml_ng::to_string(&User::crd()).expect("CRD serialises")
            ),
        ),
    ]
}
