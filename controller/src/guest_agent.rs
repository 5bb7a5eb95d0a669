//! The QEMU guest agent: what the guest itself says (hostname, OS, addresses, filesystems), through
//! the VM's `qga.sock`. The agent serves one client at a time, so callers queue per VM; every
//! connection starts with `guest-sync-delimited`, which skips whatever a previous client left unread.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use utoipa::ToSchema;
pub use vmrunner::qga::{self, GuestCommand};

/// Largest reply read from an agent (a guest with many interfaces or filesystems stays far below).
const MAX_REPLY: u64 = 4 << 20;

/// How long the agent gets to answer before it counts as absent.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(2);

/// One queue per VM: the agent's channel takes a single client.
#[derive(Default)]
pub struct AgentLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl AgentLocks {
    fn of(&self, vm_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(vm_id.to_string()).or_default().clone()
    }
}

pub struct Agent {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl Agent {
    async fn connect(socket: &Path) -> anyhow::Result<Agent> {
        let stream = UnixStream::connect(socket).await.context("the VM has no guest agent channel")?;
        let (r, w) = stream.into_split();
        let mut agent = Agent { reader: BufReader::new(r), writer: w };
        let id: u32 = rand::random::<u32>() & 0x7fff_ffff;
        // A leading 0xFF makes the agent drop any half-read request of an earlier client.
        agent.writer.write_all(&[0xff]).await?;
        agent.writer.write_all(&GuestCommand::sync_delimited(id).encode()).await?;
        loop {
            // The reply to a delimited sync comes after a 0xFF byte; skip everything before it.
            let mut byte = [0u8; 1];
            loop {
                agent.reader.read_exact(&mut byte).await?;
                if byte[0] == 0xff {
                    break;
                }
            }
            if agent.read_reply().await?.ok().and_then(|v| v.as_u64()) == Some(id.into()) {
                return Ok(agent);
            }
        }
    }

    async fn read_reply(&mut self) -> anyhow::Result<Result<Value, String>> {
        let mut line = String::new();
        // The guest writes this: a line without end must not grow without bound.
        if (&mut self.reader).take(MAX_REPLY).read_line(&mut line).await? == 0 {
            bail!("the guest agent closed the channel");
        }
        Ok(qga::reply(&line)?)
    }

    pub async fn execute(&mut self, command: &GuestCommand) -> anyhow::Result<Value> {
        self.writer.write_all(&command.encode()).await?;
        self.read_reply().await?.map_err(|desc| anyhow::anyhow!("{}: {desc}", command.name()))
    }
}

/// Runs `work` with the VM's agent, all of it within `ANSWER_WITHIN` (plus the wait for the queue).
pub async fn with_agent<T, F>(locks: &AgentLocks, vm_id: &str, socket: &Path, work: F) -> anyhow::Result<T>
where
    F: AsyncFnOnce(&mut Agent) -> anyhow::Result<T>,
{
    let lock = locks.of(vm_id);
    let _turn = tokio::time::timeout(ANSWER_WITHIN, lock.lock())
        .await
        .context("the guest agent is busy with another request")?;
    tokio::time::timeout(ANSWER_WITHIN, async {
        let mut agent = Agent::connect(socket).await?;
        work(&mut agent).await
    })
    .await
    .context("the guest agent did not answer (is qemu-guest-agent running in the guest?)")?
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct GuestAddress {
    pub address: String,
    /// `ipv4` or `ipv6`.
    pub family: String,
    pub prefix: u32,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct GuestInterface {
    pub name: String,
    pub mac_address: Option<String>,
    pub addresses: Vec<GuestAddress>,
    /// Byte counters as the guest counts them, when the agent reports them.
    pub rx_bytes: Option<u64>,
    pub tx_bytes: Option<u64>,
}

/// The guest's network interfaces (loopback left out).
pub fn interfaces(reply: &Value) -> Vec<GuestInterface> {
    let Some(list) = reply.as_array() else { return Vec::new() };
    list.iter()
        .filter(|i| i["name"].as_str().is_some_and(|n| n != "lo"))
        .map(|i| GuestInterface {
            name: i["name"].as_str().unwrap_or_default().to_string(),
            mac_address: i["hardware-address"].as_str().map(String::from),
            addresses: i["ip-addresses"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|ip| {
                            Some(GuestAddress {
                                address: ip["ip-address"].as_str()?.to_string(),
                                family: ip["ip-address-type"].as_str().unwrap_or("ipv4").to_string(),
                                prefix: ip["prefix"].as_u64().unwrap_or(0) as u32,
                            })
                        })
                        .collect()
                })
                .unwrap_or_default(),
            rx_bytes: i["statistics"]["rx-bytes"].as_u64(),
            tx_bytes: i["statistics"]["tx-bytes"].as_u64(),
        })
        .collect()
}

/// Addresses worth showing in a VM list: IPv4 first, link-local IPv6 left out.
pub fn display_addresses(interfaces: &[GuestInterface]) -> Vec<String> {
    let mut v4: Vec<String> = Vec::new();
    let mut v6: Vec<String> = Vec::new();
    for a in interfaces.iter().flat_map(|i| &i.addresses) {
        if a.family == "ipv4" {
            v4.push(a.address.clone());
        } else if !a.address.to_ascii_lowercase().starts_with("fe80") {
            v6.push(a.address.clone());
        }
    }
    v4.extend(v6);
    v4
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn interfaces_and_addresses_from_an_agent_reply() {
        let reply = json!([
            {"name": "lo", "ip-addresses": [{"ip-address": "127.0.0.1", "ip-address-type": "ipv4", "prefix": 8}]},
            {"name": "eth0", "hardware-address": "52:54:00:00:00:40",
             "ip-addresses": [{"ip-address": "fe80::5054:ff:fe00:40", "ip-address-type": "ipv6", "prefix": 64},
                              {"ip-address": "10.0.2.15", "ip-address-type": "ipv4", "prefix": 24}],
             "statistics": {"rx-bytes": 100, "tx-bytes": 50}}
        ]);
        let list = interfaces(&reply);
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].name, "eth0");
        assert_eq!(list[0].rx_bytes, Some(100));
        assert_eq!(display_addresses(&list), vec!["10.0.2.15".to_string()]);
    }
}
