//! Every NATS subject, queue group, service name and JetStream resource name berth uses.
//!
//! Nothing outside this module spells a subject: servers, CLI, tests and benchmarks call
//! these builders so client and server cannot drift apart.

use std::fmt;

/// Root of every berth subject.
pub const ROOT: &str = "berth.v1";

macro_rules! verbs {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($variant),+
        }

        impl $name {
            /// Every verb, in contract order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The verb's subject token.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

verbs!(
    /// Verbs of the image-store (`berth.v1.image.<verb>`).
    ImageVerb {
        Pull => "pull",
        Import => "import",
        Load => "load",
        Save => "save",
        Push => "push",
        List => "list",
        Inspect => "inspect",
        History => "history",
        Tag => "tag",
        Remove => "remove",
        Prune => "prune",
    }
);

verbs!(
    /// Verbs of a node's layer-unpacker (`berth.v1.unpack.<node>.<verb>`).
    UnpackVerb {
        Prepare => "prepare",
        List => "list",
        Remove => "remove",
        Prune => "prune",
        Release => "release",
    }
);

verbs!(
    /// Verbs of the scheduler (`berth.v1.sched.<verb>`).
    SchedVerb {
        Run => "run",
        List => "list",
        Inspect => "inspect",
        Start => "start",
        Stop => "stop",
        Kill => "kill",
        Remove => "remove",
        Nodes => "nodes",
        NodeInspect => "node_inspect",
        Drain => "drain",
        Activate => "activate",
    }
);

verbs!(
    /// Verbs of a node's executor (`berth.v1.exec.<node>.<verb>`).
    ExecVerb {
        Create => "create",
        Start => "start",
        Kill => "kill",
        Remove => "remove",
        Exec => "exec",
        Inspect => "inspect",
        List => "list",
        Stats => "stats",
        Logs => "logs",
        Stop => "stop",
        Wait => "wait",
        Stdin => "stdin",
        VolumeCreate => "volume_create",
        VolumeList => "volume_list",
        VolumeInspect => "volume_inspect",
        VolumeRemove => "volume_remove",
    }
);

verbs!(
    /// Verbs of a node's networks, served by its executor (`berth.v1.net.<node>.<verb>`).
    NetVerb {
        Create => "create",
        List => "list",
        Inspect => "inspect",
        Remove => "remove",
        Connect => "connect",
        Disconnect => "disconnect",
    }
);

verbs!(
    /// What an event is about (`berth.v1.events.<kind>.…`).
    EventKind {
        Container => "container",
        Image => "image",
        Node => "node",
        Snapshot => "snapshot",
    }
);

/// `berth.v1.image.<verb>`
pub fn image(verb: ImageVerb) -> String {
    format!("{ROOT}.image.{verb}")
}

/// `berth.v1.unpack.<node>.<verb>`
pub fn unpack(node: &str, verb: UnpackVerb) -> String {
    format!("{ROOT}.unpack.{node}.{verb}")
}

/// `berth.v1.sched.<verb>`
pub fn sched(verb: SchedVerb) -> String {
    format!("{ROOT}.sched.{verb}")
}

/// `berth.v1.exec.<node>.<verb>`
pub fn exec(node: &str, verb: ExecVerb) -> String {
    format!("{ROOT}.exec.{node}.{verb}")
}

/// `berth.v1.net.<node>.<verb>`
pub fn net(node: &str, verb: NetVerb) -> String {
    format!("{ROOT}.net.{node}.{verb}")
}

/// `berth.v1.events.<kind>.<id>.<action>`
pub fn event(kind: EventKind, id: &str, action: &str) -> String {
    format!("{ROOT}.events.{kind}.{id}.{action}")
}

/// `berth.v1.events.>`: everything the `BERTH_EVENTS` stream captures.
pub fn all_events() -> String {
    format!("{ROOT}.events.>")
}

/// `berth.v1.events.<kind>.>`: every event about one kind of object.
pub fn events_of_kind(kind: EventKind) -> String {
    format!("{ROOT}.events.{kind}.>")
}

/// `berth.v1.logs.<id>`: live log chunks of one container (bincode `LogChunk`).
pub fn logs(container_id: &str) -> String {
    format!("{ROOT}.logs.{container_id}")
}

/// `berth.v1.logs_json.<id>`: the same chunks as [`logs`], as JSON (`data` in base64),
/// for clients without bincode.
///
/// A twin subject rather than a header: a published chunk goes to every subscriber
/// at once, so a subscriber cannot ask for an encoding on it, while a subject is
/// something it chooses. The twin lives under its own token, not under `logs.<id>.`, so
/// that `berth.v1.logs.*` and `berth.v1.logs.>` still carry bincode only.
pub fn logs_json(container_id: &str) -> String {
    format!("{ROOT}.logs_json.{container_id}")
}

/// `berth.v1.logs_json.>`: the JSON chunks of every container.
pub fn all_logs_json() -> String {
    format!("{ROOT}.logs_json.>")
}

/// `berth.v1.schema`: every service instance answers (like `$SRV.INFO`) with the JSON
/// Schemas of its endpoints' requests and replies and of the error envelope.
pub fn schema() -> String {
    format!("{ROOT}.schema")
}

/// Where services send the bodiless NATS micro error reply that makes async-nats count an
/// error in `$SRV.STATS`; the caller gets the error envelope on its own reply subject.
/// Nothing subscribes here, so the server drops these at once.
pub fn error_count_sink() -> String {
    format!("{ROOT}.micro.error_counted")
}

/// Subject served only by the benchmark's own echo endpoint (never by a berth service).
pub fn bench_echo() -> String {
    format!("{ROOT}.bench.echo")
}

/// Subject of the benchmark's raw async-nats responder, the baseline the bus is measured against.
pub fn bench_echo_raw() -> String {
    format!("{ROOT}.bench.echo_raw")
}

/// A fresh progress subject for one long-running request, under the caller's inbox
/// prefix so that only the caller's subscription sees it.
pub fn progress(inbox_prefix: &str, request_id: &str) -> String {
    format!("{inbox_prefix}.progress.{request_id}")
}

/// Checks that a node or container id can be used as a single subject token: non-empty,
/// no whitespace, no `.`, `*` or `>`. Returns a reason when it cannot.
pub fn check_token(kind: &str, token: &str) -> Result<(), String> {
    if token.is_empty() {
        return Err(format!("{kind} must not be empty"));
    }
    if token.len() > 128 {
        return Err(format!("{kind} {token:?} is longer than 128 bytes"));
    }
    if let Some(bad) = token
        .chars()
        .find(|c| matches!(c, '.' | '*' | '>') || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "{kind} {token:?} contains {bad:?}, which cannot appear in a NATS subject token"
        ));
    }
    Ok(())
}

