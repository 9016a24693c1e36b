//! TLS over TCP, with real certificates made in the test by rcgen: what a handshake refuses
//! (wrong CA, wrong server name, no or a foreign client certificate under mutual TLS, expired
//! certificates), what works over it (requests, updates, streams, 64 MiB bodies, reconnecting),
//! the verified identity in `ConnectionInfo`, and that a stalled handshake holds up no one.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::within;
use peerwire::transport::tls::TlsTransport;
use peerwire::{
	Backoff, Config, ErrorKind, ReceivedMessage, Reconnecting, TlsClientConfig, TlsIdentity, TlsListener, TlsPeer,
	TlsRoots, TlsServerConfig, admission,
};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// A certificate authority made for one test.
struct Ca {
	issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, in PEM.
struct Leaf {
	chain: String,
	key: String,
}

impl Ca {
	fn new(name: &str) -> Self {
		let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
		params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
		params.distinguished_name.push(DnType::CommonName, name);
		Self { issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap() }
	}

	fn roots(&self) -> TlsRoots {
		TlsRoots::from_pem(self.issuer.pem().as_bytes()).unwrap()
	}

	/// A certificate for `common_name` and the subject alternative names `names`.
	fn leaf(&self, common_name: &str, names: &[&str]) -> Leaf {
		self.leaf_with(common_name, names, |_| {})
	}

	/// A certificate that expired in 2021.
	fn expired(&self, common_name: &str, names: &[&str]) -> Leaf {
		self.leaf_with(common_name, names, |params| {
			params.not_before = rcgen::date_time_ymd(2020, 1, 1);
			params.not_after = rcgen::date_time_ymd(2021, 1, 1);
		})
	}

	fn leaf_with(&self, common_name: &str, names: &[&str], adjust: impl FnOnce(&mut CertificateParams)) -> Leaf {
		let mut params = CertificateParams::new(names.iter().map(|name| name.to_string()).collect::<Vec<_>>()).unwrap();
		params.distinguished_name.push(DnType::CommonName, common_name);
		params.distinguished_name.push(DnType::OrganizationName, "peerwire tests");
		adjust(&mut params);
		let key = KeyPair::generate().unwrap();
		let certificate = params.signed_by(&key, &self.issuer).unwrap();
		Leaf { chain: certificate.pem(), key: key.serialize_pem() }
	}
}

impl Leaf {
	fn identity(&self) -> TlsIdentity {
		TlsIdentity::from_pem(self.chain.as_bytes(), self.key.as_bytes()).unwrap()
	}
}

fn server_leaf(ca: &Ca) -> Leaf {
	ca.leaf("peerwire test server", &["localhost", "127.0.0.1"])
}

async fn listener(tls: TlsServerConfig, config: &Config) -> (TlsListener, std::net::SocketAddr) {
	let listener = TlsListener::bind("127.0.0.1:0", tls, config).await.unwrap();
	let address = listener.local_addr().unwrap();
	(listener, address)
}

/// A directory of its own under the temp directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
	fn new(name: &str) -> Self {
		let path = std::env::temp_dir().join(format!("peerwire-tls-{name}-{}", std::process::id()));
		let _ = std::fs::remove_dir_all(&path);
		std::fs::create_dir(&path).unwrap();
		Self(path)
	}

	fn write(&self, name: &str, text: &str) -> PathBuf {
		let path = self.0.join(name);
		std::fs::write(&path, text).unwrap();
		path
	}
}

impl Drop for TempDir {
	fn drop(&mut self) {
		let _ = std::fs::remove_dir_all(&self.0);
	}
}

/// A client of a mutual-TLS server that presents `leaf`'s certificate, or none, and whose
/// first request must fail: under TLS 1.3 the client finishes its handshake before the server
/// has checked the client's certificate, so the refusal arrives as the connection closing.
async fn refused_after_handshake(address: std::net::SocketAddr, client: TlsClientConfig) {
	match TlsPeer::connect(address, "localhost", &client, &Config::default()).await {
		Err(error) => assert_eq!(error.kind(), ErrorKind::Io, "{error}"),
		Ok((peer, _)) => {
			let answered = async { peer.send_request(1, "let me in").await?.recv_response().await };
			let error = within(answered).await.expect_err("a refused client got an answer");
			assert!(matches!(error.kind(), ErrorKind::ConnectionClosed | ErrorKind::Io), "{error}");
		},
	}
}

