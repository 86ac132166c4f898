//! `fluxlit-rs`: the `fluxlit` command under a second name, built only for the Python wheel
//! (`pip install fluxlit-rs`, feature `wheel`). FluxLit for Python's `fluxlit` script may replace
//! `bin/fluxlit` in a shared environment; this name stays ours (docs/install.md).

#[path = "../main.rs"]
mod fluxlit_main;

fn main() -> std::process::ExitCode {
    fluxlit_main::main()
}
