//! Helpers shared by the twin's tests: real conversations between pods.
#![allow(dead_code)]

use std::net::Ipv4Addr;

use weft_twin::smoltcp::iface::SocketHandle;
use weft_twin::smoltcp::socket::{tcp, udp};
use weft_twin::smoltcp::wire::{IpAddress, IpEndpoint};
use weft_twin::{Cluster, ClusterConfig, Encap, PodId};

pub const MODES: [Encap; 3] = [Encap::Ipip, Encap::Vxlan, Encap::None];

/// Three nodes, one subnet, MTU 1500, in `encap`.
pub fn cluster(encap: Encap) -> Cluster {
    Cluster::new(ClusterConfig {
        encap,
        ..ClusterConfig::default()
    })
}

/// `n` bytes no two conversations share, so a mix-up shows.
pub fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761) >> 24) as u8 ^ seed)
        .collect()
}

pub fn endpoint(ip: Ipv4Addr, port: u16) -> IpEndpoint {
    IpEndpoint::new(IpAddress::Ipv4(ip), port)
}

pub fn tcp_socket() -> tcp::Socket<'static> {
    tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; 64 * 1024]),
        tcp::SocketBuffer::new(vec![0; 64 * 1024]),
    )
}

/// Writes what is left of `data` and reads what arrived.
fn pump(socket: &mut tcp::Socket<'static>, data: &[u8], sent: &mut usize, got: &mut Vec<u8>) {
    if socket.may_send() && *sent < data.len() {
        *sent += socket.send_slice(&data[*sent..]).unwrap();
    }
    while socket.can_recv() {
        socket
            .recv(|buf| {
                got.extend_from_slice(buf);
                (buf.len(), ())
            })
            .unwrap();
    }
}

/// A listening socket on `server:port` and a socket on `client` (from
/// `local_port`) connecting to it: (client socket, server socket).
pub fn tcp_start(
    c: &mut Cluster,
    client: PodId,
    server: PodId,
    port: u16,
    local_port: u16,
) -> (SocketHandle, SocketHandle) {
    let hs = c.pod_mut(server).add_socket(tcp_socket());
    c.pod_mut(server)
        .sockets()
        .get_mut::<tcp::Socket>(hs)
        .listen(port)
        .unwrap();
    let hc = c.pod_mut(client).add_socket(tcp_socket());
    let server_ip = c.pod_ip(server);
    let (iface, sockets) = c.pod_mut(client).parts();
    sockets
        .get_mut::<tcp::Socket>(hc)
        .connect(iface.context(), endpoint(server_ip, port), local_port)
        .unwrap();
    (hc, hs)
}

/// A TCP connection from `client` to `server` (port `port`) carrying `n`
/// bytes each way; asserts every byte arrived intact, in order.
pub fn tcp_both_ways(c: &mut Cluster, client: PodId, server: PodId, port: u16, n: usize) {
    let to_server = pattern(n, port as u8);
    let to_client = pattern(n, !(port as u8));
    let (hc, hs) = tcp_start(c, client, server, port, 49152);
    let server_ip = c.pod_ip(server);
    let (mut sent_c, mut sent_s) = (0, 0);
    let (mut got_c, mut got_s) = (Vec::new(), Vec::new());
    let done = c.run_until(200_000, |c| {
        let s = c.pod_mut(client).sockets().get_mut::<tcp::Socket>(hc);
        pump(s, &to_server, &mut sent_c, &mut got_c);
        let s = c.pod_mut(server).sockets().get_mut::<tcp::Socket>(hs);
        pump(s, &to_client, &mut sent_s, &mut got_s);
        got_c.len() >= n && got_s.len() >= n
    });
    assert!(
        done,
        "TCP {} -> {}: got {} and {} of {n} bytes",
        c.pod_ip(client),
        server_ip,
        got_s.len(),
        got_c.len()
    );
    assert!(got_s == to_server, "bytes to the server differ");
    assert!(got_c == to_client, "bytes to the client differ");
    c.pod_mut(client)
        .sockets()
        .get_mut::<tcp::Socket>(hc)
        .close();
}

pub fn udp_socket(
    c: &mut Cluster,
    pod: PodId,
    port: u16,
) -> weft_twin::smoltcp::iface::SocketHandle {
    let buffer =
        || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 16], vec![0; 64 * 1024]);
    let mut socket = udp::Socket::new(buffer(), buffer());
    socket.bind(port).unwrap();
    c.pod_mut(pod).add_socket(socket)
}

/// Runs until the UDP socket `handle` of `pod` holds a datagram; returns
/// it and its sender, or `None` after `max_steps`.
pub fn udp_recv(
    c: &mut Cluster,
    pod: PodId,
    handle: weft_twin::smoltcp::iface::SocketHandle,
    max_steps: usize,
) -> Option<(Vec<u8>, IpEndpoint)> {
    let mut got = None;
    let _ = c.run_until(max_steps, |c| {
        let s = c.pod_mut(pod).sockets().get_mut::<udp::Socket>(handle);
        if let Ok((data, meta)) = s.recv() {
            got = Some((data.to_vec(), meta.endpoint));
        }
        got.is_some()
    });
    got
}

/// A UDP request from `client` to `server` and the server's reply to the
/// request's source; asserts both payloads and addresses.
pub fn udp_request_reply(c: &mut Cluster, client: PodId, server: PodId, port: u16) {
    let hs = udp_socket(c, server, port);
    let hc = udp_socket(c, client, port + 1);
    let (client_ip, server_ip) = (c.pod_ip(client), c.pod_ip(server));
    let request = format!("request {client_ip} -> {server_ip}").into_bytes();
    c.pod_mut(client)
        .sockets()
        .get_mut::<udp::Socket>(hc)
        .send_slice(&request, endpoint(server_ip, port))
        .unwrap();
    let (got, from) = udp_recv(c, server, hs, 1000).expect("the request arrives");
    assert_eq!(got, request);
    assert_eq!(
        from,
        endpoint(client_ip, port + 1),
        "the source is the client pod"
    );
    let reply = pattern(1000, 7);
    c.pod_mut(server)
        .sockets()
        .get_mut::<udp::Socket>(hs)
        .send_slice(&reply, from)
        .unwrap();
    let (got, from) = udp_recv(c, client, hc, 1000).expect("the reply arrives");
    assert_eq!(got, reply);
    assert_eq!(from, endpoint(server_ip, port));
}
