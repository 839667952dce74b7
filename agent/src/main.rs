//! weft-agent: the per-node daemon. See `weft-agent --help` and README.md.

mod config;
mod drivers;
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

use config::{Config, Routing};
use drivers::{EndpointsDriver, KernelDrivers, RoutesDriver, TunnelDriver, VxlanDriver};
use ipam::Ipam;
use node::{Node, TunnelOptions};
use weft_calc::restart::KeptRoutes;
use weft_dataplane::link::Netlink;
use weft_datastore::{Datastore, SourceEvent};
use weft_model::NodeRecord;

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
        (None, None) => bail!(
            "uplink {} has no IPv4 address; give --underlay-ip",
            uplink.name
        ),
    };
    let mtu = config.pod_mtu(uplink.mtu);
    let me = NodeRecord {
        name: config.node_name.clone(),
        underlay_ip,
        pod_cidr: config.pod_cidr,
    };
    tracing::info!(node = %me.name, %underlay_ip, pod_cidr = %me.pod_cidr, uplink = %uplink.name, mtu, encap = ?config.encap, cross_subnet = config.cross_subnet, direct_redirect = config.direct_redirect, "starting");

    enable_forwarding().context("cannot enable IPv4 forwarding in this network namespace")?;
    let ipam = Ipam::open(&config.state_dir.join("ipam"), config.pod_cidr)?;
    let datastore = Datastore::open(&config.datastore_dir)?;
    let guard = weft_dataplane::bpf::PodGuard::load(&config.bpffs_dir)
        .with_context(|| format!("eBPF pod guard (pins under {})", config.bpffs_dir.display()))?;
    let routes = weft_dataplane::route::RouteTable::open()?;
    let (bgp, mut bgp_events) = match config.routing {
        Routing::Bgp => {
            let (bgp, events) = start_bgp(&config, &me, &routes).await?;
            (Some(bgp), Some(events))
        }
        Routing::Static => (None, None),
    };
    let tunnel =
        weft_dataplane::bpf::UplinkPrograms::load(&config.bpffs_dir).with_context(|| {
            format!(
                "eBPF uplink programs (pins under {})",
                config.bpffs_dir.display()
            )
        })?;
    let options = TunnelOptions {
        encap: config.encap,
        cross_subnet: config.cross_subnet,
        direct_redirect: config.direct_redirect,
        service_range: config.service_cluster_ip_range,
    };
    let policy_maps =
        weft_dataplane::bpf::PolicyMaps::load(&config.bpffs_dir).with_context(|| {
            format!(
                "eBPF policy maps (pins under {})",
                config.bpffs_dir.display()
            )
        })?;
    let drivers = KernelDrivers {
        policy: drivers::PolicyDriver::new(policy_maps),
        endpoints: EndpointsDriver::new(guard, Netlink::current()?),
        tunnel: TunnelDriver::new(
            tunnel,
            Netlink::current()?,
            uplink.name.clone(),
            node::tunnel_config(me.underlay_ip, &uplink, options),
            config.encap,
        ),
        vxlan: VxlanDriver::new(Netlink::current()?),
        routes: RoutesDriver::new(routes),
    };
    let node = Arc::new(Node::new(
        me,
        uplink,
        mtu,
        options,
        ipam,
        Box::new(datastore),
        config.state_dir.join("endpoints"),
        drivers,
        bgp,
    )?);

    // Watch before the first pass's snapshot, so no change falls between.
    let (source_tx, mut source_rx) = mpsc::unbounded_channel();
    let _watch = node.source.watch(source_tx)?;

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

    let mut resync = tokio::time::interval(Duration::from_secs(config.resync_seconds));
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    loop {
        let full = tokio::select! {
            _ = resync.tick() => true,
            Some(event) = source_rx.recv() => {
                // Coalesce a burst (a lab coming up) into one pass.
                let mut events: Vec<SourceEvent> = vec![event];
                while let Ok(event) = source_rx.try_recv() {
                    events.push(event);
                }
                if let Err(e) = node.cluster_events(events).await {
                    tracing::error!(error = %e, "cluster source; resyncing on the next pass");
                    true
                } else {
                    false
                }
            }
            Some(event) = next_bgp_event(&mut bgp_events) => {
                log_bgp_event(&event);
                // Coalesce a burst (a peer's whole table) into one pass.
                while let Some(Ok(event)) = bgp_events.as_mut().map(|rx| rx.try_recv()) {
                    log_bgp_event(&event);
                }
                node.bgp_event().await;
                false
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = stop_rx.changed() => break,
        };
        match node.reconcile(full).await {
            Ok(_) => {}
            // Without its speaker the node would quietly stop exchanging
            // routes: end, so the DaemonSet restarts the agent (peers keep
            // the routes meanwhile, graceful restart).
            Err(node::ReconcileError::Bgp(weft_bgp::shell::ShellError::Stopped)) => {
                let _ = stop_tx.send(true);
                let _ = server.await;
                let _ = std::fs::remove_file(&config.socket);
                bail!("the BGP speaker stopped; exiting so the agent is restarted");
            }
            Err(e) => {
                tracing::error!(error = %e, "reconcile failed; retrying on the next event or resync")
            }
        }
    }
    // The dataplane stays as it is: pods keep their connectivity while no
    // agent runs, and the next agent adopts it. BGP peers are told with a
    // Cease, so they drop this node's routes at once (a SIGKILL instead
    // leaves them to graceful restart).
    tracing::info!("stopping; the dataplane is left in place");
    if let Some(bgp) = &node.bgp
        && let Err(e) = bgp.handle.shut_down().await
    {
        tracing::warn!(error = %e, "BGP shutdown");
    }
    let _ = stop_tx.send(true);
    let _ = server.await;
    let _ = std::fs::remove_file(&config.socket);
    Ok(())
}