#[tokio::test]
async fn requests_updates_streams_and_64_mib_bodies_work_over_tls() {
	let ca = Ca::new("test CA");
	let dir = TempDir::new("roundtrip");
	let leaf = server_leaf(&ca);
	let (chain, key) = (dir.write("server.pem", &leaf.chain), dir.write("server.key", &leaf.key));
	let ca_file = dir.write("ca.pem", &ca.issuer.pem());
	let config = Config::default().with_max_body_len_read(65 << 20).with_max_body_len_write(65 << 20);

	let tls = TlsServerConfig::new(TlsIdentity::from_pem_files(&chain, &key).unwrap()).unwrap();
	let (mut listener, address) = listener(tls, &config).await;
	let client_tls = TlsClientConfig::new(TlsRoots::from_pem_file(&ca_file).unwrap()).unwrap();
	let (client, server) =
		tokio::join!(TlsPeer::connect(address, "localhost", &client_tls, &config), listener.accept());
	let (client, client_info) = client.unwrap();
	let (mut server, server_info) = server.unwrap();
	assert_eq!(client_info.remote_address, Some(peerwire::RemoteAddress::Tls(address)));
	assert_eq!(client_info.peer_certificate.as_ref().unwrap().common_names, ["peerwire test server"]);
	assert!(server_info.peer_certificate.is_none(), "no client certificate was asked for");
	assert!(server_info.to_string().starts_with("tls://127.0.0.1:"), "{server_info}");

	let served = tokio::spawn(async move {
		while let Ok(message) = server.recv_message().await {
			match message {
				ReceivedMessage::Request(mut request, body) => {
					request.send_update(2, "working").await.unwrap();
					let update = request.recv_update().await.unwrap().expect("an update from the client");
					assert_eq!(&update.body[..], b"go on");
					request.send_response(0, body).await.unwrap();
				},
				ReceivedMessage::Stream(stream) => {
					server.send_stream(stream.header.service_id, stream.body).await.unwrap()
				},
			}
		}
	});

	let mut request = client.send_request(1, "hello").await.unwrap();
	let update = within(request.recv_update()).await.unwrap().unwrap();
	assert_eq!((update.header.service_id, &update.body[..]), (2, &b"working"[..]));
	request.send_update(3, "go on").await.unwrap();
	assert_eq!(&within(request.recv_response()).await.unwrap().body[..], b"hello");

	let mut client = client;
	client.send_stream(9, "one-way").await.unwrap();
	let echoed = within(client.recv_message()).await.unwrap().into_stream().unwrap();
	assert_eq!((echoed.header.service_id, &echoed.body[..]), (9, &b"one-way"[..]));

	let large: bytes::Bytes = (0..64u32 << 20).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into();
	let mut request = client.send_request(4, large.clone()).await.unwrap();
	within(request.recv_update()).await.unwrap().unwrap();
	request.send_update(3, "go on").await.unwrap();
	let response = within(request.recv_response()).await.unwrap();
	assert_eq!(response.body.len(), 64 << 20);
	assert!(response.body == large, "the 64 MiB body came back changed");

	client.close();
	within(served).await.unwrap();
}

/// The counters of tests/observe.rs, exact, over TLS.
#[tokio::test]
async fn exact_counts_over_tls() {
	let ca = Ca::new("test CA");
	let dir = TempDir::new("stats");
	let leaf = server_leaf(&ca);
	let (chain, key) = (dir.write("server.pem", &leaf.chain), dir.write("server.key", &leaf.key));
	let ca_file = dir.write("ca.pem", &ca.issuer.pem());
	let config = Config::default();
	let tls = TlsServerConfig::new(TlsIdentity::from_pem_files(&chain, &key).unwrap()).unwrap();
	let (mut listener, address) = listener(tls, &config).await;
	let client_tls = TlsClientConfig::new(TlsRoots::from_pem_file(&ca_file).unwrap()).unwrap();
	let (client, server) =
		tokio::join!(TlsPeer::connect(address, "localhost", &client_tls, &config), listener.accept());
	let (client, server) = common::script::script(client.unwrap().0, server.unwrap().0).await;
	common::script::check(&client, &server);
}

