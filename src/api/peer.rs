//! Who is calling the web API, as the kernel tells it: the uid that owns the other end of a
//! loopback TCP connection (from the kernel's socket diagnostics, `NETLINK_SOCK_DIAG`), the
//! peer credentials of a unix socket (`SO_PEERCRED`), and whether a TLS client showed a
//! verified certificate.
//!
//! Pods share the host's loopback, and the Virtual Kubelet web broker sends no credentials, so
//! without this any pod could create pods (with any user the policy allows) through the API.

use std::net::{IpAddr, SocketAddr};

/// The caller of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiPeer {
    /// The uid owning the other end, where the kernel knows it (a local caller).
    pub uid: Option<u32>,
    /// A TLS client that presented a certificate the server verified (`--tls-client-ca`).
    pub verified_client: bool,
}

impl ApiPeer {
    fn tcp(stream: &tokio::net::TcpStream, verified_client: bool) -> ApiPeer {
        let uid = match (stream.peer_addr(), stream.local_addr()) {
            (Ok(peer), Ok(local)) => tcp_owner(peer, local),
            _ => None,
        };
        ApiPeer {
            uid,
            verified_client,
        }
    }
}

/// A connection whose caller can be told ([`ApiPeer`]): what the web API's listeners accept.
pub trait Identify {
    fn api_peer(&self) -> ApiPeer;
}

impl Identify for tokio::net::TcpStream {
    fn api_peer(&self) -> ApiPeer {
        ApiPeer::tcp(self, false)
    }
}

impl Identify for tokio::net::UnixStream {
    fn api_peer(&self) -> ApiPeer {
        ApiPeer {
            uid: self.peer_cred().ok().map(|c| c.uid()),
            verified_client: false,
        }
    }
}

impl Identify for tokio_rustls::server::TlsStream<tokio::net::TcpStream> {
    fn api_peer(&self) -> ApiPeer {
        let (tcp, session) = self.get_ref();
        ApiPeer::tcp(tcp, session.peer_certificates().is_some())
    }
}

/// Who may call the API without a bearer token.
#[derive(Debug, Clone)]
pub struct CallerPolicy {
    /// uids allowed besides root and procnode's own.
    pub allowed: Option<crate::runtime::users::UidPolicy>,
    pub own_uid: u32,
}

impl CallerPolicy {
    /// `Err` says why the caller is refused.
    pub fn check(&self, peer: &ApiPeer) -> Result<(), String> {
        if peer.verified_client {
            return Ok(());
        }
        match peer.uid {
            Some(uid) if uid == 0 || uid == self.own_uid => Ok(()),
            Some(uid) if self.allowed.as_ref().is_some_and(|a| a.allows(uid)) => Ok(()),
            Some(uid) => Err(format!(
                "callers running as uid {uid} may not use the API: only root, procnode's own uid \
                 and --api-allowed-uids may (or set --token-file)"
            )),
            None => Err(
                "the caller's uid is unknown (not a local connection): use --token-file or \
                 --tls-client-ca for remote callers"
                    .into(),
            ),
        }
    }
}

/// The uid owning the local TCP socket at `peer` that is connected to `local`, or `None` for a
/// caller on another host (or when the kernel does not say).
pub fn tcp_owner(peer: SocketAddr, local: SocketAddr) -> Option<u32> {
    let ip = peer.ip().to_canonical();
    let is_local = ip.is_loopback() || ip == local.ip().to_canonical();
    if !is_local {
        return None;
    }
    sock_diag_uid(peer, local)
}

