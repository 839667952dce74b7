//! Reachability probes between network namespaces, without helper
//! processes or iputils: sockets are created on a thread inside the
//! namespace (a socket stays in the namespace it was made in), ICMP echo
//! over a raw socket, TCP over a connection to a responder listening in
//! the target namespace. The one ping of the lab and of the integration
//! tests: [`Echo`] also sends big and Don't Fragment requests, and says
//! what answered instead of the echo (an ICMP error, or the local "message
//! too long" with the path MTU).

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use weft_dataplane::netns::{NetnsError, run_in};

use crate::matrix::{Matrix, PairResult};

/// Why a probe failed, in words fit for the matrix's failure lines.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("no echo reply from {dst} after {tries} tries of {} ms{}", timeout.as_millis(),
            last.as_ref().map(|l| format!(" (last: {l})")).unwrap_or_default())]
    NoEchoReply {
        dst: Ipv4Addr,
        tries: u32,
        timeout: Duration,
        last: Option<String>,
    },
    /// A Don't Fragment request above the path MTU, refused before it
    /// left (`ping -M do` says "message too long, mtu=N").
    #[error("a {size}-byte echo request to {dst} with DF set is above the path MTU{}",
            mtu.map(|m| format!(" {m}")).unwrap_or_default())]
    TooBig {
        dst: Ipv4Addr,
        size: u16,
        mtu: Option<u32>,
    },
    #[error("no UDP echo from {dst} after {tries} tries of {} ms", timeout.as_millis())]
    NoUdpEcho {
        dst: SocketAddrV4,
        tries: u32,
        timeout: Duration,
    },
    #[error("{dst} answered {got:?} instead of echoing {sent:?}")]
    WrongEcho {
        dst: SocketAddrV4,
        sent: String,
        got: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ProbeError {
    let what = what.into();
    move |source| ProbeError::Io { what, source }
}

/// Timeouts and retries of one pair's probes.
#[derive(Debug, Clone, Copy)]
pub struct ProbeConfig {
    /// How long to wait for each echo reply; the first may wait for ARP.
    pub icmp_timeout: Duration,
    pub icmp_tries: u32,
    /// Connect and read timeout of each TCP attempt.
    pub tcp_timeout: Duration,
    pub tcp_tries: u32,
    /// Pairs probed at once.
    pub parallelism: usize,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            icmp_timeout: Duration::from_secs(1),
            icmp_tries: 3,
            tcp_timeout: Duration::from_millis(1500),
            tcp_tries: 2,
            parallelism: 32,
        }
    }
}

/// A pod as the prober sees it: a namespace and an address in it.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    pub name: String,
    pub netns: PathBuf,
    pub ip: Ipv4Addr,
}

/// Identifiers of echo requests, distinct per probe within this process
/// and unlikely to collide with another process's.
static NEXT_ECHO_ID: AtomicU16 = AtomicU16::new(0);

fn next_echo_id() -> u16 {
    let base = (std::process::id() as u16).wrapping_mul(40503);
    base.wrapping_add(NEXT_ECHO_ID.fetch_add(1, Ordering::Relaxed))
}

/// ICMP echo requests as `ping` sends them: how long to wait for each
/// answer, how many to send at most, how big, and whether they may be
/// fragmented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Echo {
    pub timeout: Duration,
    pub tries: u32,
    /// The request's IPv4 total length; never below [`Echo::MIN_SIZE`].
    pub size: u16,
    /// Don't Fragment: a request above the path MTU is then refused
    /// before it leaves ([`ProbeError::TooBig`]).
    pub df: bool,
    /// The source address, one of the namespace's (`ping -I ADDR`); `None`:
    /// the one routing picks.
    pub source: Option<Ipv4Addr>,
}

impl Echo {
    /// IPv4 and ICMP headers and the probe's own payload.
    pub const MIN_SIZE: u16 = 20 + 8 + ECHO_PAYLOAD.len() as u16;

