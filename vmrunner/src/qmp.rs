//! QMP, the QEMU Machine Protocol, without the I/O: every command Fast VM sends, typed (no command
//! name is spelled anywhere else, in either crate), and what a line from QEMU is. The controller's
//! async client and vmrunner's start-up handshake both speak through this module.

use std::fmt;
use std::path::Path;

use serde_json::{Value, json};

/// The longest line taken from QEMU. Replies to what we ask are kilobytes; a longer line is not a
/// reply to us, and reading it whole would let a broken monitor fill the controller's memory.
pub const MAX_MESSAGE: usize = 16 << 20;

/// One command, ready to be sent with an id.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    name: &'static str,
    arguments: Option<Value>,
}

impl Command {
    fn bare(name: &'static str) -> Command {
        Command { name, arguments: None }
    }

    fn with(name: &'static str, arguments: Value) -> Command {
        Command { name, arguments: Some(arguments) }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn arguments(&self) -> Option<&Value> {
        self.arguments.as_ref()
    }

    /// Leaves the greeting's negotiation mode; the first command of every connection.
    pub fn capabilities() -> Command {
        Command::bare("qmp_capabilities")
    }

    pub fn query_status() -> Command {
        Command::bare("query-status")
    }

    /// Resumes a paused guest (QEMU starts with `-S`).
    pub fn cont() -> Command {
        Command::bare("cont")
    }

    /// Pauses the guest.
    pub fn stop() -> Command {
        Command::bare("stop")
    }

    /// The ACPI power button.
    pub fn system_powerdown() -> Command {
        Command::bare("system_powerdown")
    }

    pub fn system_reset() -> Command {
        Command::bare("system_reset")
    }

    pub fn quit() -> Command {
        Command::bare("quit")
    }

    /// Whether KVM is present and in use.
    pub fn query_kvm() -> Command {
        Command::bare("query-kvm")
    }

    /// The block devices and their media.
    pub fn query_block() -> Command {
        Command::bare("query-block")
    }

    pub fn query_blockstats() -> Command {
        Command::bare("query-blockstats")
    }

    /// Answered only by VMs with a balloon device.
    pub fn query_balloon() -> Command {
        Command::bare("query-balloon")
    }

    pub fn query_jobs() -> Command {
        Command::bare("query-jobs")
    }

    pub fn job_dismiss(id: &str) -> Command {
        Command::with("job-dismiss", json!({"id": id}))
    }

    /// Sets a console password (`protocol`: `spice` or `vnc`); open connections are kept.
    pub fn set_password(protocol: &str, password: &str) -> Command {
        Command::with(
            "set_password",
            json!({"protocol": protocol, "password": password, "connected": "keep"}),
        )
    }

    /// `time`: `now`, `never`, `+<seconds>` or a Unix time.
    pub fn expire_password(protocol: &str, time: &str) -> Command {
        Command::with("expire_password", json!({"protocol": protocol, "time": time}))
    }

    /// The guest display as a PNG file (QEMU 7.1 and later).
    pub fn screendump(file: &Path) -> Command {
        Command::with("screendump", json!({"filename": file, "format": "png"}))
    }

    /// `node`: a blockdev description (driver, node-name, file…).
    pub fn blockdev_add(node: Value) -> Command {
        Command::with("blockdev-add", node)
    }

    pub fn blockdev_del(node_name: &str) -> Command {
        Command::with("blockdev-del", json!({"node-name": node_name}))
    }

    /// `device`: a device description (driver, id, drive…).
    pub fn device_add(device: Value) -> Command {
        Command::with("device_add", device)
    }

    pub fn device_del(id: &str) -> Command {
        Command::with("device_del", json!({"id": id}))
    }

    /// A full copy of block node `device` into node `target`, as job `job_id` (kept after it ends,
    /// so that its error can be read).
    pub fn blockdev_backup(job_id: &str, device: &str, target: &str) -> Command {
        Command::with(
            "blockdev-backup",
            json!({"job-id": job_id, "device": device, "target": target, "sync": "full", "auto-dismiss": false}),
        )
    }

    /// As `blockdev_backup`, with a new persistent dirty bitmap `new_bitmap` on `device` started at
    /// the very point the copy is taken (one transaction). With `since`, an incremental copy: only
    /// what that bitmap marks is copied (and the bitmap is left as it was, so a failed backup can be
    /// retried from the same point).
    pub fn blockdev_backup_marked(
        job_id: &str,
        device: &str,
        target: &str,
        new_bitmap: &str,
        granularity: u64,
        since: Option<&str>,
    ) -> Command {
        let mut backup = json!({"job-id": job_id, "device": device, "target": target, "sync": "full", "auto-dismiss": false});
        if let Some(old) = since {
            backup["sync"] = json!("bitmap");
            backup["bitmap"] = json!(old);
            backup["bitmap-mode"] = json!("never");
        }
        let add = json!({"node": device, "name": new_bitmap, "persistent": true, "granularity": granularity});
        Command::with(
            "transaction",
            json!({"actions": [
                {"type": "block-dirty-bitmap-add", "data": add},
                {"type": "blockdev-backup", "data": backup},
            ]}),
        )
    }

    /// Every block node, with its dirty bitmaps.
    pub fn query_named_block_nodes() -> Command {
        Command::with("query-named-block-nodes", json!({"flat": true}))
    }

    pub fn block_dirty_bitmap_remove(node: &str, name: &str) -> Command {
        Command::with("block-dirty-bitmap-remove", json!({"node": node, "name": name}))
    }

    /// An internal snapshot `tag` of `devices` with the RAM written to node `vmstate`, as job `job_id`.
    pub fn snapshot_save(job_id: &str, tag: &str, vmstate: &str, devices: &[&str]) -> Command {
        Command::with(
            "snapshot-save",
            json!({"job-id": job_id, "tag": tag, "vmstate": vmstate, "devices": devices}),
        )
    }

    pub fn snapshot_delete(job_id: &str, tag: &str, devices: &[&str]) -> Command {
        Command::with("snapshot-delete", json!({"job-id": job_id, "tag": tag, "devices": devices}))
    }

    /// The line to send, newline included.
    pub fn encode(&self, id: u64) -> Vec<u8> {
        let mut message = json!({"execute": self.name, "id": id});
        if let Some(arguments) = &self.arguments {
            message["arguments"] = arguments.clone();
        }
        let mut line = message.to_string().into_bytes();
        line.push(b'\n');
        line
    }
}

/// One line from QEMU.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// The first line of a connection; `version` is QEMU's `{"qemu": {...}, "package": ...}`.
    Greeting { version: Value },
    /// Something that happened (`STOP`, `RESET`, `JOB_STATUS_CHANGE`…), at any time, also before
    /// the greeting when QEMU flushes events queued for an earlier client.
    Event { name: String, data: Value },
    /// A command succeeded.
    Return { id: Option<u64>, value: Value },
    /// A command failed.
    Error { id: Option<u64>, class: String, desc: String },
}

