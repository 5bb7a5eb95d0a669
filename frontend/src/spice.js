// The graphical console through spice-html5 (`/ws/spice/<vm>`, one WebSocket per SPICE channel),
// loaded only when a console opens. spice-html5 0.2.1 is used with our patches (frontend/patches):
// close codes, a panel-sized screen, scaled mouse positions, and agent messages for the clipboard.

import { SpiceMainConn, resize_helper, sendCtrlAltDel } from '@spice-project/spice-html5';
import { Constants } from '@spice-project/spice-html5/src/enums.js';
import * as Messages from '@spice-project/spice-html5/src/spicemsg.js';
import { KEY_GAP_MS, SHIFT, pause, typed } from './keys.js';
import { agentMessage, clipboardGrab, clipboardRequest, clipboardText, readAgentMessages } from './spiceagent.js';

/** A scancode as SPICE sends it: E0-prefixed keys carry the prefix in the low byte. */
function wire(scan, up) {
  if (scan < 0x100) return up ? scan | 0x80 : scan;
  return 0xe0 | (((scan - 0x100) | (up ? 0x80 : 0)) << 8);
}

/**
 * Opens the SPICE console in `element` (which must have an id). `hooks`: `onConnect()`,
 * `onEnd({ code, reason })` (code: the server's 44xx close code, if any), `onAgent()` when the
 * guest's spice-vdagent answers, `onClipboard(text)` when the guest's clipboard changes.
 */
export function openSpice(element, access, hooks) {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  let ended = false;
  const end = (why) => {
    if (ended) return;
    ended = true;
    hooks.onEnd(why);
  };
  let offered = '';
  const sc = new SpiceMainConn({
    uri: scheme + '//' + location.host + access.ws_url,
    password: access.password,
    screen_id: element.id,
    onerror: (e) => {
      end({ code: e.code || 0, reason: e.reason || e.message || 'the connection was lost' });
      sc.stop();
    },
    onsuccess: () => hooks.onConnect(),
    onagent: () => hooks.onAgent(),
  });
  const send = (type, body) => {
    const msg = new Messages.SpiceMiniData();
    msg.build_msg(type, body);
    sc.inputs.send_msg(msg);
  };
  const key = (scan, up) => {
    if (!sc.inputs || sc.inputs.state !== 'ready') return;
    const body = up ? new Messages.SpiceMsgcKeyUp() : new Messages.SpiceMsgcKeyDown();
    body.code = wire(scan, up);
    send(up ? Constants.SPICE_MSGC_INPUTS_KEY_UP : Constants.SPICE_MSGC_INPUTS_KEY_DOWN, body);
  };
  // The guest agent's clipboard messages (spice-html5 knows none): the guest's copies come here,
  // and what the page offers is handed over when the guest asks for it.
  const clipboardTypes = new Set([Constants.VD_AGENT_CLIPBOARD_GRAB, Constants.VD_AGENT_CLIPBOARD,
    Constants.VD_AGENT_CLIPBOARD_REQUEST, Constants.VD_AGENT_CLIPBOARD_RELEASE]);
  const reader = readAgentMessages(clipboardTypes, (type, data) => {
    if (type === Constants.VD_AGENT_CLIPBOARD_GRAB) {
      sc.send_agent_message(Constants.VD_AGENT_CLIPBOARD_REQUEST, clipboardRequest());
    } else if (type === Constants.VD_AGENT_CLIPBOARD) {
      const text = clipboardText(data);
      if (text !== null) hooks.onClipboard(text);
    } else if (type === Constants.VD_AGENT_CLIPBOARD_REQUEST) {
      sc.send_agent_message(Constants.VD_AGENT_CLIPBOARD, agentMessage.clipboard(offered));
    }
  });
  sc.onagentdata = (data) => reader(data);

  return {
    protocol: 'spice',
    ctrlAltDel() {
      sendCtrlAltDel(sc);
    },
    press(keys) {
      for (const k of keys) key(k.scan, false);
      for (const k of [...keys].reverse()) key(k.scan, true);
    },
    async type(text) {
      for (const ch of text) {
        const how = typed(ch);
        if (!how) continue;
        if (how.shift) key(SHIFT.scan, false);
        key(how.scan, false);
        key(how.scan, true);
        if (how.shift) key(SHIFT.scan, true);
        await pause(KEY_GAP_MS);
      }
    },
    /** Whether the guest's agent took the size (else the page only scales the screen). */
    resize(width, height) {
      if (!sc.agent_connected) return false;
      resize_helper(sc, width, height);
      return true;
    },
    agent() {
      return Boolean(sc.agent_connected);
    },
    /** Offers `text` as the guest's clipboard: the agent asks for it when the guest pastes. */
    sendClipboard(text) {
      if (!sc.agent_connected) return false;
      offered = text;
      sc.send_agent_message(Constants.VD_AGENT_CLIPBOARD_GRAB, clipboardGrab());
      return true;
    },
    focus() {
      const canvas = element.querySelector('canvas');
      if (canvas) canvas.focus();
    },
    close() {
      ended = true;
      sc.stop();
    },
  };
}