#[tokio::test]
async fn a_client_that_trusts_another_ca_is_refused() {
	let (ca, other) = (Ca::new("test CA"), Ca::new("other CA"));
	let (mut listener, address) =
		listener(TlsServerConfig::new(server_leaf(&ca).identity()).unwrap(), &Config::default()).await;
	let accepting = tokio::spawn(async move { listener.accept().await.map(|_| ()) });
	let client = TlsClientConfig::new(other.roots()).unwrap();
	let error = within(TlsPeer::connect(address, "localhost", &client, &Config::default())).await.unwrap_err();
	assert_eq!(error.kind(), ErrorKind::Io);
	assert!(error.to_string().contains("certificate"), "{error}");
	// The server yielded no connection either.
	tokio::time::sleep(Duration::from_millis(100)).await;
	assert!(!accepting.is_finished());
	accepting.abort();
}

#[tokio::test]
async fn a_wrong_server_name_is_refused() {
	let ca = Ca::new("test CA");
	let (mut listener, address) =
		listener(TlsServerConfig::new(server_leaf(&ca).identity()).unwrap(), &Config::default()).await;
	let client = TlsClientConfig::new(ca.roots()).unwrap();
	let accepting = tokio::spawn(async move {
		let mut peers = Vec::new();
		while let Ok((peer, _)) = listener.accept().await {
			peers.push(peer);
		}
	});
	let error = within(TlsPeer::connect(address, "robot.example", &client, &Config::default())).await.unwrap_err();
	assert!(error.to_string().contains("certificate"), "{error}");
	// The certificate names "localhost" and 127.0.0.1, so both of those are fine.
	within(TlsPeer::connect(address, "localhost", &client, &Config::default())).await.unwrap();
	within(TlsPeer::connect(address, "127.0.0.1", &client, &Config::default())).await.unwrap();
	accepting.abort();
}

#[tokio::test]
async fn an_expired_server_certificate_is_refused() {
	let ca = Ca::new("test CA");
	let expired = ca.expired("peerwire test server", &["localhost"]);
	let (mut listener, address) = listener(TlsServerConfig::new(expired.identity()).unwrap(), &Config::default()).await;
	let accepting = tokio::spawn(async move { listener.accept().await.map(|_| ()) });
	let client = TlsClientConfig::new(ca.roots()).unwrap();
	let error = within(TlsPeer::connect(address, "localhost", &client, &Config::default())).await.unwrap_err();
	assert!(error.to_string().to_lowercase().contains("expired"), "{error}");
	accepting.abort();
}

#[tokio::test]
async fn mutual_tls_refuses_clients_without_a_certificate_from_its_ca_and_names_the_one_it_admits() {
	let (ca, other) = (Ca::new("test CA"), Ca::new("other CA"));
	let tls = TlsServerConfig::mutual(server_leaf(&ca).identity(), ca.roots()).unwrap();
	let (mut listener, address) = listener(tls, &Config::default()).await;
	let accepting = tokio::spawn(async move {
		// The first connection the listener yields: refused handshakes never get this far.
		let (mut peer, info) = listener.accept().await.unwrap();
		if let Ok(ReceivedMessage::Request(request, body)) = peer.recv_message().await {
			request.send_response(0, body).await.unwrap();
		}
		info
	});

	// No certificate at all.
	refused_after_handshake(address, TlsClientConfig::new(ca.roots()).unwrap()).await;
	// A certificate from another CA.
	let foreign = other.leaf("robot-1", &["robot-1.local"]).identity();
	refused_after_handshake(address, TlsClientConfig::with_identity(ca.roots(), foreign).unwrap()).await;
	// An expired certificate from the right CA.
	let expired = ca.expired("robot-1", &["robot-1.local"]).identity();
	refused_after_handshake(address, TlsClientConfig::with_identity(ca.roots(), expired).unwrap()).await;

	// A current certificate from the right CA.
	let good = ca.leaf("robot-1", &["robot-1.local"]).identity();
	let client = TlsClientConfig::with_identity(ca.roots(), good).unwrap();
	let (peer, _) = within(TlsPeer::connect(address, "localhost", &client, &Config::default())).await.unwrap();
	let response = within(async { peer.send_request(1, "hi").await?.recv_response().await }).await.unwrap();
	assert_eq!(&response.body[..], b"hi");
	let info = within(accepting).await.unwrap();
	let certificate = info.peer_certificate.clone().expect("the verified client certificate");
	assert_eq!(certificate.common_names, ["robot-1"]);
	assert_eq!(certificate.dns_names, ["robot-1.local"]);
	assert!(certificate.subject.contains("CN=robot-1"), "{}", certificate.subject);
	assert!(certificate.names("robot-1.local") && certificate.names("robot-1") && !certificate.names("robot-2"));
	assert!(info.to_string().contains("CN=robot-1"), "{info}");
}

