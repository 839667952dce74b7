//! weft-agent: the per-node daemon. See `weft-agent --help` and README.md.

mod config;
mod drivers;
mod health;
mod ipam;
mod node;
mod node_ip;
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

use clap::ValueEnum;
use config::{BgpOnStop, Config, DatastoreKind, Routing};
use drivers::{EndpointsDriver, KernelDrivers, RoutesDriver, TunnelDriver, VxlanDriver};
use health::Health;
use ipam::Ipam;
use node::{Node, TunnelOptions};
use weft_calc::restart::KeptRoutes;
use weft_dataplane::link::Netlink;
use weft_datastore::kubernetes::{KubernetesSource, convert};
use weft_datastore::{ClusterSource, Datastore, SourceEvent};
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
    // The probes answer from the start: a wait for the API server is not death.
    let health = Health::new(liveness_limit(&config));
    let health_listener = tokio::net::TcpListener::bind(config.health_address)
        .await
        .with_context(|| format!("health address {}", config.health_address))?;
    // Ends with the runtime, when `run` returns.
    tokio::spawn(health::serve(health_listener, health.clone()));

    let (source, kubernetes, pod_cidr, internal_ip) = open_source(&config, &health).await?;
    let node_ip = node_ip::detect(&config.node_ip_choice(), internal_ip).await?;
    let uplink_name = match (&config.uplink, &node_ip.interface) {
        (Some(name), _) | (None, Some(name)) => name.clone(),
        (None, None) => bail!(
            "node address {}: no interface holds it; name the uplink with --uplink",
            node_ip.address
        ),
    };
    let uplink = weft_dataplane::uplink::lookup(&uplink_name, Some(node_ip.address))
        .await
        .with_context(|| format!("uplink {uplink_name}"))?;
    if let Some(internal) = internal_ip.filter(|ip| *ip != node_ip.address) {
        // Until the publication lands, other nodes still use the InternalIP.
        tracing::info!(%internal, chosen = %node_ip.address, "the Node's InternalIP is not the chosen node address: publishing the chosen one on the Node for the other nodes");
    }
    let underlay_ip = node_ip.address;
    let mtu = config.pod_mtu(uplink.mtu);
    let me = NodeRecord {
        name: config.node_name.clone(),
        underlay_ip,
        pod_cidr,
    };
    let datastore_name = config
        .datastore
        .to_possible_value()
        .expect("every datastore has a name")
        .get_name()
        .to_string();
    tracing::info!(node = %me.name, datastore = %datastore_name, %underlay_ip, why = %node_ip.reason, pod_cidr = %me.pod_cidr, uplink = %uplink.name, mtu, encap = ?config.encap, cross_subnet = config.cross_subnet, direct_redirect = config.direct_redirect, "starting");
    let origin = node::Origin {
        datastore: datastore_name,
        address_reason: node_ip.reason.clone(),
    };

    enable_forwarding().context("cannot enable IPv4 forwarding in this network namespace")?;
    let ipam = Ipam::open(&config.state_dir.join("ipam"), pod_cidr)?;
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
        Box::new(source),
        config.state_dir.join("endpoints"),
        drivers,
        bgp,
        origin,
    )?);

    // Watch before the first pass's snapshot, so no change falls between.
    let (source_tx, mut source_rx) = mpsc::unbounded_channel();
    let _watch = node.source.watch(source_tx)?;

    // Adopt what a previous run left before serving anyone.
    let report = node.reconcile(true).await.context("first reconcile")?;
    tracing::info!(?report, "kernel state adopted");
    health.node_started(node.clone());
    let publication = kubernetes.map(|k| NodePublication::new(k, &node.me));

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
        health.beat();
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
            Ok(_) => {
                if let Some(publication) = &publication {
                    publication.ensure();
                }
            }
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
    // agent runs, and the next agent adopts it. BGP peers get a Cease and
    // drop this node's routes at once, or (graceful restart) see the
    // sessions close as after a crash and keep them until the next agent.
    tracing::info!(bgp_on_stop = ?config.bgp_on_stop, "stopping; the dataplane is left in place");
    if let Some(bgp) = &node.bgp
        && config.bgp_on_stop == BgpOnStop::Cease
        && let Err(e) = bgp.handle.shut_down().await
    {
        tracing::warn!(error = %e, "BGP shutdown");
    }
    let _ = stop_tx.send(true);
    let _ = server.await;
    let _ = std::fs::remove_file(&config.socket);
    Ok(())
}

