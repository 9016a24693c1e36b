//! Addresses as the command line writes them: `tcp://host:port`, `unix:///path`, `seqpacket:///path`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Where to connect or listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
	/// `tcp://host:port`; the host may be a name, an IPv4 address or a bracketed IPv6 address.
	Tcp(String),
	/// `unix:///path`: a Unix stream socket.
	Unix(PathBuf),
	/// `seqpacket:///path`: a Unix seqpacket socket.
	Seqpacket(PathBuf),
}

const EXPECTED: &str = "expected tcp://HOST:PORT, unix:///PATH or seqpacket:///PATH";

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
			return Err(format!("{scheme}:// needs {}", if scheme == "tcp" { "HOST:PORT" } else { "a path" }));
		}
		match scheme {
			"tcp" => {
				let port = rest.rsplit_once(':').map(|(_, port)| port);
				match port.map(str::parse::<u16>) {
					Some(Ok(_)) => Ok(Self::Tcp(rest.to_string())),
					_ => Err(format!("tcp://{rest} needs a port: tcp://HOST:PORT")),
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
			Self::Unix(path) => write!(f, "unix://{}", path.display()),
			Self::Seqpacket(path) => write!(f, "seqpacket://{}", path.display()),
		}
	}
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
	}

	#[test]
	fn refuses_with_a_hint() {
		assert!(Address::from_str("127.0.0.1:80").unwrap_err().contains("did you mean tcp://127.0.0.1:80"));
		assert!(Address::from_str("/tmp/x").unwrap_err().contains("did you mean unix:///tmp/x"));
		assert!(Address::from_str("tcp://localhost").unwrap_err().contains("needs a port"));
		assert!(Address::from_str("udp://x:1").unwrap_err().contains("unknown scheme"));
		assert!(Address::from_str("unix://").unwrap_err().contains("needs a path"));
	}

	#[test]
	fn displays_as_written() {
		for text in ["tcp://127.0.0.1:1", "unix:///tmp/a.sock", "seqpacket:///x"] {
			assert_eq!(text.parse::<Address>().unwrap().to_string(), text);
		}
	}
}
