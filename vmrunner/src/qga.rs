//! The QEMU guest agent's protocol without the I/O: every command Fast VM sends to a guest, typed,
//! and how a reply reads. The JSON is QMP's, but there is no greeting and no id: a connection
//! starts with a delimited sync instead (`guest-sync-delimited`), whose reply follows a 0xFF byte.

use serde_json::{Value, json};

#[derive(Debug, Clone, PartialEq)]
pub struct GuestCommand {
    name: &'static str,
    arguments: Option<Value>,
}

impl GuestCommand {
    fn bare(name: &'static str) -> GuestCommand {
        GuestCommand { name, arguments: None }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Answered with `id`, after a 0xFF byte: what comes before it is a previous client's.
    pub fn sync_delimited(id: u32) -> GuestCommand {
        GuestCommand { name: "guest-sync-delimited", arguments: Some(json!({"id": id})) }
    }

    pub fn host_name() -> GuestCommand {
        GuestCommand::bare("guest-get-host-name")
    }

    pub fn os_info() -> GuestCommand {
        GuestCommand::bare("guest-get-osinfo")
    }

    pub fn network_interfaces() -> GuestCommand {
        GuestCommand::bare("guest-network-get-interfaces")
    }

    pub fn fs_info() -> GuestCommand {
        GuestCommand::bare("guest-get-fsinfo")
    }

    /// Starts `path` with `args` in the guest (no shell unless `path` is one).
    pub fn exec(path: &str, args: &[&str]) -> GuestCommand {
        GuestCommand { name: "guest-exec", arguments: Some(json!({"path": path, "arg": args})) }
    }

    /// The line to send, newline included.
    pub fn encode(&self) -> Vec<u8> {
        let mut message = json!({"execute": self.name});
        if let Some(arguments) = &self.arguments {
            message["arguments"] = arguments.clone();
        }
        let mut line = message.to_string().into_bytes();
        line.push(b'\n');
        line
    }
}

/// A reply line: the `return` value, or the agent's error description.
pub fn reply(line: &str) -> Result<Result<Value, String>, serde_json::Error> {
    // A delimited sync's reply may still carry its 0xFF in front.
    let reply: Value = serde_json::from_str(line.trim_start_matches('\u{ff}'))?;
    Ok(match reply.get("error") {
        Some(e) => Err(e.get("desc").and_then(Value::as_str).unwrap_or("error").to_string()),
        None => Ok(reply.get("return").cloned().unwrap_or(Value::Null)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_replies() {
        let sync: Value = serde_json::from_slice(&GuestCommand::sync_delimited(7).encode()).expect("JSON");
        assert_eq!(sync, json!({"execute": "guest-sync-delimited", "arguments": {"id": 7}}));
        let exec: Value =
            serde_json::from_slice(&GuestCommand::exec("/bin/sh", &["-c", "true"]).encode()).expect("JSON");
        assert_eq!(exec["arguments"], json!({"path": "/bin/sh", "arg": ["-c", "true"]}));
        assert_eq!(reply("\u{ff}{\"return\": 7}").ok(), Some(Ok(json!(7))));
        assert_eq!(
            reply(r#"{"error": {"class": "CommandNotFound", "desc": "not here"}}"#).ok(),
            Some(Err("not here".to_string()))
        );
        assert!(reply("garbage").is_err());
    }
}
