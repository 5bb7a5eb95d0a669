// The graphical console (SPICE or VNC) of one VM at a time: in a split panel beside whatever view
// shows (resizable by its edge), in fullscreen, or popped out into a window of its own
// (`#/console/<vm>/<protocol>`). Its code (spice.js or vnc.js) is fetched when it opens.

import { get, getBlob, post } from './api.js';
import { COMBOS, combo, untypable } from './keys.js';

const DOCK_KEY = 'fastvm.console.width';
const DOCK_MIN = 360;
/** What a docked console leaves to the navigation and the view. */
const VIEW_MIN = 560;
/** Below this window width the console covers the window instead of splitting it. */
const SPLIT_MIN_WINDOW = 1024;
const RESIZE_SETTLE_MS = 400;

/** Why the server closed a console (its 44xx close codes). */
const REFUSALS = {
  4401: 'The console ticket was refused or has expired: reconnect.',
  4403: 'You have no access to this VM\'s console.',
  4404: 'This VM no longer exists.',
  4409: 'VM stopped: the console ends with it.',
};

function screen() {
  return document.getElementById('console-screen');
}

export function consoles() {
  return {
    con: null,
    conSession: null,
    conVm: null,
    conProtocol: 'spice',
    conState: '',
    conMessage: '',
    conText: '',
    conCombo: '',
    conClipboard: '',
    conAgent: false,
    conWidth: Math.max(DOCK_MIN, Number(localStorage.getItem(DOCK_KEY)) || Math.round(window.innerWidth / 2)),
    viewportWidth: window.innerWidth,
    conResizeTimer: null,
    conObserver: null,

    initConsole() {
      window.addEventListener('resize', () => {
        this.viewportWidth = window.innerWidth;
      });
      this.conObserver = new ResizeObserver(() => this.consoleResized());
    },

    comboLabels() {
      return COMBOS.map((c) => c.label);
    },

    popped() {
      return this.route === 'console';
    },

    /** In a popped-out window the URL names the console to open. */
    openPoppedConsole() {
      const [id, protocol] = [this.routeParam, this.routeExtra || 'spice'];
      const vm = this.vms.find((v) => v.id === id) || { id, name: id };
      if (!this.conVm || this.conVm.id !== id) this.openConsole(vm, protocol);
    },

    async openConsole(vm, protocol) {
      this.dropConsole();
      this.conVm = { id: vm.id, name: vm.name };
      this.conProtocol = protocol;
      this.conState = 'connecting';
      this.conMessage = '';
      this.conAgent = false;
      this.conClipboard = '';
      // A connection's late events (a disconnect after it was closed) must not touch the next one.
      const session = Symbol('console');
      this.conSession = session;
      const mine = (f) => (...args) => {
        if (this.conSession === session) f(...args);
      };
      const hooks = {
        onConnect: mine(() => {
          this.conState = 'connected';
          this.consoleResized();
        }),
        onEnd: mine((why) => this.consoleEnded(why)),
        onAgent: mine(() => {
          this.conAgent = true;
          this.consoleResized();
        }),
        onClipboard: mine((text) => {
          this.conClipboard = text;
        }),
      };
      try {
        const access = await get('/api/vms/' + vm.id + '/' + protocol);
        // Wait for the panel to show, so the screen element has its size.
        await this.$nextTick();
        const el = screen();
        el.replaceChildren();
        if (protocol === 'spice') {
          const { openSpice } = await import('./spice.js');
          this.con = openSpice(el, access, hooks);
        } else {
          const { openVnc } = await import('./vnc.js');
          this.con = openVnc(el, access, hooks);
        }
        this.conObserver.observe(el);
      } catch (e) {
        this.conState = 'ended';
        this.conMessage = 'Could not open the console: ' + e.message;
      }
    },

    consoleEnded(why) {
      const con = this.con;
      this.con = null;
      if (con) con.close();
      if (!this.conVm) return;
      this.conState = 'ended';
      this.conMessage = REFUSALS[why.code] || 'Disconnected: ' + why.reason + '.';
    },

    /** The Close button: a popped-out window closes with its console. */
    closeConsole() {
      this.dropConsole();
      if (this.popped()) window.close();
    },

    dropConsole() {
      this.conSession = null;
      const con = this.con;
      this.con = null;
      if (con) con.close();
      if (this.conObserver) this.conObserver.disconnect();
      const el = screen();
      if (el) el.replaceChildren();
      this.conVm = null;
      this.conState = '';
      this.conMessage = '';
      if (document.fullscreenElement) document.exitFullscreen();
    },

    reconnectConsole() {
      if (this.conVm) this.openConsole(this.conVm, this.conProtocol);
    },

    consoleShown() {
      return this.conState !== '';
    },

    consoleTitle() {
      if (!this.conVm) return '';
      const vm = this.vms.find((v) => v.id === this.conVm.id);
      return (vm ? vm.name : this.conVm.name) + ' · ' + (this.conProtocol === 'spice' ? 'SPICE' : 'VNC');
    },

    /** What the console panel says: why it ended, or that the VM it shows has stopped. */
    consoleNote() {
      if (this.conState === 'connecting') return 'Connecting…';
      if (this.conState !== 'ended') return '';
      const vm = this.conVm && this.vms.find((v) => v.id === this.conVm.id);
      if (vm && vm.status !== 'running') return REFUSALS[4409];
      return this.conMessage;
    },

    consoleLive() {
      return this.conState === 'connected' && this.con !== null;
    },

    wideWindow() {
      return this.viewportWidth >= SPLIT_MIN_WINDOW;
    },

    /** The split: the console beside the view on a wide window, over it on a narrow one. */
    consoleClass() {
      if (this.popped()) return 'console-panel fixed inset-0';
      return this.wideWindow() ? 'console-panel fixed inset-y-0 right-0' : 'console-panel fixed inset-0';
    },

    // Objects, not strings: a string would replace the whole style attribute, x-show's with it.
    consoleStyle() {
      return this.popped() || !this.wideWindow() ? {} : { width: this.dockPx() + 'px' };
    },

    /** The room the view leaves for a docked console. */
    splitStyle() {
      return this.consoleShown() && this.wideWindow() && !this.popped() ? { marginRight: this.dockPx() + 'px' } : {};
    },

    /** The docked width, kept within what this window leaves. */
    dockPx() {
      return Math.max(DOCK_MIN, Math.min(this.conWidth, this.viewportWidth - VIEW_MIN));
    },

    startDockResize(e) {
      e.preventDefault();
      const move = (ev) => {
        this.conWidth = Math.round(Math.max(DOCK_MIN, window.innerWidth - ev.clientX));
        this.conWidth = this.dockPx();
      };
      const up = () => {
        window.removeEventListener('pointermove', move);
        window.removeEventListener('pointerup', up);
        localStorage.setItem(DOCK_KEY, String(this.conWidth));
      };
      window.addEventListener('pointermove', move);
      window.addEventListener('pointerup', up);
    },

    /** Once the panel's size settles, a guest with an agent is asked to take it. */
    consoleResized() {
      clearTimeout(this.conResizeTimer);
      this.conResizeTimer = setTimeout(() => {
        const el = screen();
        if (this.con && el && el.clientWidth > 0) this.con.resize(el.clientWidth, el.clientHeight);
      }, RESIZE_SETTLE_MS);
    },

    /** Without a SPICE agent: the guest agent runs xrandr in the guest's X session, if it has one. */
    async fitGuestDisplay() {
      const el = screen();
      if (!this.conVm || !el) return;
      const size = { width: Math.max(640, el.clientWidth - (el.clientWidth % 8)), height: Math.max(480, el.clientHeight - (el.clientHeight % 8)) };
      await this.attempt('console', 'Fit display', () => post('/api/vms/' + this.conVm.id + '/display/resize', size), 'Asked the guest for ' + size.width + '×' + size.height);
    },

    consoleCtrlAltDel() {
      if (this.con) this.con.ctrlAltDel();
      this.focusConsole();
    },

    sendCombo() {
      const keys = combo(this.conCombo);
      this.conCombo = '';
      if (this.con && keys) this.con.press(keys);
      this.focusConsole();
    },

    async consoleType() {
      const text = this.conText;
      const missing = untypable(text);
      if (missing.length > 0) {
        this.toast('error', 'Type text: no US keyboard key for ' + missing.join(' '));
        return;
      }
      this.conText = '';
      if (this.con && text) await this.con.type(text + '\n');
    },

    /** Sends the text field's content as the guest's clipboard (SPICE with spice-vdagent). */
    consoleSendClipboard() {
      if (this.con && this.con.protocol === 'spice' && this.con.sendClipboard(this.conText)) {
        this.toast('ok', 'Clipboard offered to the guest: paste it there');
      } else {
        this.toast('error', 'Clipboard: the guest runs no SPICE agent (spice-vdagent); use Type text');
      }
    },

    async copyGuestClipboard() {
      try {
        await navigator.clipboard.writeText(this.conClipboard);
        this.toast('ok', 'Guest clipboard copied');
      } catch (e) {
        this.toast('error', 'Clipboard: ' + e.message);
      }
    },

    focusConsole() {
      if (this.con) this.con.focus();
    },

    consoleFullscreen() {
      const el = document.getElementById('console-panel');
      if (el && el.requestFullscreen) el.requestFullscreen();
    },

    /** Moves the console into a window of its own; this page lets go of it. */
    popOutConsole() {
      if (!this.conVm) return;
      const url = location.pathname + '#/console/' + this.conVm.id + '/' + this.conProtocol;
      const opened = window.open(url, 'fastvm-console-' + this.conVm.id, 'popup,width=1100,height=820');
      if (!opened) {
        this.toast('error', 'The browser blocked the pop-up window');
        return;
      }
      this.dropConsole();
    },

    /** A virt-viewer file for remote-viewer, with a fresh password that expires soon. */
    async downloadVv(vm) {
      try {
        const blob = await getBlob('/api/vms/' + vm.id + '/spice.vv');
        const a = document.createElement('a');
        a.href = URL.createObjectURL(blob);
        a.download = vm.name + '.vv';
        a.click();
        setTimeout(() => URL.revokeObjectURL(a.href), 10000);
      } catch (e) {
        this.toast('error', 'remote-viewer file: ' + e.message);
      }
    },
  };
}
