//! weft-agent: the per-node daemon. See `weft-agent --help` and README.md.

mod calc;
mod config;
mod ipam;
mod node;
mod service;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnixListenerStream;

use config::Config;
use weft_datastore::{Datastore, NodeRecord};
use ipam::Ipam;
use node::{Dataplane, Node};

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(run(config))
}

async fn run(config: Config) -> anyhow::Result<()> {
    let uplink = weft_dataplane::uplink::lookup(&config.uplink)
        .await
        .with_context(|| format!("uplink {}", config.uplink))?;
    let underlay_ip = match (config.underlay_ip, uplink.ip()) {
        (Some(ip), _) | (None, Some(ip)) => ip,
        (None, None) => bail!("uplink {} has no IPv4 address; give --underlay-ip", uplink.name),
    };
    let mtu = config.pod_mtu(uplink.mtu);
    let me = NodeRecord { name: config.node_name.clone(), underlay_ip, pod_cidr: config.pod_cidr };
    tracing::info!(node = %me.name, %underlay_ip, pod_cidr = %me.pod_cidr, uplink = %uplink.name, mtu, "starting");

    enable_forwarding().context("cannot enable IPv4 forwarding in this network namespace")?;
    let ipam = Ipam::open(&config.state_dir.join("ipam"), config.pod_cidr)?;
    let datastore = Datastore::open(&config.datastore_dir)?;
    let guard = weft_dataplane::bpf::PodGuard::load(&config.bpffs_dir)
        .with_context(|| format!("eBPF pod guard (pins under {})", config.bpffs_dir.display()))?;
    let dataplane = Dataplane::new(
        weft_dataplane::route::RouteTable::open()?,
        weft_dataplane::link::Netlink::current()?,
        guard,
    );
    let node = Arc::new(Node::new(
        me,
        uplink,
        mtu,
        ipam,
        datastore,
        config.state_dir.join("endpoints"),
        dataplane,
    ));

    // Adopt what a previous run left before serving anyone.
    let report = node.reconcile(true).await.context("first reconcile")?;
    tracing::info!(?report, "kernel state adopted");

    let listener = bind(&config.socket)?;
    let service = weft_proto::AgentServer::new(service::AgentService::new(node.clone()));
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let mut server_stop = stop_tx.subscribe();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async move {
                let _ = server_stop.changed().await;
            }),
    );
    tracing::info!(socket = %config.socket.display(), "serving");

    let (wake_tx, mut wake_rx) = mpsc::channel(1);
    let _watcher = node.datastore.watch(wake_tx)?;
    let mut resync = tokio::time::interval(Duration::from_secs(config.resync_seconds));
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    loop {
        let full = tokio::select! {
            _ = resync.tick() => true,
            Some(()) = wake_rx.recv() => false,
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = stop_rx.changed() => break,
        };
        if let Err(e) = node.reconcile(full).await {
            tracing::error!(error = %e, "reconcile failed; retrying on the next event or resync");
        }
    }
    // The dataplane stays as it is: pods keep their connectivity while no
    // agent runs, and the next agent adopts it.
    tracing::info!("stopping; the dataplane is left in place");
    let _ = stop_tx.send(true);
    let _ = server.await;
    let _ = std::fs::remove_file(&config.socket);
    Ok(())
}

/// Binds the gRPC socket, replacing a stale one from a previous run but
/// refusing to steal one a live agent still answers on.
fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("socket directory {}", dir.display()))?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        bail!("another agent is serving on {}", path.display());
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).with_context(|| format!("cannot bind {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Pods' traffic is routed through the node; /proc/sys/net is this network
/// namespace's own.
fn enable_forwarding() -> std::io::Result<()> {
    std::fs::write("/proc/sys/net/ipv4/ip_forward", b"1")
}
