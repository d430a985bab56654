//! The UDP socket under a QUIC endpoint, client or server, with large kernel buffers. With the
//! default receive buffer (208 KiB on Linux) a burst of packets — many clients writing at
//! once, or a server fanning one commit out to many connections — overflows it, the kernel
//! drops datagrams, and QUIC treats that as congestion: it retransmits after a timeout and
//! shrinks its window, so latency jumps from milliseconds to seconds. The fan-out benchmark
//! lost 14 % of all loopback datagrams that way (`RcvbufErrors` in /proc/net/snmp).
//!
//! The kernel caps what a process may ask for at `net.core.rmem_max` / `wmem_max`; the
//! receive buffer obtained is reported so the caller can tell an operator to raise the cap.

use std::io;
use std::net::{SocketAddr, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

/// Receive and send buffer requested for each QUIC socket.
pub const UDP_BUFFER_BYTES: usize = 8 << 20;

/// A bound UDP socket with the buffers asked for, and the receive buffer the kernel granted.
pub struct BoundUdp {
    pub socket: UdpSocket,
    pub recv_buffer: usize,
}

/// Binds a UDP socket at `addr` with `UDP_BUFFER_BYTES` receive and send buffers (or as much
/// as the kernel allows; a refusal to enlarge is not an error).
pub fn bind_udp(addr: SocketAddr) -> io::Result<BoundUdp> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Dual-stack where the platform allows; an IPv6-only socket still works.
        let _ = socket.set_only_v6(false);
    }
    let _ = socket.set_recv_buffer_size(UDP_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(UDP_BUFFER_BYTES);
    socket.bind(&addr.into())?;
    Ok(BoundUdp {
        recv_buffer: socket.recv_buffer_size()?,
        socket: socket.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sysctl(name: &str) -> Option<usize> {
        std::fs::read_to_string(format!("/proc/sys/net/core/{name}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The socket gets more than the system default whenever the system allows more, and
    /// still carries datagrams.
    #[test]
    fn sockets_get_larger_buffers_than_the_default() {
        let a = bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
        let b = bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
        if let (Some(default), Some(max)) = (sysctl("rmem_default"), sysctl("rmem_max")) {
            if max > default {
                // Linux reports twice the size set (it counts its bookkeeping too).
                assert!(
                    a.recv_buffer > 2 * default,
                    "receive buffer {} not above the default {default}",
                    a.recv_buffer
                );
            }
        }
        a.socket
            .send_to(b"ping", b.socket.local_addr().unwrap())
            .unwrap();
        let mut buf = [0u8; 8];
        let (n, _) = b.socket.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"ping");
    }
}
