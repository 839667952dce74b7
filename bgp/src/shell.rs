//! The tokio shell around a [`Speaker`]: real sockets, real time.
//!
//! Every decision stays in the core. One task owns the speaker and feeds it
//! what happens: commands from [`BgpHandle`]s, connection events from one
//! task per connection, accepted connections, and its timer. After every
//! input it carries out the speaker's outputs: it opens connections (with
//! the peer's source address and MD5 key), writes and closes them, and
//! passes Loc-RIB changes and session changes on as [`ShellEvent`]s.
//!
//! Connections are tagged with (peer, direction, generation): an event from
//! a connection that was replaced or closed in the meantime is ignored, as
//! the core has forgotten that connection.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, info, trace, warn};

use crate::rib::{BestRoute, LocRibChange, PeerId};
use crate::session::{Direction, Event};
use crate::speaker::{PeerConfig, PeerStatus, Speaker, SpeakerConfig, SpeakerOutput};
use crate::tcp_md5;

/// An attempt that takes longer is a failure; the core retries with backoff.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A write that makes no progress this long means the peer is gone even if
/// it still sends (our hold timer would not notice).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// After we close our side: how long to wait for the peer to close its own.
/// Closing a socket with unread data sends a RST, which can destroy the
/// NOTIFICATION we just wrote before the peer reads it.
const LINGER: Duration = Duration::from_secs(2);
/// How long `shut_down` waits for the NOTIFICATIONs to go out.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(2);
const READ_BUFFER: usize = 64 * 1024;
const WRITE_BATCH: usize = 64 * 1024;

/// What [`spawn`] needs.
#[derive(Clone, Debug)]
pub struct ShellConfig {
    pub speaker: SpeakerConfig,
    /// Where to accept BGP connections: the node's underlay address, port
    /// 179 (tests use other ports).
    pub listen: SocketAddr,
    /// The port to connect to on peers (179; tests use others).
    pub peer_port: u16,
}

/// One wanted peer: its session settings and its TCP MD5 password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerSpec {
    pub config: PeerConfig,
    pub password: Option<String>,
}

/// What the agent acts on.
#[derive(Clone, Debug)]
pub enum ShellEvent {
    /// The Loc-RIB changed: program (or remove) the kernel route.
    Route(LocRibChange),
    PeerUp {
        address: IpAddr,
    },
    /// `graceful`: the peer's routes are kept as stale while it restarts.
    PeerDown {
        address: IpAddr,
        reason: String,
        graceful: bool,
    },
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShellError {
    /// The task has ended (shut down, or its runtime is gone).
    #[error("the BGP task has stopped")]
    Stopped,
    /// The listener refused the peer's TCP MD5 key (e.g. longer than 80
    /// bytes). The peer is configured anyway; its sessions cannot come up.
    #[error("TCP MD5 key for peer {address}: {source}")]
    Md5Key {
        address: IpAddr,
        #[source]
        source: io::Error,
    },
}

/// Controls the speaker's task. Dropping every handle ends the task like a
/// crash: connections close without NOTIFICATION, so peers that support
/// graceful restart keep our routes. Use [`BgpHandle::shut_down`] to leave
/// for good.
#[derive(Clone)]
pub struct BgpHandle {
    commands: mpsc::Sender<Command>,
}

enum Command {
    SetPeers(Vec<PeerSpec>, oneshot::Sender<Result<(), ShellError>>),
    Originate(IpNetwork, oneshot::Sender<()>),
    Withdraw(IpNetwork, oneshot::Sender<()>),
    Peers(oneshot::Sender<Vec<PeerStatus>>),
    LearnedRoutes(oneshot::Sender<Vec<BestRoute>>),
    Synchronized(oneshot::Sender<bool>),
    ShutDown(oneshot::Sender<()>),
}

impl BgpHandle {
    /// Level-triggered: the whole desired peer set. New peers are added,
    /// peers no longer wanted are removed (Cease/Peer De-configured), peers
    /// whose spec changed (asn, password, rr_client, passive,
    /// local_address) are re-added. MD5 keys are installed on the listener
    /// for every peer with a password (and removed for gone peers) and on
    /// outgoing sockets before connect.
    pub async fn set_peers(&self, peers: Vec<PeerSpec>) -> Result<(), ShellError> {
        self.request(|reply| Command::SetPeers(peers, reply))
            .await?
    }

    /// Announces a prefix of ours (the node's pod CIDR) to every peer.
    pub async fn originate(&self, prefix: IpNetwork) -> Result<(), ShellError> {
        self.request(|reply| Command::Originate(prefix, reply))
            .await
    }

