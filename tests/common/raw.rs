//! For tests that talk raw bytes to a peerwire server over every transport.

/// A transport a raw test client can use.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
	Tcp,
	Unix,
	#[cfg(feature = "unix-seqpacket")]
	Seqpacket,
}

/// Where a test server listens.
pub enum Address {
	Tcp(std::net::SocketAddr),
	Unix(std::path::PathBuf),
	#[cfg(feature = "unix-seqpacket")]
	Seqpacket(std::path::PathBuf),
}

/// For each `async fn name(kind: Kind)` named, a module `name` with one test per transport
/// (`tcp`, `unix`, and `seqpacket` with that feature). `Kind` must be in scope where it is used.
#[macro_export]
macro_rules! on_every_kind {
	($($name:ident),* $(,)?) => {
		$(
			mod $name {
				#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
				async fn tcp() {
					super::$name(super::Kind::Tcp).await
				}
				#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
				async fn unix() {
					super::$name(super::Kind::Unix).await
				}
				#[cfg(feature = "unix-seqpacket")]
				#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
				async fn seqpacket() {
					super::$name(super::Kind::Seqpacket).await
				}
			}
		)*
	};
}

/// Like [`on_every_kind!`], for the byte-stream transports only (`tcp`, `unix`).
#[macro_export]
macro_rules! on_streams {
	($($name:ident),* $(,)?) => {
		$(
			mod $name {
				#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
				async fn tcp() {
					super::$name(super::Kind::Tcp).await
				}
				#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
				async fn unix() {
					super::$name(super::Kind::Unix).await
				}
			}
		)*
	};
}