type BgpEvents = tokio::sync::mpsc::UnboundedReceiver<weft_bgp::shell::ShellEvent>;

/// Starts the BGP speaker on the underlay address and announces the pod
/// CIDR. BGP routes a previous run left in the kernel mean this is a
/// restart with forwarding kept: the speaker says so (graceful restart's R
/// and F bits) and the routes stay until the Loc-RIB is complete again.
async fn start_bgp(
    config: &Config,
    me: &NodeRecord,
    routes: &weft_dataplane::route::RouteTable,
) -> anyhow::Result<(node::Bgp, BgpEvents)> {
    use weft_bgp::session::GracefulRestartConfig;
    let kept = KeptRoutes::at_start(
        &routes.owned().await?,
        std::time::Instant::now(),
        Duration::from_secs(config.graceful_restart_seconds.into()),
    );
    let restarting = kept.is_some();
    let mut speaker =
        weft_bgp::speaker::SpeakerConfig::new(config.as_number, weft_calc::routing::router_id(me));
    if config.route_reflectors.contains(&me.name) {
        speaker.cluster_id = Some(weft_calc::routing::router_id(me));
    }
    speaker.connect_retry = Duration::from_secs(3);
    speaker.graceful_restart = Some(GracefulRestartConfig {
        restart_time: config.graceful_restart_seconds,
        restarting,
        forwarding_preserved: restarting,
        ..GracefulRestartConfig::default()
    });
    let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
    let listen = std::net::SocketAddr::new(me.underlay_ip.into(), config.bgp_port);
    let handle = weft_bgp::shell::spawn(
        weft_bgp::shell::ShellConfig {
            speaker,
            listen,
            peer_port: config.bgp_port,
        },
        events_tx,
    )
    .await
    .with_context(|| format!("BGP speaker on {listen}"))?;
    handle
        .originate(ipnetwork::IpNetwork::V4(me.pod_cidr))
        .await?;
    tracing::info!(%listen, asn = config.as_number, restarting, kept = kept.as_ref().map_or(0, KeptRoutes::len), "BGP speaker started");
    let bgp = node::Bgp {
        handle,
        as_number: config.as_number,
        route_reflectors: config.route_reflectors.clone(),
        kept: std::sync::Mutex::new(kept),
        peers_configured: std::sync::atomic::AtomicBool::new(false),
        wanted: std::sync::Mutex::new(Vec::new()),
    };
    Ok((bgp, events_rx))
}

async fn next_bgp_event(events: &mut Option<BgpEvents>) -> Option<weft_bgp::shell::ShellEvent> {
    match events {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn log_bgp_event(event: &weft_bgp::shell::ShellEvent) {
    use weft_bgp::shell::ShellEvent;
    match event {
        ShellEvent::PeerUp { address } => {
            tracing::info!(peer = %address, "BGP session established")
        }
        ShellEvent::PeerDown {
            address,
            reason,
            graceful,
        } => {
            tracing::warn!(peer = %address, %reason, graceful, "BGP session down")
        }
        ShellEvent::Route(_) => {}
    }
}

/// Binds the gRPC socket, replacing a stale one from a previous run but
/// refusing to steal one a live agent still answers on.
fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("socket directory {}", dir.display()))?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        bail!("another agent is serving on {}", path.display());
    }
    let _ = std::fs::remove_file(path);
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot bind {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Pods' traffic is routed through the node; /proc/sys/net is this network
/// namespace's own.
fn enable_forwarding() -> std::io::Result<()> {
    std::fs::write("/proc/sys/net/ipv4/ip_forward", b"1")
}
