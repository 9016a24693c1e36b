//! The `metrics` feature: the counters of a scripted exchange, as a Prometheus recorder sees
//! them once the connections have ended (and while they run, after the publishing interval).

#![cfg(feature = "metrics")]

use std::collections::BTreeMap;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use peerwire::{Config, TcpListener, TcpPeer};

/// `name{labels}` → value, for the lines of a Prometheus scrape that start with `peerwire_`.
fn scrape(text: &str) -> BTreeMap<String, f64> {
	text.lines()
		.filter(|line| line.starts_with("peerwire_"))
		.map(|line| {
			let (name, value) = line.rsplit_once(' ').unwrap();
			(name.to_string(), value.parse().unwrap())
		})
		.collect()
}

#[test]
fn counters_reach_the_recorder() {
	let recorder = PrometheusBuilder::new().build_recorder();
	let handle = recorder.handle();
	// A local recorder on a current-thread runtime: every peer task publishes on this thread.
	let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
	metrics::with_local_recorder(&recorder, || {
		runtime.block_on(async {
			let config = Config::default();
			let mut listener = TcpListener::bind("127.0.0.1:0", &config).await.unwrap();
			let address = listener.local_addr().unwrap();
			let (client, server) = tokio::join!(TcpPeer::connect(address, &config), listener.accept());
			let (client, _) = client.unwrap();
			let (mut server, _) = server.unwrap();
			let mut request = client.send_request(1, "abc").await.unwrap();
			let (received, _) = server.recv_message().await.unwrap().into_request().unwrap();

			// While the connection runs, the counters arrive within the interval.
			tokio::time::sleep(Duration::from_millis(1300)).await;
			let running = scrape(&handle.render());
			assert_eq!(running["peerwire_connections_open"], 2.0, "{running:#?}");
			assert_eq!(running["peerwire_requests_open{direction=\"sent\"}"], 1.0, "{running:#?}");
			assert_eq!(running["peerwire_requests_open{direction=\"received\"}"], 1.0, "{running:#?}");
			assert_eq!(running["peerwire_connections_accepted_total"], 1.0);

			received.send_error_response("no").await.unwrap();
			assert!(request.recv_response().await.unwrap().is_error_response());
			client.send_stream(2, "hello").await.unwrap();
			server.recv_message().await.unwrap();
			client.close();
			client.closed().await;
			server.closed().await;
			drop(server);
		});
	});
	let done = scrape(&handle.render());
	let expect = [
		("peerwire_connections_open", 0.0),
		("peerwire_requests_open{direction=\"sent\"}", 0.0),
		("peerwire_requests_open{direction=\"received\"}", 0.0),
		// Both ends live in this process: each message is sent once and received once.
		("peerwire_messages_sent_total{type=\"request\"}", 1.0),
		("peerwire_messages_received_total{type=\"request\"}", 1.0),
		("peerwire_messages_sent_total{type=\"response\"}", 1.0),
		("peerwire_messages_received_total{type=\"response\"}", 1.0),
		("peerwire_messages_sent_total{type=\"stream\"}", 1.0),
		("peerwire_body_bytes_sent_total{type=\"request\"}", 3.0),
		("peerwire_body_bytes_received_total{type=\"stream\"}", 5.0),
		("peerwire_error_responses_sent_total", 1.0),
		("peerwire_error_responses_received_total", 1.0),
		("peerwire_connections_accepted_total", 1.0),
	];
	for (name, value) in expect {
		assert_eq!(done.get(name), Some(&value), "{name} in {done:#?}");
	}
	assert!(!done.contains_key("peerwire_protocol_errors_total"), "nothing to count: {done:#?}");
}