#[derive(Debug, Clone, PartialEq)]
pub enum ParseError {
    TooLarge(usize),
    NotJson(String),
    /// JSON, but none of the messages QMP sends.
    Unknown(String),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::TooLarge(n) => write!(f, "a QMP message of {n} bytes (more than {MAX_MESSAGE})"),
            ParseError::NotJson(e) => write!(f, "not JSON from QMP: {e}"),
            ParseError::Unknown(line) => write!(f, "not a QMP message: {line}"),
        }
    }
}

impl std::error::Error for ParseError {}

impl Message {
    pub fn parse(line: &[u8]) -> Result<Message, ParseError> {
        if line.len() > MAX_MESSAGE {
            return Err(ParseError::TooLarge(line.len()));
        }
        let value: Value = serde_json::from_slice(line).map_err(|e| ParseError::NotJson(e.to_string()))?;
        let id = value.get("id").and_then(Value::as_u64);
        if let Some(v) = value.get("QMP") {
            return Ok(Message::Greeting { version: v.get("version").cloned().unwrap_or(Value::Null) });
        }
        if let Some(name) = value.get("event").and_then(Value::as_str) {
            let data = value.get("data").cloned().unwrap_or(Value::Null);
            return Ok(Message::Event { name: name.to_string(), data });
        }
        if let Some(v) = value.get("return") {
            return Ok(Message::Return { id, value: v.clone() });
        }
        if let Some(e) = value.get("error") {
            let text = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            return Ok(Message::Error { id, class: text("class"), desc: text("desc") });
        }
        let mut shown = value.to_string();
        shown.truncate(200);
        Err(ParseError::Unknown(shown))
    }
}

/// `query-status`'s answer: QEMU's run state (`running`, `paused`, `shutdown`, `internal-error`…).
pub fn run_state(reply: &Value) -> Option<&str> {
    reply.get("status").and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_encoded_with_their_id_and_arguments() {
        let line = Command::set_password("spice", "s3cret").encode(7);
        assert_eq!(line.last(), Some(&b'\n'));
        let v: Value = serde_json::from_slice(&line).expect("JSON");
        assert_eq!(
            v,
            json!({"execute": "set_password", "id": 7,
                   "arguments": {"protocol": "spice", "password": "s3cret", "connected": "keep"}})
        );
        let bare: Value = serde_json::from_slice(&Command::cont().encode(1)).expect("JSON");
        assert_eq!(bare, json!({"execute": "cont", "id": 1}), "no arguments key without arguments");
        let job = Command::blockdev_backup("j1", "disk0", "backup-1");
        assert_eq!(job.arguments().and_then(|a| a.get("auto-dismiss")), Some(&json!(false)));
    }

    #[test]
    fn every_kind_of_line_is_told_apart() {
        let greeting = br#"{"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}, "package": ""}, "capabilities": ["oob"]}}"#;
        assert!(
            matches!(Message::parse(greeting), Ok(Message::Greeting { version }) if version["qemu"]["major"] == 7)
        );
        let event = br#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "JOB_STATUS_CHANGE", "data": {"status": "concluded", "id": "j"}}"#;
        assert_eq!(
            Message::parse(event),
            Ok(Message::Event {
                name: "JOB_STATUS_CHANGE".into(),
                data: json!({"status": "concluded", "id": "j"})
            })
        );
        assert_eq!(
            Message::parse(br#"{"return": {"status": "running"}, "id": 3}"#),
            Ok(Message::Return { id: Some(3), value: json!({"status": "running"}) })
        );
        assert_eq!(
            Message::parse(br#"{"error": {"class": "GenericError", "desc": "no such node"}, "id": 4}"#),
            Ok(Message::Error { id: Some(4), class: "GenericError".into(), desc: "no such node".into() })
        );
        assert!(matches!(Message::parse(b"{\"hello\": 1}"), Err(ParseError::Unknown(_))));
        assert!(matches!(Message::parse(b"not json"), Err(ParseError::NotJson(_))));
    }

    #[test]
    fn a_line_too_large_is_refused_before_it_is_parsed() {
        let huge = vec![b' '; MAX_MESSAGE + 1];
        assert_eq!(Message::parse(&huge), Err(ParseError::TooLarge(MAX_MESSAGE + 1)));
    }

    #[test]
    fn the_run_state_is_read_from_query_status() {
        assert_eq!(run_state(&json!({"status": "paused", "running": false})), Some("paused"));
        assert_eq!(run_state(&json!({})), None);
    }
}