/// NATS micro service discovery subjects (the `$SRV` protocol, not berth's own).
pub mod micro {
    /// `$SRV.PING` to every service on the bus.
    pub const PING_ALL: &str = "$SRV.PING";
    /// `$SRV.INFO` to every service on the bus.
    pub const INFO_ALL: &str = "$SRV.INFO";
    /// `$SRV.STATS` to every service on the bus.
    pub const STATS_ALL: &str = "$SRV.STATS";

    /// `$SRV.PING.<name>`: every instance of one service.
    pub fn ping(service: &str) -> String {
        format!("{PING_ALL}.{service}")
    }

    /// `$SRV.INFO.<name>`: every instance of one service.
    pub fn info(service: &str) -> String {
        format!("{INFO_ALL}.{service}")
    }

    /// `$SRV.STATS.<name>`: every instance of one service.
    pub fn stats(service: &str) -> String {
        format!("{STATS_ALL}.{service}")
    }
}

/// Names under which the services register on the bus (NATS micro `name`).
pub mod service_names {
    pub const IMAGE_STORE: &str = "berth-image-store";
    pub const LAYER_UNPACKER: &str = "berth-layer-unpacker";
    pub const SCHEDULER: &str = "berth-scheduler";
    pub const EXECUTOR: &str = "berth-executor";
    /// All four, in the order `berth system info` prints them.
    pub const ALL: [&str; 4] = [IMAGE_STORE, LAYER_UNPACKER, SCHEDULER, EXECUTOR];
    /// Prefix shared by every berth service name.
    pub const PREFIX: &str = "berth-";
}

/// Queue groups of the services that scale by running more instances.
pub mod queue_groups {
    pub const IMAGE_STORE: &str = "image-store";
    pub const SCHEDULER: &str = "scheduler";
    /// Node-local services: one per node, but a queue group keeps a restarted
    /// instance overlapping its predecessor from answering twice.
    pub const LAYER_UNPACKER: &str = "layer-unpacker";
    pub const EXECUTOR: &str = "executor";
}

/// Metadata keys every service puts in its `$SRV.INFO`.
pub mod metadata_keys {
    pub const NODE_ID: &str = "node_id";
    pub const VERSION: &str = "version";
    pub const STARTED: &str = "started";
    /// Per endpoint: the JSON Schema of its request body (compact JSON text).
    pub const REQUEST_SCHEMA: &str = "request_schema";
    /// Per endpoint: the JSON Schema of its successful reply body (compact JSON text).
    pub const RESPONSE_SCHEMA: &str = "response_schema";
}

