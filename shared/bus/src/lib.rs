//! NATS plumbing shared by every berth binary: connecting, typed requests with deadlines,
//! serving typed endpoints as a NATS micro service, JetStream resources, and the common
//! service bootstrap (flags, config file, tracing, shutdown).

pub mod bootstrap;
pub mod connect;
pub mod events;
pub mod jetstream;
pub mod objects;
pub mod request;
pub mod serve;
pub mod settings;
pub mod shutdown;
pub mod telemetry;

pub use connect::{connect_once, connect_service, ConnectFailure, NatsSettings};
pub use request::{request, request_with_progress, BusError, ProgressSink};
pub use serve::{Handled, RequestContext, ServiceHandle, ServiceIdentity};