    pub async fn withdraw(&self, prefix: IpNetwork) -> Result<(), ShellError> {
        self.request(|reply| Command::Withdraw(prefix, reply)).await
    }

    pub async fn peers(&self) -> Result<Vec<PeerStatus>, ShellError> {
        self.request(Command::Peers).await
    }

    /// The learned IPv4/IPv6 routes of the Loc-RIB (best routes with
    /// `from: Some(_)`, stale ones included), for a level-triggered
    /// reconciler.
    pub async fn learned_routes(&self) -> Result<Vec<BestRoute>, ShellError> {
        self.request(Command::LearnedRoutes).await
    }

    /// Every peer has sent End-of-RIB since its session came up.
    pub async fn synchronized(&self) -> Result<bool, ShellError> {
        self.request(Command::Synchronized).await
    }

    /// Cease/Administrative Shutdown to every peer, waits (at most about
    /// 2 s) until the NOTIFICATIONs are written, ends the task.
    pub async fn shut_down(&self) -> Result<(), ShellError> {
        self.request(Command::ShutDown).await
    }

    async fn request<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, ShellError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| ShellError::Stopped)?;
        answer.await.map_err(|_| ShellError::Stopped)
    }
}

/// Binds the listener (error if the address is taken) and spawns the
/// speaker's task on the current tokio runtime.
pub async fn spawn(
    config: ShellConfig,
    events: mpsc::UnboundedSender<ShellEvent>,
) -> io::Result<BgpHandle> {
    let listener = TcpListener::bind(config.listen).await?;
    info!(listen = %config.listen, local_as = config.speaker.local_as, router_id = %config.speaker.router_id, "BGP speaker listening");
    let (commands, command_rx) = mpsc::channel(64);
    let (conn_tx, conn_rx) = mpsc::unbounded_channel();
    let shell = Shell {
        speaker: Speaker::new(config.speaker),
        listener,
        listen: config.listen,
        peer_port: config.peer_port,
        events,
        peers: BTreeMap::new(),
        addresses: HashMap::new(),
        conns: HashMap::new(),
        closing: Vec::new(),
        conn_tx,
        next_generation: 0,
    };
    tokio::spawn(shell.run(command_rx, conn_rx));
    Ok(BgpHandle { commands })
}

/// Which connection an event is about.
#[derive(Clone, Copy, Debug)]
struct ConnId {
    peer: PeerId,
    direction: Direction,
    generation: u64,
}

enum ConnEvent {
    Connected(ConnId, TcpStream),
    ConnectFailed(ConnId, io::Error),
    Bytes(ConnId, Vec<u8>),
    /// The peer closed the connection, or reading or writing failed.
    Closed(ConnId, Option<io::Error>),
}

/// A connection as the shell holds it.
enum Conn {
    Connecting {
        generation: u64,
        task: JoinHandle<()>,
    },
    /// Dropping `writer` makes the connection's task write what is queued,
    /// close, and end.
    Live {
        generation: u64,
        writer: mpsc::UnboundedSender<Vec<u8>>,
        task: JoinHandle<()>,
    },
}

impl Conn {
    fn generation(&self) -> u64 {
        match self {
            Conn::Connecting { generation, .. } | Conn::Live { generation, .. } => *generation,
        }
    }
}

struct Shell {
    speaker: Speaker,
    listener: TcpListener,
    listen: SocketAddr,
    peer_port: u16,
    events: mpsc::UnboundedSender<ShellEvent>,
    peers: BTreeMap<IpAddr, (PeerId, PeerSpec)>,
    /// Kept until a removed peer's last outputs (its PeerDown) are handled.
    addresses: HashMap<PeerId, IpAddr>,
    conns: HashMap<(PeerId, Direction), Conn>,
    /// Tasks of connections we closed, still writing or lingering.
    closing: Vec<JoinHandle<()>>,
    conn_tx: mpsc::UnboundedSender<ConnEvent>,
    next_generation: u64,
}

