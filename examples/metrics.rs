//! Counters in Prometheus: a server and a client over TCP, with the `metrics` feature publishing
//! their counters to a Prometheus recorder, and what a scrape would return printed at the end.
//!
//! ```sh
//! cargo run --example metrics --features metrics
//! ```
//!
//! A real service would serve the scrape over HTTP: enable the exporter's `http-listener`
//! feature and call `PrometheusBuilder::new().with_http_listener(([0, 0, 0, 0], 9000)).install()`
//! instead of `install_recorder()`.

use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use peerwire::{Config, ReceivedMessage, TcpListener, TcpPeer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
	let prometheus = PrometheusBuilder::new().install_recorder()?;

	let config = Config::default();
	let mut listener = TcpListener::bind("127.0.0.1:0", &config).await?;
	let address = listener.local_addr()?;
	let server = tokio::spawn(async move {
		let (mut peer, _info) = listener.accept().await?;
		// Answer "add" requests; refuse the rest with an error response.
		while let Ok(ReceivedMessage::Request(request, body)) = peer.recv_message().await {
			if request.service_id() == 1 {
				request.send_update(2, "working").await?;
				request.send_response(0, body).await?;
			} else {
				request.send_error_response("unknown service").await?;
			}
		}
		println!("server side: {:?}", listener.stats());
		Ok::<_, peerwire::Error>(())
	});

	let (client, _info) = TcpPeer::connect(address, &config).await?;
	for i in 0..100 {
		let service_id = if i % 10 == 9 { 7 } else { 1 };
		let mut request = client.send_request(service_id, format!("job {i}")).await?;
		while request.recv_update().await?.is_some() {}
		let _ = request.recv_response_ok().await;
	}
	client.send_stream(3, "done").await?;
	println!("client side: {:#?}", client.stats());

	// The counters are published once a second while a connection runs, and when it ends.
	client.close();
	client.closed().await;
	server.await??;
	tokio::time::sleep(Duration::from_millis(100)).await;

	println!("\nwhat a Prometheus scrape returns:\n");
	for line in prometheus.render().lines().filter(|line| line.starts_with("peerwire_")) {
		println!("{line}");
	}
	Ok(())
}
