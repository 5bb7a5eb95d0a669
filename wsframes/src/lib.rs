//! The server side of RFC 6455, cut to what a console relay needs: binary frames out, frames in
//! streamed through as they arrive, ping, close (the controller does the HTTP upgrade).
//!
//! Why not axum's WebSocket here: it copies every outgoing payload into tungstenite's write buffer
//! and holds whole incoming messages in memory. A console moves bulk display data, so here a
//! frame's header is written into headroom in front of the bytes just read from QEMU and both
//! leave in one write, and a client's payload is unmasked in place and forwarded piece by piece,
//! whatever the size of its message. Header parsing and the accept key come from tungstenite.

use std::io::Cursor;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

/// Bytes in front of a read buffer, enough for the longest server frame header (no mask).
pub const HEADROOM: usize = 10;

/// An open WebSocket: the client's TCP connection, and anything it sent that hyper had already read.
pub struct Socket {
    pub stream: TcpStream,
    pub early: BytesMut,
}

/// Writes a final, unmasked frame header into the end of `headroom` for a payload of `len` bytes
/// and returns where the header starts, so header and payload go out in one write.
pub fn put_header(headroom: &mut [u8; HEADROOM], opcode: u8, len: usize) -> usize {
    let start = match len {
        0..=125 => {
            headroom[9] = len as u8;
            8
        }
        126..=65535 => {
            headroom[7] = 126;
            headroom[8..10].copy_from_slice(&(len as u16).to_be_bytes());
            6
        }
        _ => {
            headroom[1] = 127;
            headroom[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            0
        }
    };
    headroom[start] = 0x80 | opcode;
    start
}

pub const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
pub const OP_PONG: u8 = 0xA;

/// Writes one whole control or data frame.
pub async fn send_frame(
    writer: &mut (impl AsyncWrite + Unpin),
    opcode: u8,
    payload: &[u8],
) -> std::io::Result<()> {
    let mut frame = vec![0u8; HEADROOM + payload.len()];
    frame[HEADROOM..].copy_from_slice(payload);
    let headroom: &mut [u8; HEADROOM] = (&mut frame[..HEADROOM]).try_into().map_err(std::io::Error::other)?;
    let start = put_header(headroom, opcode, payload.len());
    writer.write_all(&frame[start..]).await
}

/// Sends a close frame with a code and a reason (cut to the 123 bytes a control frame allows).
pub async fn send_close(
    writer: &mut (impl AsyncWrite + Unpin),
    code: u16,
    reason: &str,
) -> std::io::Result<()> {
    let mut payload = code.to_be_bytes().to_vec();
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    send_frame(writer, OP_CLOSE, &payload).await?;
    writer.flush().await
}

/// What the client's side of the socket asks of the sending side.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// Answer a ping with this payload.
    Pong(Vec<u8>),
    /// The client closed, or broke the protocol: answer with this close code and stop.
    Close(u16),
}

/// Undoes a client's masking in place; `offset` is how far into the payload `data` starts.
fn unmask(data: &mut [u8], mask: [u8; 4], offset: u64) {
    let mut key = mask;
    key.rotate_left((offset % 4) as usize);
    let word = u32::from_ne_bytes(key);
    let mut words = data.chunks_exact_mut(4);
    for w in &mut words {
        let v = u32::from_ne_bytes([w[0], w[1], w[2], w[3]]) ^ word;
        w.copy_from_slice(&v.to_ne_bytes());
    }
    for (b, k) in words.into_remainder().iter_mut().zip(key) {
        *b ^= k;
    }
}

/// Reads the client's frames until it closes, breaks the protocol or goes away, handing the
/// payload of binary messages to `target` as it arrives (text has no meaning on a console).
/// Pings and the close are passed to `control`; nothing is buffered beyond one read. Returns true
/// when it ended by handing `control` a close to answer, false when the client just went away.
pub async fn read_frames(
    reader: &mut (impl AsyncRead + Unpin),
    mut carry: BytesMut,
    target: &mut (impl AsyncWrite + Unpin),
    control: &tokio::sync::mpsc::Sender<Incoming>,
) -> std::io::Result<bool> {
    // Whether the message being continued is binary (continuation frames carry no type).
    let mut binary_message = false;
    loop {
        let mut cursor = Cursor::new(&carry[..]);
        let parsed = FrameHeader::parse(&mut cursor);
        let (header, len) = match parsed {
            Ok(Some(found)) => found,
            Ok(None) => {
                if !read_more(reader, &mut carry).await? {
                    return Ok(false);
                }
                continue;
            }
            Err(_) => return protocol_error(control).await,
        };
        let at = cursor.position() as usize;
        carry.advance(at);
        let Some(mask) = header.mask else { return protocol_error(control).await };
        if header.rsv1 || header.rsv2 || header.rsv3 || len > i64::MAX as u64 {
            return protocol_error(control).await;
        }
        match header.opcode {
            OpCode::Control(kind) => {
                if len > 125 || !header.is_final {
                    return protocol_error(control).await;
                }
                while (carry.len() as u64) < len {
                    if !read_more(reader, &mut carry).await? {
                        return Ok(false);
                    }
                }
                let mut payload = carry.split_to(len as usize);
                unmask(&mut payload, mask, 0);
                let ask = match kind {
                    Control::Ping => Incoming::Pong(payload.to_vec()),
                    Control::Close => {
                        let code = match payload.len() {
                            0 => 1000,
                            1 => 1002,
                            _ => u16::from_be_bytes([payload[0], payload[1]]),
                        };
                        // Echoed back, so only a code that may appear on the wire (RFC 6455 7.4).
                        let code = match code {
                            1000..=1003 | 1007..=1014 | 3000..=4999 => code,
                            _ => 1002,
                        };
                        return Ok(control.send(Incoming::Close(code)).await.is_ok());
                    }
                    _ => continue,
                };
                if control.send(ask).await.is_err() {
                    return Ok(false);
                }
            }
            OpCode::Data(kind) => {
                match kind {
                    Data::Binary => binary_message = true,
                    Data::Text => binary_message = false,
                    Data::Continue => {}
                    Data::Reserved(_) => return protocol_error(control).await,
                }
                let mut left = len;
                let mut offset = 0u64;
                while left > 0 {
                    if carry.is_empty() && !read_more(reader, &mut carry).await? {
                        return Ok(false);
                    }
                    let take = (carry.len() as u64).min(left) as usize;
                    let mut piece = carry.split_to(take);
                    if binary_message {
                        unmask(&mut piece, mask, offset);
                        target.write_all(&piece).await?;
                    }
                    left -= take as u64;
                    offset += take as u64;
                }
            }
        }
    }
}