#[tokio::test]
async fn an_admission_check_by_certificate_name_refuses_other_clients_of_the_same_ca() {
	let ca = Ca::new("test CA");
	let tls = TlsServerConfig::mutual(server_leaf(&ca).identity(), ca.roots()).unwrap();
	let (listener, address) = listener(tls, &Config::default()).await;
	let mut listener = listener.with_admission(admission::certificate_names(["robot-1"]));
	let accepting = tokio::spawn(async move {
		let (mut peer, info) = listener.accept().await.unwrap();
		if let Ok(ReceivedMessage::Request(request, body)) = peer.recv_message().await {
			request.send_response(0, body).await.unwrap();
		}
		info
	});
	let robot_2 =
		TlsClientConfig::with_identity(ca.roots(), ca.leaf("robot-2", &["robot-2.local"]).identity()).unwrap();
	refused_after_handshake(address, robot_2).await;
	let robot_1 = TlsClientConfig::with_identity(ca.roots(), ca.leaf("robot-1", &[]).identity()).unwrap();
	let (peer, _) = within(TlsPeer::connect(address, "localhost", &robot_1, &Config::default())).await.unwrap();
	let response = within(async { peer.send_request(1, "hi").await?.recv_response().await }).await.unwrap();
	assert_eq!(&response.body[..], b"hi");
	assert_eq!(within(accepting).await.unwrap().peer_certificate.unwrap().common_names, ["robot-1"]);
}

#[tokio::test]
async fn a_stalled_handshake_holds_up_no_one() {
	let ca = Ca::new("test CA");
	let tls = TlsServerConfig::new(server_leaf(&ca).identity())
		.unwrap()
		.with_handshake_timeout(Duration::from_millis(300))
		.with_max_handshakes(1);
	let (mut listener, address) = listener(tls, &Config::default()).await;
	// Connects and never says a word; it takes the only handshake slot until the timeout.
	let _stalled = tokio::net::TcpStream::connect(address).await.unwrap();
	let client = TlsClientConfig::new(ca.roots()).unwrap();
	let config = Config::default();
	let (connected, accepted) =
		within(async { tokio::join!(TlsPeer::connect(address, "localhost", &client, &config), listener.accept()) })
			.await;
	connected.unwrap();
	accepted.unwrap();
}

#[tokio::test]
async fn reconnecting_works_over_tls() {
	let ca = Ca::new("test CA");
	let (mut listener, address) =
		listener(TlsServerConfig::new(server_leaf(&ca).identity()).unwrap(), &Config::default()).await;
	let served = tokio::spawn(async move {
		// Answer one request per connection, then close it.
		for _ in 0..2 {
			let (mut peer, _) = listener.accept().await.unwrap();
			if let Ok(ReceivedMessage::Request(request, body)) = peer.recv_message().await {
				request.send_response(0, body).await.unwrap();
			}
			peer.close();
			peer.closed().await;
		}
	});
	let backoff = Backoff::default().with_initial_delay(Duration::from_millis(10));
	let client =
		Reconnecting::tls(address, "localhost", TlsClientConfig::new(ca.roots()).unwrap(), &Config::default(), backoff);
	for text in ["first", "second"] {
		let response = within(async {
			loop {
				match client.send_request(1, text).await?.recv_response().await {
					Err(error) if error.kind() == ErrorKind::ConnectionClosed => continue,
					other => return other,
				}
			}
		})
		.await
		.unwrap();
		assert_eq!(&response.body[..], text.as_bytes());
	}
	assert_eq!(client.generation(), 2);
	within(served).await.unwrap();
}