    /// Requests of the smallest size, fragmentable.
    pub fn new(timeout: Duration, tries: u32) -> Echo {
        Echo {
            timeout,
            tries,
            size: Echo::MIN_SIZE,
            df: false,
            source: None,
        }
    }

    /// Requests of IPv4 total length `size` (`ping -s size-28`).
    pub fn with_size(self, size: u16) -> Echo {
        Echo {
            size: size.max(Echo::MIN_SIZE),
            ..self
        }
    }

    /// Requests with Don't Fragment set (`ping -M do`).
    pub fn with_df(self) -> Echo {
        Echo { df: true, ..self }
    }

    /// Requests from `source` (`ping -I source`).
    pub fn with_source(self, source: Ipv4Addr) -> Echo {
        Echo {
            source: Some(source),
            ..self
        }
    }
}

/// Sends ICMP echo requests from inside `netns` to `dst` until one is
/// answered; returns the round-trip time of the answered one.
pub fn icmp_echo(netns: &Path, dst: Ipv4Addr, echo: Echo) -> Result<Duration, ProbeError> {
    run_in(netns, move || icmp_echo_here(dst, echo))?
}

/// `icmp_echo` in the calling thread's namespace.
pub fn icmp_echo_here(dst: Ipv4Addr, echo: Echo) -> Result<Duration, ProbeError> {
    let Echo {
        timeout,
        tries,
        size,
        df,
        source,
    } = echo;
    // SAFETY: plain socket(2); the fd is owned right away.
    let raw = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_ICMP,
        )
    };
    if raw < 0 {
        return Err(io("opening a raw ICMP socket (needs CAP_NET_RAW)")(
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: `raw` is a fresh fd nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    if df {
        set_pmtu_discovery(&socket, libc::IP_PMTUDISC_DO)
            .map_err(io("setting Don't Fragment on the raw ICMP socket"))?;
    }
    if let Some(source) = source {
        bind(&socket, source).map_err(io(format!("binding the raw ICMP socket to {source}")))?;
    }
    let id = next_echo_id();
    let addr = sockaddr(dst);
    let mut last = None;
    for seq in 1..=tries.max(1) as u16 {
        let request = echo_request(id, seq, usize::from(size) - 20);
        // SAFETY: buffer and address are valid for the given lengths.
        let sent = unsafe {
            libc::sendto(
                socket.as_raw_fd(),
                request.as_ptr().cast(),
                request.len(),
                0,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        let started = Instant::now();
        if sent < 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::EMSGSIZE) {
                return Err(ProbeError::TooBig {
                    dst,
                    size,
                    mtu: path_mtu(dst),
                });
            }
            // e.g. ENETUNREACH without a route; wait and try again, a
            // route may be on its way.
            last = Some(format!("sendto: {error}"));
            thread::sleep(timeout);
            continue;
        }
        let deadline = started + timeout;
        let mut buf = [0u8; 1500];
        loop {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            if !wait_readable(&socket, deadline - now).map_err(io("polling the raw ICMP socket"))? {
                break;
            }
            // SAFETY: buf is valid for its length.
            let n =
                unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io("receiving on the raw ICMP socket")(
                    std::io::Error::last_os_error(),
                ));
            }
            match classify_reply(&buf[..n as usize], dst, id, seq) {
                Reply::Echo => return Ok(started.elapsed()),
                Reply::Error(what) => last = Some(what),
                Reply::Other => {}
            }
        }
    }
    Err(ProbeError::NoEchoReply {
        dst,
        tries: tries.max(1),
        timeout,
        last,
    })
}

