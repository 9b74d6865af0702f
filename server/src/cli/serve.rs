//! `doppel serve`: configuration, logging, the HTTP listener, background upkeep and
//! graceful shutdown (Ctrl-C or SIGTERM flush the log before exiting).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde::Deserialize;

use crate::node::{Node, NodeSettings};
use crate::tenancy::auth::AuthConfig;
use crate::tenancy::quota::Limits;
use crate::tenancy::Tenancy;

/// How often the node's upkeep runs ([`crate::node::Node::upkeep`]): idle transactions,
/// retention, automatic snapshots.
const UPKEEP_EVERY: Duration = Duration::from_secs(1);

/// Options of `doppel serve`. Flags override the config file.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Data directory (sled files: config, logs, snapshots).
    #[arg(long, env = "DOPPEL_DATA")]
    data: Option<PathBuf>,
    /// Address of the REST API.
    #[arg(long, env = "DOPPEL_LISTEN")]
    listen: Option<SocketAddr>,
    /// Address of the replication listener (node-to-node TCP); port 0 picks a free one,
    /// which the node advertises to its peers.
    #[arg(long, env = "DOPPEL_REPLICATION_LISTEN")]
    replication_listen: Option<SocketAddr>,
    /// A TOML config file (keys: data, listen, replication_listen, log_format, [node],
    /// [auth], [quotas], [cluster]).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long)]
    log_format: Option<String>,
    /// The node's name for people (`GET /v1/node` answers it; the console shows it
    /// beside the node id), e.g. the name topologies give it.
    #[arg(long, env = "DOPPEL_NAME")]
    name: Option<String>,
    /// Also start two more nodes and a small topology between the three, to try the
    /// console on (see `cli::demo`).
    #[arg(long)]
    demo: bool,
    /// Shut down when standard input closes (a demo node, so it ends with its parent
    /// even if that is killed).
    #[arg(long, hide = true)]
    exit_with_stdin: bool,
}

/// The TOML config file.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct FileConfig {
    pub(crate) data: Option<PathBuf>,
    listen: Option<SocketAddr>,
    replication_listen: Option<SocketAddr>,
    log_format: Option<String>,
    /// The node's name for people (`--name` wins).
    name: Option<String>,
    node: NodeSettings,
    pub(crate) auth: AuthConfig,
    quotas: Limits,
    /// Membership of a cluster on etcd (`crate::cluster`); absent: a node on its own.
    cluster: Option<crate::cluster::ClusterConfig>,
}

const DEFAULT_DATA: &str = "./doppel-data";
const DEFAULT_LISTEN: &str = "127.0.0.1:7070";

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a terminal: a log written to a file or a pipe stays plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Reads the config file, if one is given.
pub(crate) fn read_config(path: Option<&std::path::Path>) -> Result<FileConfig, String> {
    match path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            toml::from_str(&text).map_err(|e| format!("bad config {}: {e}", path.display()))
        }
        None => Ok(FileConfig::default()),
    }
}

/// The data directory: the flag, else the config file's, else the default.
pub(crate) fn data_dir(flag: Option<PathBuf>, file: &FileConfig) -> PathBuf {
    flag.or_else(|| file.data.clone())
        .unwrap_or_else(|| DEFAULT_DATA.into())
}

pub fn run(args: ServeArgs) -> Result<(), String> {
    let mut file = read_config(args.config.as_deref())?;
    let data = data_dir(args.data, &file);
    let children = if args.demo {
        let (config, auth) = super::demo::auth(&data)?;
        file.auth = auth;
        Some(super::demo::start_children(&data, &config)?)
    } else {
        None
    };
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("default address parses"));
    // By default replication listens on the API's address, on a port of its own.
    let replication_listen = args
        .replication_listen
        .or(file.replication_listen)
        .unwrap_or_else(|| SocketAddr::new(listen.ip(), 0));
    init_logging(
        args.log_format
            .or(file.log_format)
            .as_deref()
            .unwrap_or("text"),
    );
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = file.node.worker_threads {
        runtime.worker_threads(n.get());
    }
    let runtime = runtime
        .enable_all()
        .thread_name("doppel")
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let demo = children.as_ref().map(|c| c.urls());
    if let Some(c) = &file.cluster {
        c.check()?;
    }
    let result = runtime.block_on(serve(
        data,
        listen,
        replication_listen,
        file.node,
        file.auth,
        file.quotas,
        Extras {
            demo,
            exit_with_stdin: args.exit_with_stdin,
            name: args
                .name
                .or(file.name)
                .or_else(|| args.demo.then(|| "a".to_string())),
            cluster: file.cluster,
        },
    ));
    drop(children);
    result
}

/// What `serve` does besides being a node.
struct Extras {
    /// The demo's other nodes (`--demo`): seed them once this node listens.
    demo: Option<Vec<(String, String)>>,
    /// Shut down when standard input closes.
    exit_with_stdin: bool,
    /// The node's name for people.
    name: Option<String>,
    /// `[cluster]`: join it once replication runs.
    cluster: Option<crate::cluster::ClusterConfig>,
}

