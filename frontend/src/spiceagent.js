// The SPICE agent's clipboard messages (spice-vdagent protocol, without the selection capability):
// what spice-html5 lacks. Pure byte work, so it is tested without a guest.

/** VD_AGENT_CLIPBOARD_UTF8_TEXT: the one clipboard type offered and accepted. */
const UTF8_TEXT = 1;
/** protocol, type (u32), opaque (u64), size (u32) before an agent message's body. */
const HEADER = 20;

/** A message body spice-html5's `send_agent_message` can serialise. */
function body(bytes) {
  return {
    buffer_size: () => bytes.length,
    to_buffer(a, at) {
      new Uint8Array(a, at || 0, bytes.length).set(bytes);
    },
  };
}

function u32(value, rest = new Uint8Array(0)) {
  const bytes = new Uint8Array(4 + rest.length);
  new DataView(bytes.buffer).setUint32(0, value, true);
  bytes.set(rest, 4);
  return bytes;
}

/** "The guest may ask for text": the types the page's clipboard holds. */
export function clipboardGrab() {
  return body(u32(UTF8_TEXT));
}

/** "Send me your text". */
export function clipboardRequest() {
  return body(u32(UTF8_TEXT));
}

export const agentMessage = {
  clipboard: (text) => body(u32(UTF8_TEXT, new TextEncoder().encode(text))),
};

/** The text of a VD_AGENT_CLIPBOARD body, or null for another type. */
export function clipboardText(data) {
  const bytes = new Uint8Array(data);
  if (bytes.length < 4 || new DataView(bytes.buffer, bytes.byteOffset).getUint32(0, true) !== UTF8_TEXT) return null;
  return new TextDecoder().decode(bytes.subarray(4));
}

/**
 * Reads the agent messages of the given `types` from SPICE AGENT_DATA payloads, joining one split
 * over several of them, and hands each whole one to `handler(type, body)`. Returns the function to
 * give each payload, which answers whether the payload was taken (if not, spice-html5 reads it).
 */
export function readAgentMessages(types, handler) {
  let pending = null;
  return (data) => {
    const bytes = new Uint8Array(data);
    if (pending) {
      pending.parts.push(bytes);
      pending.got += bytes.length;
      if (pending.got >= pending.size) {
        const whole = new Uint8Array(pending.got);
        let at = 0;
        for (const p of pending.parts) {
          whole.set(p, at);
          at += p.length;
        }
        const { type, size } = pending;
        pending = null;
        handler(type, whole.subarray(0, size));
      }
      return true;
    }
    if (bytes.length < HEADER) return false;
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
    const type = view.getUint32(4, true);
    const size = view.getUint32(16, true);
    if (!types.has(type)) return false;
    const first = bytes.subarray(HEADER);
    if (first.length >= size) {
      handler(type, first.subarray(0, size));
      return true;
    }
    pending = { type, size, parts: [first], got: first.length };
    return true;
  };
}
