//! A TCP client: `cargo run --example tcp-client [ADDRESS]` (default 127.0.0.1:29285), against
//! `cargo run --example tcp-server`.

#[path = "shared/client.rs"]
mod client;
#[path = "shared/service.rs"]
mod service;

#[tokio::main]
async fn main() -> Result<(), peerwire::Error> {
	let address = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:29285".into());
	let (peer, info) = peerwire::TcpPeer::connect(&address, &peerwire::Config::default()).await?;
	println!("[client] connected to {info}");
	client::run(&peer).await
}