async fn serve(
    data: PathBuf,
    listen: SocketAddr,
    replication_listen: SocketAddr,
    settings: NodeSettings,
    auth: AuthConfig,
    quotas: Limits,
    extras: Extras,
) -> Result<(), String> {
    let Extras {
        demo,
        exit_with_stdin,
        name,
        cluster,
    } = extras;
    let dir = data.clone();
    let node = tokio::task::spawn_blocking(move || Node::open(&dir, settings))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let node = Arc::new(node);
    let (tenancy, admin_token) = Tenancy::start(&node, &auth, quotas)?;
    let tenancy = Arc::new(tenancy);
    if tenancy.keyring.is_none() {
        tracing::warn!("[auth] enabled = false: every caller acts as the node administrator");
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let shutdown = shutdown_signal(exit_with_stdin)?;
    tracing::info!(data = %data.display(), address = %local, "node started");
    println!("doppel listening on http://{local}");
    // The token goes to stdout only, never to the logs.
    if let Some(token) = admin_token {
        println!("doppel admin token: {token}");
        println!("(printed on this first start only; use it as: curl -H \"authorization: Bearer $TOKEN\" ...)");
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();

    let upkeep = {
        let node = node.clone();
        tokio::spawn(async move {
            // Each second: a database written at 100k+ updates/s adds tens of MB of log
            // a second, and retention and the next snapshot bound it only as often as
            // they run (docs/BENCHMARKS.md, issue 24, fourth part).
            let mut tick = tokio::time::interval(UPKEEP_EVERY);
            let mut given_back = std::time::Instant::now();
            loop {
                tick.tick().await;
                node.upkeep().await;
                if given_back.elapsed() >= crate::memory::GIVE_BACK_EVERY {
                    given_back = std::time::Instant::now();
                    if let Ok(took) = tokio::task::spawn_blocking(crate::memory::give_back).await {
                        tracing::debug!(
                            took_us = took.as_micros() as u64,
                            "free memory given back"
                        );
                    }
                }
            }
        })
    };
    let plugins = crate::plugins::Runtime::new(crate::plugins::Limits::default())
        .map_err(|e| e.to_string())
        .and_then(|rt| crate::plugins::Registry::open(&node, rt).map_err(|e| e.to_string()))?;
    let plugins = Arc::new(plugins);
    let replication = crate::transport::Replication::start(
        node.clone(),
        tenancy.clone(),
        plugins.clone(),
        replication_listen,
    )
    .await
    .map_err(|e| e.to_string())?;
    if let (Some(others), Some(keyring)) = (demo, tenancy.keyring.as_ref()) {
        let url = format!("http://{local}");
        let token = keyring.issue(
            "demo",
            "*",
            crate::tenancy::roles::Role::Admin,
            30 * 24 * 3600,
        )?;
        tokio::task::spawn_blocking(move || {
            if let Err(e) = super::demo::seed(&token, &url, &others) {
                tracing::error!(error = %e, "the demo setup failed");
            }
        });
    }
    let cluster = match cluster {
        Some(config) => {
            let (node, repl, url) = (node.clone(), replication.clone(), format!("http://{local}"));
            Some(
                tokio::task::spawn_blocking(move || {
                    crate::cluster::Cluster::start(config, node, repl, url)
                })
                .await
                .map_err(|e| e.to_string())??,
            )
        }
        None => None,
    };
    let app = crate::api::router(node.clone(), tenancy, plugins, replication, cluster)
        .layer(axum::Extension(crate::api::links::NodeName(name)));
    // Open event streams end when the signal arrives, so the graceful shutdown does not
    // wait for them.
    let shutdown = async move {
        shutdown.await;
        crate::api::events::close_streams();
    };
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    upkeep.abort();
    tracing::info!("shutting down: flushing the log");
    node.shutdown().map_err(|e| e.to_string())?;
    result.map_err(|e| e.to_string())
}

/// Resolves on Ctrl-C or SIGTERM (or, with `stdin`, when standard input closes). Both
/// handlers are installed when this is called, so call it before announcing readiness:
/// a signal that arrives early still shuts the node down gracefully.
fn shutdown_signal(stdin: bool) -> Result<impl std::future::Future<Output = ()>, String> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot install the SIGTERM handler: {e}"))?;
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| format!("cannot install the Ctrl-C handler: {e}"))?;
    let closed = async move {
        if !stdin {
            return std::future::pending::<()>().await;
        }
        let _ = tokio::task::spawn_blocking(|| {
            use std::io::Read;
            let mut buf = [0u8; 256];
            while std::io::stdin().read(&mut buf).is_ok_and(|n| n > 0) {}
        })
        .await;
    };
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = interrupt.recv() => tracing::info!("Ctrl-C received"),
            _ = closed => tracing::info!("standard input closed"),
        }
    })
}
