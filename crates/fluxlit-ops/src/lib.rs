//! Chaos and soak tools for FluxLit, behind the `fluxlit-ops` binary (see
//! `docs/chaos-and-soak.md`).
//!
//! Tools that take a base URL (`soak-http`, `soak-readyz`, `soak-metrics`, `ws-load`,
//! `chaos-dropped-websocket`, `chaos-oversized-body`) run against any running gateway.
//! The others (`chaos-sidecar-kill`, `chaos-slow-upstream`, `chaos-graceful-shutdown`) start
//! `fluxlit run` themselves on `127.0.0.1` with port 0, in a copy of the app directory, and
//! kill everything they started, even when a check fails. `ci-short` runs a short version of
//! every tool against a freshly started example app.
//!
//! Every loop is bounded in count and in time, and every tool produces a [`report::Report`]:
//! one summary line (`name: PASS …` / `name: FAIL …`) or one JSON object.

pub mod body;
pub mod chaos;
pub mod ci;
pub mod launch;
pub mod net;
pub mod proc;
pub mod report;
pub mod soak;
pub mod upstream;
pub mod ws;
