// Live state from `/ws/metrics`: a snapshot, then `metrics`, `vm_state` and `job` messages. The socket
// reconnects with back-off; while it is down the caller refreshes by polling.

const MAX_BACKOFF_MS = 30000;

export function connectLive({ ticket, onMessage, onMode }) {
  let socket = null;
  let backoff = 1000;
  let stopped = false;
  let retry = null;

  async function open() {
    if (stopped) return;
    let url;
    try {
      const t = await ticket();
      const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
      url = scheme + '//' + location.host + '/ws/metrics?ticket=' + encodeURIComponent(t);
    } catch {
      schedule();
      return;
    }
    socket = new WebSocket(url);
    socket.onopen = () => {
      backoff = 1000;
      onMode('live');
    };
    socket.onmessage = (event) => {
      try {
        onMessage(JSON.parse(event.data));
      } catch {
        // A message we cannot read is skipped; the next snapshot corrects any drift.
      }
    };
    socket.onclose = () => {
      socket = null;
      onMode('polling');
      schedule();
    };
  }

  function schedule() {
    if (stopped) return;
    retry = setTimeout(open, backoff);
    backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
  }

  open();
  return {
    close() {
      stopped = true;
      clearTimeout(retry);
      if (socket) socket.close();
    },
  };
}