#[tokio::test]
async fn bad_configuration_is_an_error_that_names_the_file() {
	let dir = TempDir::new("config");
	let missing = dir.0.join("missing.pem");
	let error = TlsRoots::from_pem_file(&missing).unwrap_err();
	assert!(error.to_string().contains("missing.pem"), "{error}");
	let empty = dir.write("empty.pem", "");
	assert!(TlsRoots::from_pem_file(&empty).unwrap_err().to_string().contains("none found"));
	let ca = Ca::new("test CA");
	let leaf = ca.leaf("server", &["localhost"]);
	let chain = dir.write("chain.pem", &leaf.chain);
	let error = TlsIdentity::from_pem_files(&chain, Path::new(&missing)).unwrap_err();
	assert!(error.to_string().contains("private key"), "{error}");
	// A key that does not belong to the certificate.
	let other_key = KeyPair::generate().unwrap().serialize_pem();
	let mismatched = TlsIdentity::from_pem(leaf.chain.as_bytes(), other_key.as_bytes()).unwrap();
	assert!(TlsServerConfig::new(mismatched).is_err());
}

#[tokio::test]
async fn a_transport_made_by_hand_reports_the_server_certificate() {
	let ca = Ca::new("test CA");
	let (mut listener, address) =
		listener(TlsServerConfig::new(server_leaf(&ca).identity()).unwrap(), &Config::default()).await;
	let accepting = tokio::spawn(async move { listener.accept().await.map(|_| ()) });
	let client = TlsClientConfig::new(ca.roots()).unwrap();
	let transport = within(TlsTransport::connect(address, "127.0.0.1", &client, &Config::default())).await.unwrap();
	let info = peerwire::Transport::info(&transport);
	let certificate = info.peer_certificate.unwrap();
	assert_eq!(certificate.dns_names, ["localhost"]);
	assert_eq!(certificate.ip_addresses, [std::net::IpAddr::from([127, 0, 0, 1])]);
	within(accepting).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_requests_in_flight_keep_flowing() {
	// Each side's writer hands whole batches to rustls, which keeps the records that do not fit
	// in the socket: they must be flushed out, or both sides end up waiting for each other. In
	// a release build this hung within a second before the fix; a debug build is rarely fast
	// enough to fill the socket, and the writer's unit test
	// (`bytes_held_by_the_inner_writer_count_as_queued_until_it_is_flushed`) covers it there.
	let ca = Ca::new("test CA");
	let (mut listener, address) =
		listener(TlsServerConfig::new(server_leaf(&ca).identity()).unwrap(), &Config::default()).await;
	let client_tls = TlsClientConfig::new(ca.roots()).unwrap();
	let config = Config::default();
	let (client, server) =
		tokio::join!(TlsPeer::connect(address, "localhost", &client_tls, &config), listener.accept());
	let (client, _) = client.unwrap();
	let (mut server, _) = server.unwrap();
	tokio::spawn(async move {
		while let Ok(ReceivedMessage::Request(request, body)) = server.recv_message().await {
			let _ = request.send_response(0, body).await;
		}
	});
	let body = bytes::Bytes::from(vec![7u8; 16]);
	let mut open = std::collections::VecDeque::new();
	for _ in 0..64 {
		open.push_back(client.send_request(1, body.clone()).await.unwrap());
	}
	for _ in 0..20_000 {
		let mut oldest = open.pop_front().unwrap();
		let response = within(oldest.recv_response()).await.unwrap();
		assert_eq!(response.body, body);
		open.push_back(client.send_request(1, body.clone()).await.unwrap());
	}
}
