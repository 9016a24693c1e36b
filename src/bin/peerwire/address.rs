//! Addresses as the command line writes them: `tcp://host:port`, `tls://host:port`, `unix:///path`,
//! `seqpacket:///path`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Where to connect or listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
	/// `tcp://host:port`; the host may be a name, an IPv4 address or a bracketed IPv6 address.
	Tcp(String),
	/// `tls://host:port`: TLS over TCP.
	Tls(String),
	/// `unix:///path`: a Unix stream socket.
	Unix(PathBuf),
	/// `seqpacket:///path`: a Unix seqpacket socket.
	Seqpacket(PathBuf),
}

const EXPECTED: &str = "expected tcp://HOST:PORT, tls://HOST:PORT, unix:///PATH or seqpacket:///PATH";

impl FromStr for Address {
	type Err = String;

	fn from_str(text: &str) -> Result<Self, String> {
		let Some((scheme, rest)) = text.split_once("://") else {
			let hint = if text.starts_with('/') {
				format!(" (did you mean unix://{text}?)")
			} else if text.contains(':') {
				format!(" (did you mean tcp://{text}?)")
			} else {
				String::new()
			};
			return Err(format!("{EXPECTED}{hint}"));
		};
		if rest.is_empty() {
			let needs = if matches!(scheme, "tcp" | "tls") { "HOST:PORT" } else { "a path" };
			return Err(format!("{scheme}:// needs {needs}"));
		}
		match scheme {
			"tcp" | "tls" => {
				let port = rest.rsplit_once(':').map(|(_, port)| port);
				match port.map(str::parse::<u16>) {
					Some(Ok(_)) if scheme == "tcp" => Ok(Self::Tcp(rest.to_string())),
					Some(Ok(_)) => Ok(Self::Tls(rest.to_string())),
					_ => Err(format!("{scheme}://{rest} needs a port: {scheme}://HOST:PORT")),
				}
			},
			"unix" => Ok(Self::Unix(PathBuf::from(rest))),
			"seqpacket" => Ok(Self::Seqpacket(PathBuf::from(rest))),
			other => Err(format!("unknown scheme {other}://, {EXPECTED}")),
		}
	}
}

impl fmt::Display for Address {
	fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
		match self {
			Self::Tcp(host_port) => write!(f, "tcp://{host_port}"),
			Self::Tls(host_port) => write!(f, "tls://{host_port}"),
			Self::Unix(path) => write!(f, "unix://{}", path.display()),
			Self::Seqpacket(path) => write!(f, "seqpacket://{}", path.display()),
		}
	}
}

/// The host of `HOST:PORT`, without the brackets of an IPv6 address: the name a TLS client
/// checks the server's certificate against.
pub fn host_of(host_port: &str) -> &str {
	let host = host_port.rsplit_once(':').map_or(host_port, |(host, _)| host);
	host.strip_prefix('[').and_then(|host| host.strip_suffix(']')).unwrap_or(host)
}

#[cfg(test)]
mod tests {
	use super::*;

	#[test]
	fn parses_every_scheme() {
		assert_eq!("tcp://127.0.0.1:29285".parse(), Ok(Address::Tcp("127.0.0.1:29285".into())));
		assert_eq!("tcp://[::1]:1".parse(), Ok(Address::Tcp("[::1]:1".into())));
		assert_eq!("tcp://localhost:80".parse(), Ok(Address::Tcp("localhost:80".into())));
		assert_eq!("unix:///tmp/a.sock".parse(), Ok(Address::Unix("/tmp/a.sock".into())));
		assert_eq!("unix://a.sock".parse(), Ok(Address::Unix("a.sock".into())));
		assert_eq!("seqpacket:///run/x".parse(), Ok(Address::Seqpacket("/run/x".into())));
		assert_eq!("tls://robot.local:443".parse(), Ok(Address::Tls("robot.local:443".into())));
		assert_eq!(host_of("robot.local:443"), "robot.local");
		assert_eq!(host_of("[::1]:443"), "::1");
		assert_eq!(host_of("127.0.0.1:1"), "127.0.0.1");
	}

	#[test]
	fn refuses_with_a_hint() {
		assert!(Address::from_str("127.0.0.1:80").unwrap_err().contains("did you mean tcp://127.0.0.1:80"));
		assert!(Address::from_str("/tmp/x").unwrap_err().contains("did you mean unix:///tmp/x"));
		assert!(Address::from_str("tcp://localhost").unwrap_err().contains("needs a port"));
		assert!(Address::from_str("udp://x:1").unwrap_err().contains("unknown scheme"));
		assert!(Address::from_str("unix://").unwrap_err().contains("needs a path"));
		assert!(Address::from_str("tls://robot").unwrap_err().contains("needs a port: tls://HOST:PORT"));
		assert!(Address::from_str("tls://").unwrap_err().contains("needs HOST:PORT"));
	}

	#[test]
	fn displays_as_written() {
		for text in ["tcp://127.0.0.1:1", "tls://[::1]:2", "unix:///tmp/a.sock", "seqpacket:///x"] {
			assert_eq!(text.parse::<Address>().unwrap().to_string(), text);
		}
	}
}