/// No heartbeat for this long is a dead agent: three resync periods and a
/// minute, so a slow pass is not death.
fn liveness_limit(config: &Config) -> Duration {
    Duration::from_secs(3 * config.resync_seconds + 60)
}

/// What the datastore gives the start: the source, its typed handle in
/// Kubernetes mode, this node's pod CIDR and (Kubernetes) its InternalIP.
type Opened = (
    Arc<dyn ClusterSource>,
    Option<Arc<KubernetesSource>>,
    ipnetwork::Ipv4Network,
    Option<std::net::Ipv4Addr>,
);

/// Opens the datastore `--datastore` names. With Kubernetes it waits,
/// as long as it takes, until every kind is listed and this node's Node
/// has its pod CIDR: until then nothing is known, and the kernel state a
/// previous run left stays as it is, forwarding.
async fn open_source(config: &Config, health: &Health) -> anyhow::Result<Opened> {
    match config.datastore {
        DatastoreKind::Local => {
            let pod_cidr = config
                .pod_cidr
                .context("--pod-cidr is required with --datastore local")?;
            let store = Datastore::open(&config.datastore_dir)?;
            Ok((Arc::new(store), None, pod_cidr, None))
        }
        DatastoreKind::Kubernetes => {
            let client = weft_datastore::kubernetes::connect(config.kubeconfig.as_deref())
                .await
                .context("the Kubernetes API")?;
            let source = Arc::new(KubernetesSource::start(client));
            let name = &config.node_name;
            let mut waited = 0u64;
            let (pod_cidr, internal_ip) = loop {
                let waiting = if !source.is_synced() {
                    "the first complete list of the Kubernetes API".to_string()
                } else {
                    match source.node(name) {
                        None => format!("Node {name} to exist"),
                        Some(node) => match convert::pod_cidr(&node)? {
                            Some(cidr) => break (cidr, convert::internal_ip(&node)),
                            None => format!(
                                "Node {name}'s spec.podCIDR (the controller manager's node IPAM)"
                            ),
                        },
                    }
                };
                health.waiting_for(format!("waiting for {waiting}"));
                if waited.is_multiple_of(100) {
                    tracing::info!("waiting for {waiting}");
                }
                waited += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            if let Some(given) = config.pod_cidr.filter(|c| *c != pod_cidr) {
                bail!("--pod-cidr {given} is not Node {name}'s spec.podCIDR {pod_cidr}");
            }
            Ok((source.clone(), Some(source), pod_cidr, internal_ip))
        }
    }
}

/// What this node says on its Node object (`NetworkUnavailable=False`
/// and its underlay address), kept so level-triggered: after a pass, if
/// the Node does not say it, one patch is sent in the background (an API
/// server that is away must not stall the loop).
struct NodePublication {
    source: Arc<KubernetesSource>,
    node: String,
    address: std::net::Ipv4Addr,
    in_flight: Arc<std::sync::atomic::AtomicBool>,
}

impl NodePublication {
    fn new(source: Arc<KubernetesSource>, me: &NodeRecord) -> NodePublication {
        NodePublication {
            source,
            node: me.name.clone(),
            address: me.underlay_ip,
            in_flight: Arc::default(),
        }
    }

    fn ensure(&self) {
        use std::sync::atomic::Ordering;
        if self.source.node_status_published(&self.node, self.address)
            || self.in_flight.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let (source, node, address, in_flight) = (
            self.source.clone(),
            self.node.clone(),
            self.address,
            self.in_flight.clone(),
        );
        tokio::spawn(async move {
            let patch = source.publish_node_status(&node, address);
            match tokio::time::timeout(Duration::from_secs(10), patch).await {
                Ok(Ok(())) => tracing::info!(
                    node,
                    %address,
                    "Node status published: NetworkUnavailable=False, underlay address"
                ),
                Ok(Err(e)) => {
                    tracing::warn!(node, error = %e, "cannot publish the Node's status; retrying after the next pass")
                }
                Err(_) => tracing::warn!(
                    node,
                    "the API server did not answer the Node status patch; retrying after the next pass"
                ),
            }
            in_flight.store(false, Ordering::Release);
        });
    }
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