/// Names JetStream's Object Store uses under the hood (its own scheme, spelled here so
/// that readers which fetch chunks directly do not scatter it).
pub mod object_store {
    /// The stream holding a bucket's chunks and metadata.
    pub fn stream(bucket: &str) -> String {
        format!("OBJ_{bucket}")
    }

    /// The subject of one object's chunks.
    pub fn chunks(bucket: &str, nuid: &str) -> String {
        format!("$O.{bucket}.C.{nuid}")
    }

    /// The subject of one object's metadata; `encoded_name` is the object name in
    /// base64url (with padding), as every Object Store client writes it.
    pub fn meta(bucket: &str, encoded_name: &str) -> String {
        format!("$O.{bucket}.M.{encoded_name}")
    }
}

/// JetStream resources of DESIGN.md.
pub mod jetstream {
    /// Object Store: layer and config blobs, object name = digest.
    pub const BLOBS_BUCKET: &str = "berth-blobs";
    /// KV: manifests by digest, references (`name:tag` → digest).
    pub const IMAGES_BUCKET: &str = "berth-images";
    /// KV: node records.
    pub const NODES_BUCKET: &str = "berth-nodes";
    /// KV: desired + observed state of each container.
    pub const CONTAINERS_BUCKET: &str = "berth-containers";
    /// Stream capturing `berth.v1.events.>`.
    pub const EVENTS_STREAM: &str = "BERTH_EVENTS";
    /// Durable pull consumer of `BERTH_EVENTS` shared by every scheduler instance: each
    /// container event is handled by one of them, and events published while none runs
    /// wait in the stream.
    pub const SCHEDULER_EVENTS_CONSUMER: &str = "berth-scheduler-events";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_follow_the_design_table() {
        assert_eq!(image(ImageVerb::Pull), "berth.v1.image.pull");
        assert_eq!(
            unpack("n1", UnpackVerb::Prepare),
            "berth.v1.unpack.n1.prepare"
        );
        assert_eq!(sched(SchedVerb::Run), "berth.v1.sched.run");
        assert_eq!(exec("n1", ExecVerb::Logs), "berth.v1.exec.n1.logs");
        assert_eq!(net("n1", NetVerb::Connect), "berth.v1.net.n1.connect");
        assert_eq!(
            event(EventKind::Container, "abc", "start"),
            "berth.v1.events.container.abc.start"
        );
        assert_eq!(all_events(), "berth.v1.events.>");
        assert_eq!(logs("abc"), "berth.v1.logs.abc");
        assert_eq!(logs_json("abc"), "berth.v1.logs_json.abc");
        assert_eq!(
            micro::info(service_names::EXECUTOR),
            "$SRV.INFO.berth-executor"
        );
    }

    #[test]
    fn every_verb_is_a_single_lowercase_token() {
        let tokens = ImageVerb::ALL
            .iter()
            .map(|v| v.as_str())
            .chain(UnpackVerb::ALL.iter().map(|v| v.as_str()))
            .chain(SchedVerb::ALL.iter().map(|v| v.as_str()))
            .chain(ExecVerb::ALL.iter().map(|v| v.as_str()))
            .chain(NetVerb::ALL.iter().map(|v| v.as_str()));
        for token in tokens {
            assert!(check_token("verb", token).is_ok(), "{token}");
            assert_eq!(token, token.to_lowercase());
        }
    }

    #[test]
    fn tokens_with_wildcards_or_dots_are_refused() {
        assert!(check_token("node id", "node-1").is_ok());
        for bad in ["", "a.b", "a*", ">", "a b", "tab\t"] {
            assert!(check_token("node id", bad).is_err(), "{bad:?}");
        }
    }
}

/// Names of transfer objects in the `berth-blobs` Object Store. They never look like a
/// digest, so garbage collection of blobs cannot mistake one for content.
pub mod transfer {
    /// Prefix of every transfer object name.
    pub const PREFIX: &str = "transfer.";

    /// Object a client uploads a tarball to before `import`/`load`; the store deletes it.
    pub fn upload_object(id: &str) -> String {
        format!("{PREFIX}upload.{id}")
    }

    /// Object `save` writes its archive to; the client fetches and deletes it.
    pub fn download_object(id: &str) -> String {
        format!("{PREFIX}download.{id}")
    }
}
