//! A TCP server: `cargo run --example tcp-server [ADDRESS]` (default 127.0.0.1:29285).
//! Try it with `cargo run --example tcp-client`.

#[path = "shared/service.rs"]
mod service;

#[tokio::main]
async fn main() -> Result<(), peerwire::Error> {
	let address = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:29285".into());
	let mut listener = peerwire::TcpListener::bind(&address, &peerwire::Config::default()).await?;
	println!("[server] listening on tcp://{}", listener.local_addr()?);
	loop {
		match listener.accept().await {
			Ok((peer, info)) => {
				println!("[server] connection from {info}");
				tokio::spawn(service::serve(peer));
			},
			// For example out of descriptors: this connection failed, the listener did not.
			Err(error) => eprintln!("[server] accept failed: {error}"),
		}
	}
}