pub(crate) fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn bind(socket: &OwnedFd, ip: Ipv4Addr) -> std::io::Result<()> {
    let addr = sockaddr(ip);
    // SAFETY: bind with a valid address of the given length.
    os_result(unsafe {
        libc::bind(
            socket.as_raw_fd(),
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    })
}

fn set_pmtu_discovery(socket: &OwnedFd, mode: libc::c_int) -> std::io::Result<()> {
    // SAFETY: setsockopt with a valid int option value.
    os_result(unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            (&raw const mode).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
}

/// A system call's 0 as `Ok`, anything else as the OS error.
fn os_result(rc: libc::c_int) -> std::io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The path MTU towards `dst` as this namespace's routing knows it (route
/// MTU, device MTU, learned PMTU): what `ping -M do` reports as `mtu=`.
/// Read off a UDP socket connected to `dst`, as IP_MTU needs a connected
/// socket and connecting the raw one would filter out ICMP errors from
/// other addresses.
fn path_mtu(dst: Ipv4Addr) -> Option<u32> {
    let socket = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    socket.connect((dst, 9)).ok()?;
    let mut mtu: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt into an int of the given length.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU,
            (&raw mut mtu).cast(),
            &raw mut len,
        )
    };
    (rc == 0).then_some(mtu as u32)
}

pub(crate) fn wait_readable(socket: &OwnedFd, within: Duration) -> std::io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: socket.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = within.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&raw mut pfd, 1, ms) };
    match n {
        n if n < 0 => {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            }
        }
        0 => Ok(false),
        _ => Ok(true),
    }
}

const ECHO_PAYLOAD: &[u8; 16] = b"weft-lab-probe\0\0";

/// An ICMP echo request (type 8) of `len` bytes (at least its header and
/// the probe's payload, padded with zeros) with its checksum.
pub fn echo_request(id: u16, seq: u16, len: usize) -> Vec<u8> {
    let mut packet = vec![8, 0, 0, 0];
    packet.extend_from_slice(&id.to_be_bytes());
    packet.extend_from_slice(&seq.to_be_bytes());
    packet.extend_from_slice(ECHO_PAYLOAD);
    packet.resize(len.max(packet.len()), 0);
    let sum = internet_checksum(&packet);
    packet[2..4].copy_from_slice(&sum.to_be_bytes());
    packet
}

/// RFC 1071 ones' complement sum.
pub fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// What a packet read from the raw socket (IPv4 header included) means
/// for the echo `id`/`seq` sent to `dst`.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    Echo,
    /// An ICMP error about our request, e.g. destination unreachable.
    Error(String),
    Other,
}

pub fn classify_reply(packet: &[u8], dst: Ipv4Addr, id: u16, seq: u16) -> Reply {
    let Some((src, icmp)) = ipv4_icmp(packet) else {
        return Reply::Other;
    };
    if icmp.len() < 8 {
        return Reply::Other;
    }
    let (kind, code) = (icmp[0], icmp[1]);
    let ours = |echo: &[u8]| {
        echo.len() >= 8 && echo[4..6] == id.to_be_bytes() && echo[6..8] == seq.to_be_bytes()
    };
    match kind {
        0 if code == 0 && src == dst && ours(icmp) => Reply::Echo,
        3 | 11 => match ipv4_icmp(&icmp[8..]) {
            Some((_, inner)) if ours(inner) && inner[0] == 8 => {
                let what = if kind == 3 {
                    "destination unreachable"
                } else {
                    "time exceeded"
                };
                Reply::Error(format!("{what} (code {code}) from {src}"))
            }
            _ => Reply::Other,
        },
        _ => Reply::Other,
    }
}

/// The source address and the ICMP message of an IPv4 packet carrying ICMP.
fn ipv4_icmp(packet: &[u8]) -> Option<(Ipv4Addr, &[u8])> {
    let header_len = usize::from(*packet.first()? & 0x0f) * 4;
    if packet[0] >> 4 != 4 || header_len < 20 || packet.len() < header_len || packet[9] != 1 {
        return None;
    }
    let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    Some((src, &packet[header_len..]))
}

