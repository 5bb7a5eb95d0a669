// The graphical console through noVNC (`/ws/vnc/<vm>`), loaded only when a console opens; scaled to
// fit its panel (QEMU refuses VNC resize requests).

import RFB from '@novnc/novnc';
import { KEY_GAP_MS, SHIFT, pause, typed } from './keys.js';

const ENTER = 0xff0d;

/**
 * Opens the VNC console in `element`. `hooks.onEnd({ code, reason })` when it closes (code: the
 * server's 44xx close code, if any), `hooks.onConnect()` once the server accepted it.
 */
export function openVnc(element, access, hooks) {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  // Our own socket, handed to noVNC, so that the server's close code (44xx: why it refused or
  // ended the console) is known; noVNC's `disconnect` event does not carry it.
  const ws = new WebSocket(scheme + '//' + location.host + access.ws_url);
  ws.binaryType = 'arraybuffer';
  let closed = { code: 0, reason: '' };
  ws.addEventListener('close', (e) => {
    closed = { code: e.code, reason: e.reason };
  });
  const rfb = new RFB(element, ws);
  rfb.scaleViewport = true;
  rfb.resizeSession = false;
  rfb.addEventListener('connect', () => hooks.onConnect());
  let closedHere = false;
  rfb.addEventListener('disconnect', (e) =>
    !closedHere && hooks.onEnd({ code: closed.code, reason: closed.reason || (e.detail.clean ? 'the console closed' : 'the connection was lost') }),
  );
  return {
    protocol: 'vnc',
    ctrlAltDel() {
      rfb.sendCtrlAltDel();
    },
    /** Presses `keys` in order and lets them go in reverse. */
    press(keys) {
      for (const k of keys) rfb.sendKey(k.keysym, k.code, true);
      for (const k of [...keys].reverse()) rfb.sendKey(k.keysym, k.code, false);
    },
    /** Types `text` as keystrokes (any guest, agent or not); a newline is Enter. */
    async type(text) {
      for (const ch of text) {
        const how = typed(ch);
        if (how && how.shift) rfb.sendKey(SHIFT.keysym, SHIFT.code, true);
        if (ch === '\n') rfb.sendKey(ENTER, 'Enter');
        else rfb.sendKey(ch.codePointAt(0));
        if (how && how.shift) rfb.sendKey(SHIFT.keysym, SHIFT.code, false);
        await pause(KEY_GAP_MS);
      }
    },
    /** VNC has no agent channel: the page scales the screen instead. */
    resize() {
      return false;
    },
    focus() {
      rfb.focus();
    },
    close() {
      closedHere = true;
      rfb.disconnect();
    },
  };
}
