// The graphical console through noVNC (`/ws/vnc/<vm>`), loaded only when it opens; scaled to fit.

import RFB from '@novnc/novnc';

const ENTER = 0xff0d;
const SHIFT = 0xffe1;
/** Characters typed with Shift held on a US layout (QEMU maps keysyms to keys through it). */
const SHIFTED = new Set('~!@#$%^&*()_+{}|:"<>?'.split(''));
/** Time between two keystrokes: a guest under emulation reads its keyboard slowly, and keys sent
 * faster than that are lost in its small input queue. */
const KEY_GAP_MS = 40;

const pause = (ms) => new Promise((done) => setTimeout(done, ms));

/** Opens the VNC console in `element`; `onEnd(reason)` when it closes. */
export function openVnc(element, url, onEnd) {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const rfb = new RFB(element, scheme + '//' + location.host + url);
  rfb.scaleViewport = true;
  rfb.resizeSession = false;
  rfb.addEventListener('disconnect', (e) => onEnd(e.detail.clean ? 'the console closed' : 'the connection was lost'));
  return {
    ctrlAltDel() {
      rfb.sendCtrlAltDel();
    },
    /** Types `text` as keystrokes (any guest, agent or not); a newline is Enter. */
    async type(text) {
      for (const ch of text) {
        const shifted = SHIFTED.has(ch) || (ch >= 'A' && ch <= 'Z');
        if (shifted) rfb.sendKey(SHIFT, 'ShiftLeft', true);
        if (ch === '\n') rfb.sendKey(ENTER, 'Enter');
        else rfb.sendKey(ch.codePointAt(0));
        if (shifted) rfb.sendKey(SHIFT, 'ShiftLeft', false);
        await pause(KEY_GAP_MS);
      }
    },
    close() {
      rfb.disconnect();
    },
  };
}