/// A TCP echo server for one pod: listens on the pod's address (port chosen
/// by the kernel) inside its namespace, echoes one line per connection.
/// Stops when dropped.
pub struct TcpResponder {
    addr: SocketAddrV4,
    listener: Arc<TcpListener>,
    stopping: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl TcpResponder {
    pub fn start(netns: &Path, ip: Ipv4Addr) -> Result<Self, ProbeError> {
        let listener = run_in(netns, move || TcpListener::bind(SocketAddrV4::new(ip, 0)))?
            .map_err(io(format!("listening on {ip} in {}", netns.display())))?;
        let addr = match listener
            .local_addr()
            .map_err(io("reading the listener's address"))?
        {
            SocketAddr::V4(addr) => addr,
            SocketAddr::V6(_) => unreachable!("bound to an IPv4 address"),
        };
        let listener = Arc::new(listener);
        let stopping = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (listener, stopping) = (listener.clone(), stopping.clone());
            thread::spawn(move || {
                while !stopping.load(Ordering::Acquire) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            thread::spawn(move || echo_line(stream));
                        }
                        // Shut down by Drop (EINVAL), or a transient error.
                        Err(_) if stopping.load(Ordering::Acquire) => break,
                        Err(_) => thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        Ok(TcpResponder {
            addr,
            listener,
            stopping,
            acceptor: Some(acceptor),
        })
    }

    pub fn addr(&self) -> SocketAddrV4 {
        self.addr
    }
}

impl Drop for TcpResponder {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Release);
        // shutdown(2) on a listening socket wakes a blocked accept(2).
        // SAFETY: the fd is owned by the listener, alive until the join.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn echo_line(mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let mut line = Vec::new();
    let mut buf = [0u8; 256];
    while !line.ends_with(b"\n") && line.len() < 4096 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => line.extend_from_slice(&buf[..n]),
        }
    }
    let _ = stream.write_all(&line);
}

/// Connects from inside `netns` to `dst`, sends `message` (one line) and
/// requires it echoed back.
pub fn tcp_exchange(
    netns: &Path,
    dst: SocketAddrV4,
    message: &str,
    timeout: Duration,
    tries: u32,
) -> Result<(), ProbeError> {
    let message = message.to_string();
    run_in(netns, move || {
        tcp_exchange_here(dst, &message, timeout, tries)
    })?
}

/// Sends `message` in one datagram from inside `netns` to `dst` until a
/// reply comes within `timeout` (at most `tries` times), and requires the
/// reply to echo it: a pod's UDP echo server, or a policy letting it through.
pub fn udp_exchange(
    netns: &Path,
    dst: SocketAddrV4,
    message: &str,
    timeout: Duration,
    tries: u32,
) -> Result<(), ProbeError> {
    let message = message.to_string();
    run_in(netns, move || {
        let socket = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
            .map_err(io("binding a UDP socket"))?;
        socket
            .set_read_timeout(Some(timeout))
            .map_err(io("setting a read timeout"))?;
        let mut buf = [0u8; 256];
        for _ in 0..tries.max(1) {
            socket
                .send_to(message.as_bytes(), dst)
                .map_err(io(format!("send to {dst}")))?;
            if let Ok((n, _)) = socket.recv_from(&mut buf) {
                let got = String::from_utf8_lossy(&buf[..n]).into_owned();
                if got != message {
                    return Err(ProbeError::WrongEcho {
                        dst,
                        sent: message,
                        got,
                    });
                }
                return Ok(());
            }
        }
        Err(ProbeError::NoUdpEcho {
            dst,
            tries: tries.max(1),
            timeout,
        })
    })?
}

/// `tcp_exchange` in the calling thread's namespace.
pub fn tcp_exchange_here(
    dst: SocketAddrV4,
    message: &str,
    timeout: Duration,
    tries: u32,
) -> Result<(), ProbeError> {
    let line = format!("{}\n", message.trim_end());
    let mut last = None;
    for _ in 0..tries.max(1) {
        let started = Instant::now();
        match tcp_once(dst, &line, timeout) {
            Ok(()) => return Ok(()),
            Err(e @ ProbeError::WrongEcho { .. }) => return Err(e),
            Err(e) => last = Some(e),
        }
        // A refusal comes back at once; give a route or listener a moment.
        if let Some(rest) = timeout.checked_sub(started.elapsed()) {
            thread::sleep(rest.min(Duration::from_millis(200)));
        }
    }
    Err(last.expect("at least one try"))
}