impl Shell {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut conn_rx: mpsc::UnboundedReceiver<ConnEvent>,
    ) {
        loop {
            let deadline = self.speaker.poll_timeout();
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::ShutDown(reply)) => {
                        self.shut_down().await;
                        let _ = reply.send(());
                        return;
                    }
                    Some(command) => self.command(command),
                    None => {
                        info!("every BGP handle dropped: stopping without NOTIFICATION");
                        break;
                    }
                },
                Some(event) = conn_rx.recv() => self.connection_event(event),
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, remote)) => self.accepted(stream, remote),
                    Err(e) => {
                        // E.g. out of file descriptors: do not spin.
                        warn!(error = %e, "accepting a BGP connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                () = sleep_until(deadline) => self.speaker.handle_timeout(Instant::now()),
            }
            self.drain();
        }
        for (_, conn) in self.conns.drain() {
            match conn {
                Conn::Connecting { task, .. } | Conn::Live { task, .. } => task.abort(),
            }
        }
        for task in self.closing.drain(..) {
            task.abort();
        }
    }

    fn command(&mut self, command: Command) {
        let now = Instant::now();
        match command {
            Command::SetPeers(peers, reply) => {
                let result = self.set_peers(now, peers);
                let _ = reply.send(result);
            }
            Command::Originate(prefix, reply) => {
                info!(%prefix, "originating");
                self.speaker.originate(now, prefix);
                let _ = reply.send(());
            }
            Command::Withdraw(prefix, reply) => {
                info!(%prefix, "withdrawing");
                self.speaker.withdraw(now, prefix);
                let _ = reply.send(());
            }
            Command::Peers(reply) => {
                let _ = reply.send(self.speaker.peers());
            }
            Command::LearnedRoutes(reply) => {
                let routes = self
                    .speaker
                    .rib()
                    .loc_rib()
                    .filter(|(_, best)| best.from.is_some());
                let _ = reply.send(routes.map(|(_, best)| best.clone()).collect());
            }
            Command::Synchronized(reply) => {
                let _ = reply.send(self.speaker.synchronized());
            }
            Command::ShutDown(_) => unreachable!("handled by run"),
        }
    }

    fn set_peers(&mut self, now: Instant, specs: Vec<PeerSpec>) -> Result<(), ShellError> {
        let desired: BTreeMap<IpAddr, PeerSpec> =
            specs.into_iter().map(|s| (s.config.address, s)).collect();
        // Gone and changed peers first: a changed peer is re-added fresh.
        let outdated: Vec<IpAddr> = self
            .peers
            .iter()
            .filter(|(a, (_, spec))| desired.get(a) != Some(spec))
            .map(|(a, _)| *a)
            .collect();
        for address in outdated {
            let Some((id, spec)) = self.peers.remove(&address) else {
                continue;
            };
            info!(%address, "removing peer");
            self.speaker.remove_peer(now, id);
            self.drain();
            self.forget(id);
            let keeps_password = desired.get(&address).is_some_and(|s| s.password.is_some());
            if spec.password.is_some()
                && !keeps_password
                && let Err(e) = self.set_listener_key(address, b"")
            {
                warn!(%address, error = %e, "removing the TCP MD5 key failed");
            }
        }
        let mut result = Ok(());
        for (address, spec) in desired {
            if self.peers.contains_key(&address) {
                continue;
            }
            if let Some(password) = &spec.password
                && let Err(source) = self.set_listener_key(address, password.as_bytes())
            {
                warn!(%address, error = %source, "installing the TCP MD5 key failed");
                if result.is_ok() {
                    result = Err(ShellError::Md5Key { address, source });
                }
            }
            info!(%address, asn = spec.config.asn, md5 = spec.password.is_some(), "adding peer");
            let id = self.speaker.add_peer(now, spec.config.clone());
            self.addresses.insert(id, address);
            self.peers.insert(address, (id, spec));
            self.drain();
        }
        result
    }

    /// The listener holds one key per peer; an IPv6 listener sees IPv4
    /// peers as mapped addresses.
    fn set_listener_key(&self, address: IpAddr, key: &[u8]) -> io::Result<()> {
        let address = match address {
            IpAddr::V4(v4) if self.listen.is_ipv6() => IpAddr::V6(v4.to_ipv6_mapped()),
            _ => address,
        };
        tcp_md5::set_key(self.listener.as_fd(), address, key)
    }

    /// Drops what is left of a removed peer.
    fn forget(&mut self, id: PeerId) {
        self.addresses.remove(&id);
        for direction in [Direction::Outgoing, Direction::Incoming] {
            self.close(id, direction);
        }
    }

    fn accepted(&mut self, stream: TcpStream, remote: SocketAddr) {
        let address = remote.ip().to_canonical();
        let Some(peer) = self.speaker.peer_by_address(address) else {
            debug!(%address, "connection from an unknown address: closed");
            return;
        };
        if !self.speaker.connection_event(
            Instant::now(),
            peer,
            Direction::Incoming,
            Event::TcpConnectionConfirmed,
        ) {
            debug!(%address, "incoming connection refused by the session: closed");
            return;
        }
        debug!(%address, "incoming connection accepted");
        self.start_connection(peer, Direction::Incoming, stream);
    }

    fn connection_event(&mut self, event: ConnEvent) {
        let now = Instant::now();
        let id = match &event {
            ConnEvent::Connected(id, _)
            | ConnEvent::ConnectFailed(id, _)
            | ConnEvent::Bytes(id, _)
            | ConnEvent::Closed(id, _) => *id,
        };
        let key = (id.peer, id.direction);
        if self.conns.get(&key).map(Conn::generation) != Some(id.generation) {
            trace!(?id, "event from a connection already gone: ignored");
            return;
        }
        let address = self.address(id.peer);
        match event {
            ConnEvent::Connected(_, stream) => {
                debug!(%address, "connected");
                self.start_connection(id.peer, id.direction, stream);
                self.speaker.connection_event(
                    now,
                    id.peer,
                    id.direction,
                    Event::TcpConnectionSucceeded,
                );
            }
            ConnEvent::ConnectFailed(_, e) => {
                debug!(%address, error = %e, "connecting failed");
                self.conns.remove(&key);
                self.speaker.connection_event(
                    now,
                    id.peer,
                    id.direction,
                    Event::TcpConnectionFails,
                );
            }
            ConnEvent::Bytes(_, bytes) => {
                self.speaker.connection_event(
                    now,
                    id.peer,
                    id.direction,
                    Event::BytesReceived(&bytes),
                );
            }
            ConnEvent::Closed(_, error) => {
                match error {
                    Some(e) => {
                        debug!(%address, direction = ?id.direction, error = %e, "connection failed")
                    }
                    None => {
                        debug!(%address, direction = ?id.direction, "connection closed by the peer")
                    }
                }
                self.close(id.peer, id.direction);
                self.speaker.connection_event(
                    now,
                    id.peer,
                    id.direction,
                    Event::TcpConnectionFails,
                );
            }
        }
    }

    /// Carries out the speaker's outputs.
    fn drain(&mut self) {
        while let Some(output) = self.speaker.poll_output() {
            match output {
                SpeakerOutput::Connect { peer, address } => self.connect(peer, address),
                SpeakerOutput::Transmit {
                    peer,
                    direction,
                    bytes,
                } => match self.conns.get(&(peer, direction)) {
                    Some(Conn::Live { writer, .. }) => {
                        // A send error: the connection's task has ended and
                        // its Closed event is on the way.
                        let _ = writer.send(bytes);
                    }
                    _ => debug!(%peer, ?direction, "nothing to transmit on: dropped"),
                },
                SpeakerOutput::Disconnect { peer, direction } => self.close(peer, direction),
                SpeakerOutput::Route(change) => self.emit(ShellEvent::Route(change)),
                SpeakerOutput::PeerUp { peer, negotiated } => {
                    let address = self.address(peer);
                    info!(%address, hold_time = negotiated.hold_time, "session established");
                    self.emit(ShellEvent::PeerUp { address });
                }
                SpeakerOutput::PeerDown {
                    peer,
                    reason,
                    graceful,
                } => {
                    let address = self.address(peer);
                    warn!(%address, %reason, graceful, "session down");
                    self.emit(ShellEvent::PeerDown {
                        address,
                        reason: reason.to_string(),
                        graceful,
                    });
                }
            }
        }
    }

    fn emit(&self, event: ShellEvent) {
        // Nobody listening is not our problem: the speaker runs on.
        let _ = self.events.send(event);
    }

    fn address(&self, peer: PeerId) -> IpAddr {
        self.addresses
            .get(&peer)
            .copied()
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }

    fn generation(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }

    /// Opens a connection to the peer from its `local_address`, with its
    /// MD5 key, in a task of its own.
    fn connect(&mut self, peer: PeerId, address: IpAddr) {
        let Some((_, spec)) = self.peers.get(&address) else {
            return;
        };
        let local = spec.config.local_address;
        let password = spec.password.clone();
        let remote = SocketAddr::new(address, self.peer_port);
        let id = ConnId {
            peer,
            direction: Direction::Outgoing,
            generation: self.generation(),
        };
        let events = self.conn_tx.clone();
        debug!(%address, "connecting");
        let task = tokio::spawn(async move {
            let event =
                match tokio::time::timeout(CONNECT_TIMEOUT, connect(remote, local, password)).await
                {
                    Ok(Ok(stream)) => ConnEvent::Connected(id, stream),
                    Ok(Err(e)) => ConnEvent::ConnectFailed(id, e),
                    Err(_) => ConnEvent::ConnectFailed(id, io::ErrorKind::TimedOut.into()),
                };
            let _ = events.send(event);
        });
        self.replace(
            peer,
            Direction::Outgoing,
            Conn::Connecting {
                generation: id.generation,
                task,
            },
        );
    }

    fn start_connection(&mut self, peer: PeerId, direction: Direction, stream: TcpStream) {
        if let Err(e) = stream.set_nodelay(true) {
            debug!(error = %e, "TCP_NODELAY");
        }
        let id = ConnId {
            peer,
            direction,
            generation: self.generation(),
        };
        let (writer, outgoing) = mpsc::unbounded_channel();
        let task = tokio::spawn(run_connection(id, stream, outgoing, self.conn_tx.clone()));
        self.replace(
            peer,
            direction,
            Conn::Live {
                generation: id.generation,
                writer,
                task,
            },
        );
    }

    fn replace(&mut self, peer: PeerId, direction: Direction, conn: Conn) {
        self.close(peer, direction);
        self.conns.insert((peer, direction), conn);
    }

    /// Abandons an attempt, or closes a connection after its queued writes.
    fn close(&mut self, peer: PeerId, direction: Direction) {
        match self.conns.remove(&(peer, direction)) {
            Some(Conn::Connecting { task, .. }) => task.abort(),
            Some(Conn::Live { writer, task, .. }) => {
                drop(writer);
                self.closing.retain(|t| !t.is_finished());
                self.closing.push(task);
            }
            None => {}
        }
    }

    async fn shut_down(&mut self) {
        info!("shutting down: Cease to every peer");
        self.speaker.shut_down(Instant::now());
        self.drain();
        let open: Vec<(PeerId, Direction)> = self.conns.keys().copied().collect();
        for (peer, direction) in open {
            self.close(peer, direction);
        }
        let mut tasks = std::mem::take(&mut self.closing);
        let all_closed = tokio::time::timeout(SHUTDOWN_WAIT, async {
            for task in &mut tasks {
                let _ = task.await;
            }
        })
        .await;
        if all_closed.is_err() {
            warn!("connections still closing after {SHUTDOWN_WAIT:?}: dropped");
        }
        for task in tasks {
            task.abort();
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

async fn connect(
    remote: SocketAddr,
    local: Ipv4Addr,
    password: Option<String>,
) -> io::Result<TcpStream> {
    let socket = if remote.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // The source address is the next hop we advertise: it must be the one
    // the peer expects, not whatever the routing table picks.
    if remote.is_ipv4() && !local.is_unspecified() {
        socket.bind(SocketAddr::new(local.into(), 0))?;
    }
    if let Some(password) = password {
        tcp_md5::set_key(socket.as_fd(), remote.ip(), password.as_bytes())?;
    }
    socket.connect(remote).await
}

/// One connection: reads become `Bytes` events, queued writes go out in
/// order. When the shell drops the writer's sender, writes what is queued,
/// closes our side and waits a little for the peer to close its own.
async fn run_connection(
    id: ConnId,
    mut stream: TcpStream,
    mut outgoing: mpsc::UnboundedReceiver<Vec<u8>>,
    events: mpsc::UnboundedSender<ConnEvent>,
) {
    let (mut reader, mut writer) = stream.split();
    let reading = async {
        let mut buffer = vec![0; READ_BUFFER];
        loop {
            match reader.read(&mut buffer).await {
                Ok(0) => return None,
                Ok(n) => {
                    if events
                        .send(ConnEvent::Bytes(id, buffer[..n].to_vec()))
                        .is_err()
                    {
                        return None;
                    }
                }
                Err(e) => return Some(e),
            }
        }
    };
    let writing = async {
        while let Some(mut bytes) = outgoing.recv().await {
            // What is already queued goes in the same write: with
            // TCP_NODELAY, one segment per message would be wasteful when
            // a table is sent.
            while bytes.len() < WRITE_BATCH
                && let Ok(more) = outgoing.try_recv()
            {
                bytes.extend_from_slice(&more);
            }
            match tokio::time::timeout(WRITE_TIMEOUT, writer.write_all(&bytes)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "write stalled")),
            }
        }
        Ok(())
    };
    let closed_by_us = tokio::select! {
        error = reading => {
            let _ = events.send(ConnEvent::Closed(id, error));
            false
        }
        written = writing => match written {
            Ok(()) => true,
            Err(e) => {
                let _ = events.send(ConnEvent::Closed(id, Some(e)));
                false
            }
        },
    };
    if closed_by_us {
        let _ = tokio::time::timeout(LINGER, async {
            let _ = writer.shutdown().await;
            let mut buffer = [0; 4096];
            while let Ok(n) = reader.read(&mut buffer).await
                && n > 0
            {}
        })
        .await;
    }
}
