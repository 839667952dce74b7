//! TCP MD5 signatures on a real kernel: two network namespaces joined by a
//! veth pair; a connection comes up only when both ends hold the same key.
//! Needs root.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::fd::AsFd;
use std::time::Duration;

use weft_bgp::tcp_md5::set_key;

mod support;
use support::{Pair, in_netns};

/// Listens in `a` with `server_key` for 198.18.9.2, connects from `b` with
/// `client_key` (if any); true if the connection came up.
fn connects(tag: &str, server_key: &'static [u8], client_key: Option<&'static [u8]>) -> bool {
    let pair = Pair::new(tag);
    let listener = in_netns(&pair.a, move || {
        let l = TcpListener::bind("198.18.9.1:1179").unwrap();
        set_key(l.as_fd(), "198.18.9.2".parse().unwrap(), server_key).unwrap();
        l
    });
    let connected = in_netns(&pair.b, move || {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        if let Some(key) = client_key {
            set_key(socket.as_fd(), "198.18.9.1".parse::<IpAddr>().unwrap(), key).unwrap();
        }
        let to: SocketAddr = "198.18.9.1:1179".parse().unwrap();
        socket
            .connect_timeout(&to.into(), Duration::from_secs(2))
            .is_ok()
    });
    drop(listener);
    connected
}

#[test]
fn same_key_connects() {
    assert!(connects("same", b"s3cret", Some(b"s3cret")));
}

#[test]
fn wrong_key_never_connects() {
    assert!(!connects("wrong", b"s3cret", Some(b"other")));
}

#[test]
fn missing_key_never_connects() {
    assert!(!connects("none", b"s3cret", None));
}