fn tcp_once(dst: SocketAddrV4, line: &str, timeout: Duration) -> Result<(), ProbeError> {
    let mut stream = TcpStream::connect_timeout(&dst.into(), timeout)
        .map_err(io(format!("connect to {dst}")))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(io("setting a read timeout"))?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(io("setting a write timeout"))?;
    stream
        .write_all(line.as_bytes())
        .map_err(io(format!("send to {dst}")))?;
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while got.len() < line.len() {
        match stream
            .read(&mut buf)
            .map_err(io(format!("read from {dst}")))?
        {
            0 => break,
            n => got.extend_from_slice(&buf[..n]),
        }
    }
    if got != line.as_bytes() {
        return Err(ProbeError::WrongEcho {
            dst,
            sent: line.trim_end().to_string(),
            got: String::from_utf8_lossy(&got).into_owned(),
        });
    }
    Ok(())
}

/// Probes ICMP and TCP across every ordered pair of distinct `targets`:
/// a responder in each target, `parallelism` pairs at a time. A target
/// whose responder cannot listen (no such address in its namespace) fails
/// TCP from everyone, with the reason, instead of aborting the matrix.
pub fn probe_all(targets: &[ProbeTarget], config: ProbeConfig) -> Matrix {
    let responders: Vec<Result<TcpResponder, String>> = targets
        .iter()
        .map(|t| TcpResponder::start(&t.netns, t.ip).map_err(|e| e.to_string()))
        .collect();
    let mut queue = VecDeque::new();
    for from in 0..targets.len() {
        for to in 0..targets.len() {
            if from != to {
                queue.push_back((from, to));
            }
        }
    }
    let total = queue.len();
    let queue = Arc::new(Mutex::new(queue));
    let results = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let listeners: Arc<Vec<Result<SocketAddrV4, String>>> = Arc::new(
        responders
            .iter()
            .map(|r| {
                r.as_ref()
                    .map(TcpResponder::addr)
                    .map_err(|e| format!("no TCP responder in the target: {e}"))
            })
            .collect(),
    );
    let shared_targets: Arc<Vec<ProbeTarget>> = Arc::new(targets.to_vec());
    let workers: Vec<_> = (0..config.parallelism.clamp(1, total.max(1)))
        .map(|_| {
            let (queue, results, listeners, targets) = (
                queue.clone(),
                results.clone(),
                listeners.clone(),
                shared_targets.clone(),
            );
            thread::spawn(move || {
                loop {
                    let Some((from, to)) = queue.lock().expect("queue").pop_front() else {
                        break;
                    };
                    let result =
                        probe_pair(&targets[from], &targets[to], listeners[to].clone(), config);
                    results.lock().expect("results").push(((from, to), result));
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.join();
    }
    drop(responders);
    let mut results = std::mem::take(&mut *results.lock().expect("results"));
    results.sort_by_key(|(key, _)| *key);
    Matrix {
        pods: targets.iter().map(|t| t.name.clone()).collect(),
        pairs: results.into_iter().map(|(_, r)| r).collect(),
    }
}

/// One pair: echo first (it also resolves ARP on the way), then TCP.
/// `tcp_dst` is the target's responder, or why it has none.
pub fn probe_pair(
    from: &ProbeTarget,
    to: &ProbeTarget,
    tcp_dst: Result<SocketAddrV4, String>,
    config: ProbeConfig,
) -> PairResult {
    let dst = to.ip;
    let message = format!("weft-probe {} -> {}", from.name, to.name);
    let outcome = run_in(&from.netns, move || {
        let icmp = icmp_echo_here(dst, Echo::new(config.icmp_timeout, config.icmp_tries));
        let tcp = tcp_dst.and_then(|dst| {
            tcp_exchange_here(dst, &message, config.tcp_timeout, config.tcp_tries)
                .map_err(|e| e.to_string())
        });
        (icmp, tcp)
    });
    let (icmp, tcp) = match outcome {
        Ok((icmp, tcp)) => (icmp.map_err(|e| e.to_string()), tcp),
        Err(e) => (Err(e.to_string()), Err(e.to_string())),
    };
    PairResult {
        from: from.name.clone(),
        to: to.name.clone(),
        icmp: icmp.is_ok(),
        tcp: tcp.is_ok(),
        icmp_rtt_us: icmp.as_ref().ok().map(|d| d.as_micros() as u64),
        icmp_error: icmp.err(),
        tcp_error: tcp.err(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_request_checksums_to_zero() {
        let packet = echo_request(0x1234, 7, 0);
        assert_eq!(
            &packet[..8],
            &[8, 0, packet[2], packet[3], 0x12, 0x34, 0, 7]
        );
        assert_eq!(internet_checksum(&packet), 0);
        let big = echo_request(0x1234, 7, 1472);
        assert_eq!(big.len(), 1472);
        assert_eq!(internet_checksum(&big), 0);
        assert_eq!(internet_checksum(&[0x45, 0x00, 0x00]), !0x4500);
    }

    fn ipv4(src: [u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0];
        p.extend_from_slice(&src);
        p.extend_from_slice(&[10, 244, 1, 2]);
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn replies_are_matched_by_source_id_and_seq() {
        let dst = Ipv4Addr::new(10, 244, 2, 3);
        let mut reply = echo_request(99, 2, 0);
        reply[0] = 0;
        assert_eq!(
            classify_reply(&ipv4([10, 244, 2, 3], &reply), dst, 99, 2),
            Reply::Echo
        );
        assert_eq!(
            classify_reply(&ipv4([10, 244, 2, 4], &reply), dst, 99, 2),
            Reply::Other
        );
        assert_eq!(
            classify_reply(&ipv4([10, 244, 2, 3], &reply), dst, 98, 2),
            Reply::Other
        );
        assert_eq!(
            classify_reply(&ipv4([10, 244, 2, 3], &reply), dst, 99, 1),
            Reply::Other
        );
        // Our own request, seen on loopback, is not a reply.
        let request = echo_request(99, 2, 0);
        assert_eq!(
            classify_reply(&ipv4([10, 244, 2, 3], &request), dst, 99, 2),
            Reply::Other
        );
        // Destination unreachable quoting our request.
        let mut unreachable = vec![3, 1, 0, 0, 0, 0, 0, 0];
        unreachable.extend_from_slice(&ipv4([10, 244, 1, 2], &request));
        assert_eq!(
            classify_reply(&ipv4([10, 244, 1, 1], &unreachable), dst, 99, 2),
            Reply::Error("destination unreachable (code 1) from 10.244.1.1".into())
        );
        assert_eq!(classify_reply(&[0x45], dst, 99, 2), Reply::Other);
    }

    /// Two namespaces joined by a veth, addresses from 10.244.250.0/24.
    /// Needs root; skipped otherwise.
    struct TwoNamespaces {
        a: String,
        b: String,
    }

    impl TwoNamespaces {
        fn new(tag: &str) -> Self {
            assert!(
                unsafe { libc::geteuid() } == 0,
                "the probe tests need root (network namespaces): run them as root"
            );
            use crate::topology::{create_netns, ip};
            let pid = std::process::id();
            let pair = TwoNamespaces {
                a: format!("weftctl-t{pid}-{tag}-a"),
                b: format!("weftctl-t{pid}-{tag}-b"),
            };
            create_netns(&pair.a).unwrap();
            create_netns(&pair.b).unwrap();
            ip(&[
                "-n", &pair.a, "link", "add", "v0", "type", "veth", "peer", "name", "v1", "netns",
                &pair.b,
            ])
            .unwrap();
            ip(&["-n", &pair.a, "addr", "add", "10.244.250.1/24", "dev", "v0"]).unwrap();
            ip(&["-n", &pair.b, "addr", "add", "10.244.250.2/24", "dev", "v1"]).unwrap();
            ip(&["-n", &pair.a, "link", "set", "v0", "up"]).unwrap();
            ip(&["-n", &pair.b, "link", "set", "v1", "up"]).unwrap();
            pair
        }

        fn target(&self, which: &str) -> ProbeTarget {
            let (ns, ip) = if which == "a" {
                (&self.a, [10, 244, 250, 1])
            } else {
                (&self.b, [10, 244, 250, 2])
            };
            ProbeTarget {
                name: which.into(),
                netns: crate::topology::netns_path(ns),
                ip: ip.into(),
            }
        }
    }

    impl Drop for TwoNamespaces {
        fn drop(&mut self) {
            let _ = crate::topology::delete_netns(&self.a);
            let _ = crate::topology::delete_netns(&self.b);
        }
    }

    #[test]
    fn probes_between_namespaces() {
        let pair = TwoNamespaces::new("ok");
        let started = Instant::now();
        let matrix = probe_all(
            &[pair.target("a"), pair.target("b")],
            ProbeConfig::default(),
        );
        assert!(matrix.all_ok(), "{}", matrix.render());
        assert_eq!(matrix.pairs.len(), 2);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "took {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn failures_are_reported() {
        let pair = TwoNamespaces::new("fail");
        let a = pair.target("a");
        let nobody = Ipv4Addr::new(10, 244, 250, 3);
        let err =
            icmp_echo(&a.netns, nobody, Echo::new(Duration::from_millis(200), 1)).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("no echo reply from 10.244.250.3 after 1 tries of 200 ms"),
            "{err}"
        );
        // A closed port on a reachable pod: refused.
        let b = pair.target("b");
        let closed = {
            let responder = TcpResponder::start(&b.netns, b.ip).unwrap();
            responder.addr()
        };
        let err =
            tcp_exchange(&a.netns, closed, "hello", Duration::from_millis(300), 1).unwrap_err();
        assert!(err.to_string().contains("Connection refused"), "{err}");
        // And the open one echoes.
        let responder = TcpResponder::start(&b.netns, b.ip).unwrap();
        tcp_exchange(
            &a.netns,
            responder.addr(),
            "hello",
            Duration::from_millis(500),
            1,
        )
        .unwrap();
        icmp_echo(&a.netns, b.ip, Echo::new(Duration::from_secs(1), 3)).unwrap();
        // Don't Fragment: the veth's MTU (1500) fits, one byte more is
        // refused before it leaves, with the MTU.
        let echo = Echo::new(Duration::from_secs(1), 1).with_df();
        icmp_echo(&a.netns, b.ip, echo.with_size(1500)).unwrap();
        match icmp_echo(&a.netns, b.ip, echo.with_size(1501)) {
            Err(ProbeError::TooBig {
                size: 1501,
                mtu: Some(1500),
                ..
            }) => {}
            other => panic!("a DF request above the MTU: {other:?}"),
        }
        // A target without its address: TCP fails with the reason, ICMP too.
        let ghost = ProbeTarget {
            name: "ghost".into(),
            netns: b.netns.clone(),
            ip: nobody,
        };
        let config = ProbeConfig {
            icmp_timeout: Duration::from_millis(200),
            icmp_tries: 1,
            ..ProbeConfig::default()
        };
        let matrix = probe_all(&[a, ghost], config);
        let to_ghost = &matrix.pairs[0];
        assert_eq!(
            (to_ghost.from.as_str(), to_ghost.icmp, to_ghost.tcp),
            ("a", false, false)
        );
        assert!(
            to_ghost
                .tcp_error
                .as_ref()
                .unwrap()
                .starts_with("no TCP responder in the target"),
            "{to_ghost:?}"
        );
    }
}
