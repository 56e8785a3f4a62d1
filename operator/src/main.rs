//! `mailfleet-operator`: runs the controllers for `Domain` and `User` resources, or prints
//! the CRDs generated from their types.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client, ResourceExt};
use mailfleet_operator::crd::{self, Domain, User};
use mailfleet_operator::metrics::Metrics;
use mailfleet_operator::reconcile::{self, Context};
use mailfleet_operator::{leader, records};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(version, about = "The Mailfleet Kubernetes operator")]
struct Cli {
    /// The mail servers' configuration file: the operator opens the same stores.
    #[arg(long, short, env = "MAILFLEET_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Reconcile Domain and User resources (the default).
    Run {
        /// Where /metrics, /healthz and /readyz are served.
        #[arg(long, default_value = "0.0.0.0:8081")]
        listen: std::net::SocketAddr,
    },
    /// Write the CRDs (generated from the Rust types) into DIR, one file each, or print them.
    Crds { dir: Option<PathBuf> },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Crds { dir }) => {
            for (file, yaml) in crd::crd_yaml() {
                match &dir {
                    Some(d) => std::fs::write(d.join(file), yaml)
                        .with_context(|| format!("writing {file}"))?,
                    None => print!("---\n{yaml}"),
                }
            }
            Ok(())
        }
        Some(Command::Run { listen }) => run(cli.config, listen),
        None => run(cli.config, "0.0.0.0:8081".parse().expect("address")),
    }
}

fn run(config: Option<PathBuf>, listen: std::net::SocketAddr) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .init();
    // One rustls provider for kube, the S3 client and the rest (see ../shared/crates.md).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let config = mailfleet_core::config::Config::load(config.as_deref(), std::env::vars())
                .context("configuration")?;
            let metrics = Metrics::new();
            tokio::spawn(metrics.clone().serve(listen));
            let stores = mailfleet_storage::open::open(&config.storage, &config.server.data_dir)
                .await
                .context("opening the stores named by the configuration")?;
            let client = Client::try_default()
                .await
                .context("connecting to the Kubernetes API")?;
            let namespace = std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "default".into());
            let identity = std::env::var("POD_NAME")
                .unwrap_or_else(|_| format!("mailfleet-operator-{}", std::process::id()));
            metrics
                .ready
                .store(true, std::sync::atomic::Ordering::Relaxed);
            leader::hold(
                Api::<Lease>::namespaced(client.clone(), &namespace),
                identity,
                metrics.leader.clone(),
            )
            .await;

            let d = &config.delivery;
            let ctx = Arc::new(Context {
                client: client.clone(),
                meta: stores.meta.clone(),
                dns: Arc::new(records::HickoryLookup::from_system()?),
                hostname: config.server.hostname.clone(),
                lifecycle: mailfleet_delivery::dkim::Lifecycle {
                    publish_delay: Duration::from_secs(d.dkim_publish_delay_hours * 3600),
                    retire_after: Duration::from_secs(d.dkim_retire_days * 86400),
                },
                metrics,
                failures: Default::default(),
            });
            let users: Api<User> = Api::all(client.clone());
            let domains: Api<Domain> = Api::all(client.clone());
            let secrets: Api<Secret> = Api::all(client.clone());
            let user_controller = Controller::new(users, watcher::Config::default());
            let user_store = user_controller.store();
            // A changed Secret reconciles the Users that name it (password or app password):
            // that is how a password rotates.
            let users_run = user_controller
                .watches(
                    secrets,
                    watcher::Config::default(),
                    move |secret: Secret| {
                        let ns = secret.namespace();
                        let name = secret.name_any();
                        user_store
                            .state()
                            .into_iter()
                            .filter(|u| {
                                u.namespace() == ns
                                    && (u.spec.password_secret_ref.name == name
                                        || u.spec
                                            .app_passwords
                                            .iter()
                                            .any(|a| a.secret_ref.name == name))
                            })
                            .map(|u| ObjectRef::from_obj(u.as_ref()))
                            .collect::<Vec<_>>()
                    },
                )
                .shutdown_on_signal()
                .run(
                    reconcile::reconcile_user,
                    reconcile::error_policy,
                    ctx.clone(),
                )
                .for_each(|_| async {});
            let domains_run = Controller::new(domains, watcher::Config::default())
                .shutdown_on_signal()
                .run(reconcile::reconcile_domain, reconcile::error_policy, ctx)
                .for_each(|_| async {});
            tokio::join!(users_run, domains_run);
            Ok(())
        })
}
