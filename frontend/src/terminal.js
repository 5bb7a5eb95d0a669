// The serial terminal (xterm.js), loaded only when one opens: the guest's serial console through
// `/ws/serial/<vm>`, shared with anyone else watching it.

import { FitAddon } from '@xterm/addon-fit';
import { Terminal } from '@xterm/xterm';

/** Opens a terminal in `element` on the WebSocket at `url`; `onEnd(reason)` when it closes. */
export function openTerminal(element, url, onEnd) {
  const term = new Terminal({ convertEol: false, cursorBlink: true, fontSize: 13, scrollback: 5000 });
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.open(element);
  fit.fit();
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const ws = new WebSocket(scheme + '//' + location.host + url);
  ws.binaryType = 'arraybuffer';
  const encoder = new TextEncoder();
  ws.onmessage = (e) => term.write(new Uint8Array(e.data));
  ws.onclose = (e) => {
    const why = { 4401: 'the ticket was refused', 4403: 'no access to this VM', 4404: 'no such VM', 4409: 'the VM is not running' }[e.code];
    onEnd(why || e.reason || 'the console closed');
  };
  const typed = term.onData((data) => {
    if (ws.readyState === WebSocket.OPEN) ws.send(encoder.encode(data));
  });
  const resize = new ResizeObserver(() => fit.fit());
  resize.observe(element);
  term.focus();
  return {
    close() {
      resize.disconnect();
      typed.dispose();
      ws.close();
      term.dispose();
    },
  };
}