/// Asks the kernel (`SOCK_DIAG_BY_FAMILY`, one exact socket) for the owner of the TCP socket
/// whose own address is `src` and whose remote address is `dst`.
fn sock_diag_uid(src: SocketAddr, dst: SocketAddr) -> Option<u32> {
    use nix::sys::socket::{
        recv, sendto, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol,
        SockType,
    };
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const NLM_F_REQUEST: u16 = 1;
    const NLMSG_ERROR: u16 = 2;
    const HEADER: usize = 16;
    const REQUEST: usize = 56;
    let family: u8 = match (src, dst) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) => nix::libc::AF_INET as u8,
        (SocketAddr::V6(_), SocketAddr::V6(_)) => nix::libc::AF_INET6 as u8,
        _ => return None,
    };
    let addr_bytes = |ip: IpAddr| -> [u8; 16] {
        let mut out = [0u8; 16];
        match ip {
            IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
            IpAddr::V6(v6) => out.copy_from_slice(&v6.octets()),
        }
        out
    };
    // nlmsghdr, then inet_diag_req_v2 (all native endian but ports and addresses).
    let mut msg = Vec::with_capacity(HEADER + REQUEST);
    msg.extend_from_slice(&((HEADER + REQUEST) as u32).to_ne_bytes());
    msg.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    msg.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    msg.push(family);
    msg.push(nix::libc::IPPROTO_TCP as u8);
    msg.push(0); // no extensions
    msg.push(0);
    msg.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    msg.extend_from_slice(&src.port().to_be_bytes());
    msg.extend_from_slice(&dst.port().to_be_bytes());
    msg.extend_from_slice(&addr_bytes(src.ip()));
    msg.extend_from_slice(&addr_bytes(dst.ip()));
    msg.extend_from_slice(&0u32.to_ne_bytes()); // any interface
    msg.extend_from_slice(&u32::MAX.to_ne_bytes()); // no cookie
    msg.extend_from_slice(&u32::MAX.to_ne_bytes());
    debug_assert_eq!(msg.len(), HEADER + REQUEST);

    let fd = socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )
    .ok()?;
    use std::os::fd::AsRawFd;
    sendto(
        fd.as_raw_fd(),
        &msg,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
    .ok()?;
    let mut buf = [0u8; 1024];
    let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()).ok()?;
    parse_uid(&buf[..n], NLMSG_ERROR)
}

/// The uid in a `SOCK_DIAG_BY_FAMILY` answer (an `inet_diag_msg`), if it is one.
fn parse_uid(answer: &[u8], error_type: u16) -> Option<u32> {
    const HEADER: usize = 16;
    // inet_diag_msg: family, state, timer, retrans (4), sockid (48), expires, rqueue, wqueue
    // (12), then uid.
    const UID_AT: usize = HEADER + 4 + 48 + 12;
    if answer.len() < UID_AT + 4 {
        return None;
    }
    let kind = u16::from_ne_bytes([answer[4], answer[5]]);
    if kind == error_type {
        return None;
    }
    Some(u32::from_ne_bytes(
        answer[UID_AT..UID_AT + 4].try_into().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_names_the_owner_of_a_loopback_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server_side, _) = listener.accept().unwrap();
        let uid = tcp_owner(
            server_side.peer_addr().unwrap(),
            server_side.local_addr().unwrap(),
        );
        assert_eq!(uid, Some(nix::unistd::geteuid().as_raw()));
        drop(client);
        let remote: SocketAddr = "192.0.2.1:1234".parse().unwrap();
        assert_eq!(tcp_owner(remote, server_side.local_addr().unwrap()), None);
    }

    #[test]
    fn only_root_procnode_and_listed_uids_are_callers() {
        let policy = CallerPolicy {
            allowed: Some("1000".parse().unwrap()),
            own_uid: 42,
        };
        let peer = |uid| ApiPeer {
            uid,
            verified_client: false,
        };
        assert!(policy.check(&peer(Some(0))).is_ok());
        assert!(policy.check(&peer(Some(42))).is_ok());
        assert!(policy.check(&peer(Some(1000))).is_ok());
        assert!(policy.check(&peer(Some(65534))).is_err());
        assert!(policy.check(&peer(None)).is_err());
        let tls = ApiPeer {
            uid: None,
            verified_client: true,
        };
        assert!(policy.check(&tls).is_ok());
    }
}
