//! The rendezvous server: a producer's put waits until a consumer's get takes it, and a get
//! waits until a put comes. Channels are addressed by namespace and name and made on first use.
//!
//! Each channel is one task that owns its waiting requests (two queues, oldest first) and pairs
//! them off one pair at a time: so matching is in arrival order with no lock held across an
//! await, and a channel never blocks another.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use peerwire::Bytes;
use peerwire::{PeerHandle, ReceivedMessage, ReceivedRequestHandle, TcpListener};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::wire::{self, Channel};

/// How many requests may queue for a channel's task before their connections wait.
const MAILBOX: usize = 64;

/// Every channel, by namespace and name.
#[derive(Default)]
pub struct Registry {
	namespaces: Mutex<HashMap<String, HashMap<String, ChannelHandle>>>,
}

/// The registry's hold on a channel's task. Dropping it deletes the channel: the task fails
/// every request waiting on it, and requests still on their way find the mailbox closed.
struct ChannelHandle {
	mailbox: mpsc::Sender<Arrival>,
	_delete: oneshot::Sender<()>,
}

/// A request arriving at a channel.
enum Arrival {
	Put(Waiting, Bytes),
	Get(Waiting),
	Status(ReceivedRequestHandle),
}

/// A request waiting on a channel.
struct Waiting {
	request: ReceivedRequestHandle,
	deadline: Option<Instant>,
}

/// Accept clients on `listener` until the task is dropped.
pub async fn serve(mut listener: TcpListener) {
	let registry = Arc::new(Registry::default());
	let mut connections = tokio::task::JoinSet::new();
	loop {
		match listener.accept().await {
			Ok((peer, _info)) => {
				connections.spawn(serve_connection(peer, registry.clone()));
			},
			Err(error) => eprintln!("[server] accept failed: {error}"),
		}
		while connections.try_join_next().is_some() {}
	}
}

/// Serve one client until its connection ends. Requests are handed to their channel in the
/// order they arrive, so one client's puts (or gets) keep their order.
async fn serve_connection(mut peer: PeerHandle, registry: Arc<Registry>) {
	while let Ok(message) = peer.recv_message().await {
		let ReceivedMessage::Request(request, body) = message else { continue };
		let parsed = match wire::decode(body) {
			Ok(parsed) => parsed,
			Err(reason) => {
				let _ = request.send_error_response(&reason).await;
				continue;
			},
		};
		let channel = parsed.channel;
		if channel.namespace.is_empty() || (channel.name.is_empty() && request.service_id() != wire::DELETE_NAMESPACE) {
			let _ = request.send_error_response("a channel needs a namespace and a name").await;
			continue;
		}
		let deadline = parsed.timeout.map(|timeout| Instant::now() + timeout);
		match request.service_id() {
			wire::PUT => registry.deliver(&channel, Arrival::Put(Waiting { request, deadline }, parsed.payload)).await,
			wire::GET => registry.deliver(&channel, Arrival::Get(Waiting { request, deadline })).await,
			wire::STATUS => registry.deliver(&channel, Arrival::Status(request)).await,
			wire::DELETE_CHANNEL => {
				let deleted = registry.delete_channel(&channel);
				let _ = request.send_response(0, wire::encode_pair(deleted, 0)).await;
			},
			wire::DELETE_NAMESPACE => {
				let deleted = registry.delete_namespace(&channel.namespace);
				let _ = request.send_response(0, wire::encode_pair(deleted, 0)).await;
			},
			other => {
				let _ = request.send_error_response(&format!("unknown service {other}")).await;
			},
		}
	}
}

impl Registry {
	/// Hand a request to its channel, making the channel if it is new.
	async fn deliver(&self, channel: &Channel, arrival: Arrival) {
		let mailbox = {
			let mut namespaces = self.namespaces.lock().unwrap();
			let channels = namespaces.entry(channel.namespace.clone()).or_default();
			let handle = channels.entry(channel.name.clone()).or_insert_with(|| {
				let (mailbox, arrivals) = mpsc::channel(MAILBOX);
				let (delete, deleted) = oneshot::channel();
				tokio::spawn(run_channel(arrivals, deleted));
				ChannelHandle { mailbox, _delete: delete }
			});
			handle.mailbox.clone()
		};
		// Fails only if the channel was deleted after this request found it.
		if let Err(mpsc::error::SendError(arrival)) = mailbox.send(arrival).await {
			arrival.fail(wire::DELETED, "channel deleted").await;
		}
	}

