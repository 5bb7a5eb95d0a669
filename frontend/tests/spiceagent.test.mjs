// The SPICE agent clipboard codec, byte for byte against the spice-vdagent protocol.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { agentMessage, clipboardGrab, clipboardText, readAgentMessages } from '../src/spiceagent.js';

const GRAB = 7;
const CLIPBOARD = 4;

function serialise(message) {
  const a = new ArrayBuffer(message.buffer_size() + 3);
  message.to_buffer(a, 3);
  return [...new Uint8Array(a, 3)];
}

/** An agent message as the guest sends it: header, then body. */
function fromGuest(type, body) {
  const bytes = new Uint8Array(20 + body.length);
  const v = new DataView(bytes.buffer);
  v.setUint32(0, 1, true);
  v.setUint32(4, type, true);
  v.setUint32(16, body.length, true);
  bytes.set(body, 20);
  return bytes;
}

test('a grab offers UTF-8 text, and text is sent after its type', () => {
  assert.deepEqual(serialise(clipboardGrab()), [1, 0, 0, 0]);
  assert.deepEqual(serialise(agentMessage.clipboard('hé')), [1, 0, 0, 0, 0x68, 0xc3, 0xa9]);
});

test('the guest\'s clipboard is read whole even when split over several payloads', () => {
  const seen = [];
  const read = readAgentMessages(new Set([GRAB, CLIPBOARD]), (type, body) => seen.push([type, clipboardText(body)]));
  const text = 'x'.repeat(5000) + ' end';
  const message = fromGuest(CLIPBOARD, new Uint8Array([1, 0, 0, 0, ...new TextEncoder().encode(text)]));
  assert.equal(read(message.slice(0, 2048).buffer), true);
  assert.deepEqual(seen, [], 'nothing before the last part');
  assert.equal(read(message.slice(2048, 4096).buffer), true);
  assert.equal(read(message.slice(4096).buffer), true);
  assert.deepEqual(seen, [[CLIPBOARD, text]]);
});

test('messages of other types are left to spice-html5', () => {
  const read = readAgentMessages(new Set([CLIPBOARD]), () => assert.fail('not ours'));
  assert.equal(read(fromGuest(1, new Uint8Array(8)).buffer), false);
  assert.equal(read(new Uint8Array(3).buffer), false, 'too short to be a message');
  assert.equal(clipboardText(new Uint8Array([2, 0, 0, 0, 65])), null, 'not text');
});
