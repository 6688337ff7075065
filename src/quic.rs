//! What both ends of echod's QUIC share: how large a packet a path may
//! carry.
//!
//! quinn starts every path at 1,200 B, and its MTU discovery searches no
//! higher than 1,452 B (Ethernet less IPv6 and UDP headers) unless told
//! otherwise, even where the path carries far more (loopback: 65,536 B; a
//! jumbo-frame network: 9,000 B). A 4 KiB echo then takes four packets
//! each way, each sealed, framed, sent and acknowledged on its own, where
//! TCP hands the kernel one write. Here discovery searches up to what the
//! route to the peer carries: the MTU the kernel has for that route (the
//! interface's, or a smaller one it learned), less the IP and UDP headers,
//! capped at [`MAX_PAYLOAD`]. Discovery itself stays quinn's (padded
//! probes, black-hole detection), so a path that carries less than its
//! first hop still settles where it works.

use std::net::SocketAddr;

/// The largest UDP payload echod sends or accepts: a 9,000-byte jumbo
/// frame less the IPv6 and UDP headers. It also sizes quinn's receive
/// buffers (this × 64 GRO segments × 32 per batch, reserved lazily).
pub const MAX_PAYLOAD: u16 = 9000 - 48;

/// Where the route's MTU is unknown: quinn's own default bound.
pub const DEFAULT_PAYLOAD: u16 = 1452;

/// quinn's floor: every QUIC path carries 1,200 B.
const MIN_PAYLOAD: u16 = 1200;

/// The endpoint configuration of every echod QUIC endpoint, client or
/// server: datagrams up to [`MAX_PAYLOAD`] are accepted.
pub fn endpoint_config() -> quinn::EndpointConfig {
    let mut config = quinn::EndpointConfig::default();
    config
        .max_udp_payload_size(MAX_PAYLOAD)
        .expect("MAX_PAYLOAD is within QUIC's range");
    config
}

/// MTU discovery towards `peer`: up to what the route carries.
pub fn mtu_discovery(peer: SocketAddr) -> quinn::MtuDiscoveryConfig {
    let mut discovery = quinn::MtuDiscoveryConfig::default();
    discovery.upper_bound(path_bound(route_payload(peer)));
    discovery
}

/// The discovery bound for a route carrying `route` bytes of UDP payload
/// (`None`: unknown).
fn path_bound(route: Option<u32>) -> u16 {
    match route {
        Some(payload) => u16::try_from(payload)
            .unwrap_or(MAX_PAYLOAD)
            .clamp(MIN_PAYLOAD, MAX_PAYLOAD),
        None => DEFAULT_PAYLOAD,
    }
}

/// The UDP payload the route to `peer` carries, from the kernel: a UDP
/// socket connected to `peer` (nothing is sent) reports the route's MTU
/// (`IP_MTU` / `IPV6_MTU`).
#[cfg(target_os = "linux")]
fn route_payload(peer: SocketAddr) -> Option<u32> {
    use std::os::fd::AsRawFd;
    let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port().max(1));
    let (local, level, name, headers): (SocketAddr, _, _, u32) = if peer.is_ipv4() {
        (
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
            libc::IPPROTO_IP,
            libc::IP_MTU,
            28,
        )
    } else {
        (
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU,
            48,
        )
    };
    let socket = std::net::UdpSocket::bind(local).ok()?;
    socket.connect(peer).ok()?;
    let mut mtu: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `mtu` and `len` are valid for the call, which writes at most
    // `len` bytes into `mtu`.
    let done = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&mut mtu as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (done == 0)
        .then(|| u32::try_from(mtu).ok())
        .flatten()
        .map(|mtu| mtu.saturating_sub(headers))
}

/// Elsewhere the route's MTU is not asked for: quinn's default bound.
#[cfg(not(target_os = "linux"))]
fn route_payload(_peer: SocketAddr) -> Option<u32> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_follows_the_route_within_quic_limits() {
        assert_eq!(path_bound(None), DEFAULT_PAYLOAD);
        assert_eq!(path_bound(Some(1472)), 1472);
        assert_eq!(path_bound(Some(65536 - 28)), MAX_PAYLOAD);
        assert_eq!(path_bound(Some(1000)), MIN_PAYLOAD);
        assert_eq!(path_bound(Some(u32::MAX)), MAX_PAYLOAD);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn loopback_routes_report_the_loopback_mtu() {
        // The loopback interface's MTU (65,536 unless changed; IPv4
        // reports at most its 65,535) less headers.
        let lo: u32 = std::fs::read_to_string("/sys/class/net/lo/mtu")
            .expect("/sys/class/net/lo/mtu")
            .trim()
            .parse()
            .expect("an MTU");
        assert_eq!(
            route_payload("127.0.0.1:3600".parse().unwrap()),
            Some(lo.min(65535) - 28)
        );
        assert_eq!(
            route_payload("[::ffff:127.0.0.1]:3600".parse().unwrap()),
            Some(lo.min(65535) - 28)
        );
        if std::net::UdpSocket::bind("[::1]:0").is_ok() {
            assert_eq!(route_payload("[::1]:3600".parse().unwrap()), Some(lo - 48));
        }
    }
}
