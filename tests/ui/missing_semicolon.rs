// The last declaration without its `;`.
peerwire::interface! {
	pub mod arm (format = peerwire::typed::Json) {
		stream 10 stop;
		service 1 move_to(f64) -> f64
	}
}

fn main() {}