/// Appends what the client has sent next to `carry`; false once it has gone away.
async fn read_more(reader: &mut (impl AsyncRead + Unpin), carry: &mut BytesMut) -> std::io::Result<bool> {
    const READ: usize = 64 * 1024;
    carry.reserve(READ);
    Ok(reader.read_buf(carry).await? > 0)
}

async fn protocol_error(control: &tokio::sync::mpsc::Sender<Incoming>) -> std::io::Result<bool> {
    Ok(control.send(Incoming::Close(1002)).await.is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_take_the_shortest_length_form() {
        let mut room = [0u8; HEADROOM];
        assert_eq!(put_header(&mut room, OP_BINARY, 5), 8);
        assert_eq!(room[8..], [0x82, 5]);
        assert_eq!(put_header(&mut room, OP_BINARY, 300), 6);
        assert_eq!(room[6..], [0x82, 126, 1, 44]);
        assert_eq!(put_header(&mut room, OP_BINARY, 70_000), 0);
        assert_eq!(room, [0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
    }

    fn masked(opcode: u8, fin: bool, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut frame = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n @ 0..=125 => frame.push(0x80 | n as u8),
            n => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        frame
    }

    async fn run(input: Vec<u8>) -> (Vec<u8>, Vec<Incoming>) {
        let mut reader = Cursor::new(input);
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let mut delivered = Vec::new();
        read_frames(&mut reader, BytesMut::new(), &mut delivered, &tx).await.ok();
        drop(tx);
        let mut asks = Vec::new();
        while let Some(a) = rx.recv().await {
            asks.push(a);
        }
        (delivered, asks)
    }

    #[tokio::test]
    async fn binary_messages_are_unmasked_across_fragments_and_text_is_dropped() {
        let long: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let mut input = masked(0x2, false, b"hel", [1, 2, 3, 4]);
        input.extend(masked(0x9, true, b"ping", [9, 9, 9, 9]));
        input.extend(masked(0x0, true, b"lo", [5, 6, 7, 8]));
        input.extend(masked(0x1, true, b"text", [1, 1, 1, 1]));
        input.extend(masked(0x2, true, &long, [0xde, 0xad, 0xbe, 0xef]));
        input.extend(masked(0x8, true, &1000u16.to_be_bytes(), [0, 0, 0, 1]));
        let (data, asks) = run(input).await;
        let mut want = b"hello".to_vec();
        want.extend_from_slice(&long);
        assert_eq!(data, want);
        assert_eq!(asks, [Incoming::Pong(b"ping".to_vec()), Incoming::Close(1000)]);
    }

    #[tokio::test]
    async fn protocol_errors_close_with_1002() {
        let unmasked = vec![0x82, 0x01, b'x'];
        assert_eq!(run(unmasked).await.1, [Incoming::Close(1002)]);
        let mut reserved_bit = masked(0x2, true, b"x", [1, 2, 3, 4]);
        reserved_bit[0] |= 0x40;
        assert_eq!(run(reserved_bit).await.1, [Incoming::Close(1002)]);
        let long_ping = masked(0x9, true, &[0u8; 200], [1, 2, 3, 4]);
        assert_eq!(run(long_ping).await.1, [Incoming::Close(1002)]);
        let bad_opcode = masked(0x3, true, b"x", [1, 2, 3, 4]);
        assert_eq!(run(bad_opcode).await.1, [Incoming::Close(1002)]);
        let reserved_code = masked(0x8, true, &1005u16.to_be_bytes(), [1, 2, 3, 4]);
        assert_eq!(run(reserved_code).await.1, [Incoming::Close(1002)], "1005 never goes on the wire");
    }

    #[test]
    fn unmasking_continues_the_key_where_the_last_piece_stopped() {
        let mask = [0x11, 0x22, 0x33, 0x44];
        let plain: Vec<u8> = (0..23u8).collect();
        let mut data: Vec<u8> = plain.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
        let (a, b) = data.split_at_mut(7);
        unmask(a, mask, 0);
        unmask(b, mask, 7);
        assert_eq!(data, plain);
    }
}
