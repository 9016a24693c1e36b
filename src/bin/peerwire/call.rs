//! `peerwire call`: one request, its responder updates as they arrive, then the response.

use std::cell::Cell;
use std::os::fd::OwnedFd;
use std::time::Duration;

use bytes::Bytes;
use peerwire::Message;

use crate::address::Address;
use crate::body::load_main_body;
use crate::connect::{CliBody, Connected, Running, connect, open_fds};
use crate::failure::{EXIT_ERROR_RESPONSE, EXIT_TIMEOUT, Failure};
use crate::output::{MessageView, Printer};
use crate::{CallArgs, Global};

/// How long to wait for the connection to close cleanly once the response is in.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// What the call is doing, for the timeout message.
#[derive(Debug, Clone, Copy)]
enum Phase {
	Connecting,
	Sending,
	Waiting { request_id: u32 },
}

pub async fn run(args: CallArgs, global: &Global) -> Result<(), Failure> {
	let body = load_main_body(args.body.as_ref())?;
	let updates = args
		.updates
		.iter()
		.map(|update| Ok((update.service_id, update.body.load()?)))
		.collect::<Result<Vec<_>, Failure>>()?;
	let fds = open_fds(&args.address, &args.fds)?;
	let config = global.config();
	let printer = Printer::new(global.json, args.preview);
	let phase = Cell::new(Phase::Connecting);
	let call = Call { address: &args.address, service_id: args.service_id, printer, phase: &phase };

	let work = async {
		match connect(&args.address, &config, global.quiet, &global.tls).await? {
			Connected::Stream(running) => call.run(running, body, fds, updates).await,
			Connected::Seqpacket(running) => call.run(running, body, fds, updates).await,
		}
	};
	let Some(timeout) = args.timeout else {
		return work.await;
	};
	// Bound to a variable so that `work` (and its borrow of `phase`) is gone before `phase` is read.
	let result = tokio::time::timeout(timeout, work).await;
	result.unwrap_or_else(|_| {
		let doing = match phase.get() {
			Phase::Connecting => format!("connecting to {}", args.address),
			Phase::Sending => format!("sending the request to {}", args.address),
			Phase::Waiting { request_id } => {
				format!("waiting for the response to request {request_id} from {}", args.address)
			},
		};
		Err(Failure::new(EXIT_TIMEOUT, format!("timed out after {timeout:?} {doing}")))
	})
}

struct Call<'a> {
	address: &'a Address,
	service_id: i32,
	printer: Printer,
	phase: &'a Cell<Phase>,
}

impl Call<'_> {
	async fn run<B: CliBody>(
		&self,
		running: Running<B>,
		body: Bytes,
		fds: Vec<OwnedFd>,
		updates: Vec<(i32, Bytes)>,
	) -> Result<(), Failure> {
		let failed = |error: peerwire::Error, doing: &str| {
			Failure::peer(&error, format!("{doing} {}: {}", self.address, running.explain(&error)))
		};
		self.phase.set(Phase::Sending);
		running.check_body_len(body.len())?;
		for (_, update) in &updates {
			running.check_body_len(update.len())?;
		}
		let body = B::build(body, &fds)?;
		drop(fds);
		let mut request = running
			.peer
			.send_request(self.service_id, body)
			.await
			.map_err(|e| failed(e, "cannot send the request to"))?;
		for (service_id, body) in updates {
			let body = B::build(body, &[])?;
			request.send_update(service_id, body).await.map_err(|e| failed(e, "cannot send an update to"))?;
		}
		self.phase.set(Phase::Waiting { request_id: request.request_id() });
		let during = "no response from";
		while let Some(update) = request.recv_update().await.map_err(|e| failed(e, during))? {
			self.print(&update);
		}
		let response = request.recv_response().await.map_err(|e| failed(e, during))?;
		self.print(&response);
		drop(request);
		// The answer is in; a close that fails or takes long changes nothing about it.
		let _ = running.finish(Some(CLOSE_GRACE)).await;

		if response.is_error_response() {
			let text = match response.error_text() {
				Some(text) => text.into_owned(),
				None => format!("service id {}, {} bytes", response.header.service_id, response.body.len()),
			};
			return Err(Failure::new(EXIT_ERROR_RESPONSE, format!("error response from {}: {text}", self.address)));
		}
		Ok(())
	}

	fn print<B: CliBody>(&self, message: &Message<B>) {
		self.printer.message(&MessageView {
			conn: None,
			direction: None,
			header: message.header,
			body: message.body.as_bytes(),
			body_len: message.body.len(),
			fds: message.body.fd_count(),
		});
	}
}
