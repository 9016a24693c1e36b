//! Ready-made admission checks for [`Listener::set_admission`](crate::Listener::set_admission):
//! allow lists by user, group, address or certificate name.
//!
//! Each function returns a closure over [`ConnectionInfo`]; combine them with a closure of your
//! own:
//!
//! ```
//! use peerwire::admission;
//!
//! let operators = admission::uids([1000, 1001]);
//! let robots = admission::gids([200]);
//! let check = move |info: &peerwire::ConnectionInfo| operators(info) || robots(info);
//! # let _ = check;
//! ```
//!
//! A check refuses whatever it cannot judge: [`uids`] refuses a TCP peer (it has no
//! credentials), [`ip_addresses`] a Unix socket peer, [`certificate_names`] a peer that presented
//! no verified certificate.

use std::collections::HashSet;
use std::net::IpAddr;

use crate::transport::ConnectionInfo;

/// Admit Unix socket peers whose user id is one of `uids`.
pub fn uids(uids: impl IntoIterator<Item = u32>) -> impl Fn(&ConnectionInfo) -> bool + Clone + Send + Sync + 'static {
	let uids: HashSet<u32> = uids.into_iter().collect();
	move |info| info.credentials.is_some_and(|credentials| uids.contains(&credentials.uid))
}

/// Admit Unix socket peers whose group id is one of `gids`.
///
/// This is the primary group of the peer process as the kernel reports it (`SO_PEERCRED`), not
/// its supplementary groups: a process that is a member of a group only through
/// `/etc/group` is not admitted by it. To admit the members of a group, give the socket file to
/// that group with [`SocketPermissions`](crate::transport::SocketPermissions) instead.
pub fn gids(gids: impl IntoIterator<Item = u32>) -> impl Fn(&ConnectionInfo) -> bool + Clone + Send + Sync + 'static {
	let gids: HashSet<u32> = gids.into_iter().collect();
	move |info| info.credentials.is_some_and(|credentials| gids.contains(&credentials.gid))
}

/// Admit TCP and TLS peers whose IP address is one of `addresses` (an IPv4 address also
/// matches its IPv4-mapped IPv6 form).
pub fn ip_addresses(
	addresses: impl IntoIterator<Item = IpAddr>,
) -> impl Fn(&ConnectionInfo) -> bool + Clone + Send + Sync + 'static {
	let addresses: HashSet<IpAddr> = addresses.into_iter().map(|address| address.to_canonical()).collect();
	move |info| remote_ip(info).is_some_and(|address| addresses.contains(&address))
}

/// Admit TCP and TLS peers on a loopback address (this host).
pub fn loopback() -> impl Fn(&ConnectionInfo) -> bool + Clone + Send + Sync + 'static {
	|info| remote_ip(info).is_some_and(|address| address.is_loopback())
}

/// Admit TLS peers whose verified certificate names one of `names`, as a DNS name, a common
/// name or a URI (see [`PeerCertificate::names`](crate::transport::PeerCertificate::names)).
///
/// Only useful under mutual TLS
/// ([`TlsServerConfig::mutual`](crate::transport::tls::TlsServerConfig::mutual)), where the
/// handshake has verified the client's certificate against the client roots: without it, no
/// client has a certificate and every one is refused.
pub fn certificate_names<S: Into<String>>(
	names: impl IntoIterator<Item = S>,
) -> impl Fn(&ConnectionInfo) -> bool + Clone + Send + Sync + 'static {
	let names: Vec<String> = names.into_iter().map(Into::into).collect();
	move |info| {
		info.peer_certificate.as_ref().is_some_and(|certificate| names.iter().any(|name| certificate.names(name)))
	}
}

fn remote_ip(info: &ConnectionInfo) -> Option<IpAddr> {
	info.remote_address.as_ref()?.socket_addr().map(|address| address.ip().to_canonical())
}

#[cfg(test)]
mod tests {
	use super::*;
	use crate::transport::{Credentials, PeerCertificate, RemoteAddress};

	fn unix(uid: u32, gid: u32) -> ConnectionInfo {
		ConnectionInfo {
			remote_address: Some(RemoteAddress::Unix(None)),
			credentials: Some(Credentials { uid, gid, pid: Some(1) }),
			peer_certificate: None,
		}
	}

	fn tcp(address: &str) -> ConnectionInfo {
		ConnectionInfo {
			remote_address: Some(RemoteAddress::Tcp(address.parse().unwrap())),
			credentials: None,
			peer_certificate: None,
		}
	}

	#[test]
	fn uid_and_gid_lists() {
		let check = uids([1000]);
		assert!(check(&unix(1000, 5)));
		assert!(!check(&unix(1001, 5)));
		assert!(!check(&tcp("127.0.0.1:1")));
		let check = gids([5]);
		assert!(check(&unix(1001, 5)));
		assert!(!check(&unix(1000, 6)));
		assert!(!check(&ConnectionInfo::default()));
	}

	#[test]
	fn address_lists() {
		let check = ip_addresses(["10.0.0.2".parse().unwrap()]);
		assert!(check(&tcp("10.0.0.2:5000")));
		assert!(check(&tcp("[::ffff:10.0.0.2]:5000")));
		assert!(!check(&tcp("10.0.0.3:5000")));
		assert!(!check(&unix(0, 0)));
		assert!(loopback()(&tcp("127.0.0.1:1")));
		assert!(loopback()(&tcp("[::1]:1")));
		assert!(!loopback()(&tcp("10.0.0.2:1")));
	}

	#[test]
	fn certificate_name_lists() {
		let mut info = tcp("10.0.0.2:5000");
		let check = certificate_names(["robot-1"]);
		assert!(!check(&info));
		info.peer_certificate = Some(PeerCertificate {
			subject: "CN=Robot-1".into(),
			common_names: vec!["Robot-1".into()],
			..PeerCertificate::default()
		});
		assert!(check(&info));
		assert!(!certificate_names(["robot-2"])(&info));
		info.peer_certificate =
			Some(PeerCertificate { dns_names: vec!["robot-1".into()], ..PeerCertificate::default() });
		assert!(check(&info));
	}
}