	fn delete_channel(&self, channel: &Channel) -> u32 {
		let mut namespaces = self.namespaces.lock().unwrap();
		let Some(channels) = namespaces.get_mut(&channel.namespace) else { return 0 };
		let deleted = channels.remove(&channel.name).is_some();
		if channels.is_empty() {
			namespaces.remove(&channel.namespace);
		}
		u32::from(deleted)
	}

	fn delete_namespace(&self, namespace: &str) -> u32 {
		let removed = self.namespaces.lock().unwrap().remove(namespace);
		removed.map_or(0, |channels| channels.len() as u32)
	}
}

/// One channel: pair off waiting puts and gets, oldest first, one pair at a time; expire the
/// requests whose timeout passes; fail them all when the channel is deleted.
async fn run_channel(mut arrivals: mpsc::Receiver<Arrival>, mut deleted: oneshot::Receiver<()>) {
	let mut puts: VecDeque<(Waiting, Bytes)> = VecDeque::new();
	let mut gets: VecDeque<Waiting> = VecDeque::new();
	loop {
		while !puts.is_empty() && !gets.is_empty() {
			let get = gets.pop_front().expect("checked non-empty");
			let (_, payload) = puts.front().expect("checked non-empty");
			// The consumer first: if its connection is gone, the payload stays for the next one.
			// A consumer whose remote has finished sending may have gone entirely (over TCP that
			// cannot be told before a write fails), so it gets nothing rather than lose the job.
			if get.request.is_remote_finished() {
				let _ = get.request.send_error_response("the consumer's connection is closing").await;
				continue;
			}
			if get.request.send_response(0, payload.clone()).await.is_ok() {
				let (put, _) = puts.pop_front().expect("checked non-empty");
				let _ = put.request.send_response(0, Bytes::new()).await;
			}
		}

		let next_deadline =
			puts.iter().map(|(waiting, _)| waiting).chain(&gets).filter_map(|waiting| waiting.deadline).min();
		let expiry = async {
			match next_deadline {
				Some(deadline) => tokio::time::sleep_until(deadline).await,
				None => std::future::pending().await,
			}
		};
		tokio::select! {
			biased;
			_ = &mut deleted => break,
			arrival = arrivals.recv() => match arrival {
				Some(Arrival::Put(waiting, payload)) => puts.push_back((waiting, payload)),
				Some(Arrival::Get(waiting)) => gets.push_back(waiting),
				Some(Arrival::Status(request)) => {
					// A consumer whose connection is closing is not counted: it will get nothing.
					let consumers = gets.iter().filter(|get| !get.request.is_remote_finished()).count();
					let counts = wire::encode_pair(puts.len() as u32, consumers as u32);
					let _ = request.send_response(0, counts).await;
				},
				None => break,
			},
			() = expiry => {
				let now = Instant::now();
				let expired = |waiting: &Waiting| waiting.deadline.is_some_and(|deadline| deadline <= now);
				for waiting in extract(&mut puts, |(waiting, _)| expired(waiting)).into_iter().map(|(waiting, _)| waiting).chain(extract(&mut gets, expired)) {
					fail(&waiting.request, wire::TIMED_OUT, "timed out").await;
				}
			},
		}
	}

	// Deleted: whatever waits, or is still on its way in, gets an error.
	arrivals.close();
	while let Ok(arrival) = arrivals.try_recv() {
		arrival.fail(wire::DELETED, "channel deleted").await;
	}
	for waiting in puts.into_iter().map(|(waiting, _)| waiting).chain(gets) {
		fail(&waiting.request, wire::DELETED, "channel deleted").await;
	}
}

/// Remove the items that `matches` picks, keeping the order of the rest.
fn extract<T>(queue: &mut VecDeque<T>, mut matches: impl FnMut(&T) -> bool) -> Vec<T> {
	let mut picked = Vec::new();
	for item in std::mem::take(queue) {
		if matches(&item) {
			picked.push(item);
		} else {
			queue.push_back(item);
		}
	}
	picked
}

impl Arrival {
	async fn fail(self, code: i32, text: &str) {
		let request = match self {
			Arrival::Put(waiting, _) | Arrival::Get(waiting) => waiting.request,
			Arrival::Status(request) => request,
		};
		fail(&request, code, text).await;
	}
}

/// Answer with an application result code (negative) and a text. Fails only if the client's
/// connection is gone, and then no one is waiting for the answer.
async fn fail(request: &ReceivedRequestHandle, code: i32, text: &str) {
	let _ = request.send_response(code, text.to_string()).await;
}
