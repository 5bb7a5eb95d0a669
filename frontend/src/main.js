// Entry point: one Alpine component made of the domain modules, started under the CSP build (no eval).

import Alpine from '@alpinejs/csp';
import { whenSignedOut } from './api.js';
import { audit } from './audit.js';
import { auth } from './auth.js';
import { backups } from './backups.js';
import { cloudInit } from './cloudinit.js';
import { consoles } from './console.js';
import { isos } from './isos.js';
import { jobs } from './jobs.js';
import { monitoring } from './monitoring.js';
import { shell } from './shell.js';
import { vmPage } from './vm.js';
import { vmForm } from './vmform.js';
import { users } from './users.js';
import { vms } from './vms.js';
import { volumes } from './volumes.js';

/** Merges parts keeping their getters and methods as they are (a spread would evaluate getters). */
function compose(...parts) {
  const target = {};
  for (const part of parts) Object.defineProperties(target, Object.getOwnPropertyDescriptors(part));
  return target;
}

/** Keeps Tab inside an open modal (the last one opened is on top). */
function trapFocus(e) {
  const modals = document.querySelectorAll('[aria-modal="true"]');
  const modal = modals[modals.length - 1];
  if (!modal) return;
  const focusable = [...modal.querySelectorAll('a[href], button, input, select, textarea')].filter(
    (el) => !el.disabled && el.offsetParent !== null,
  );
  if (focusable.length === 0) return;
  const first = focusable[0];
  const last = focusable[focusable.length - 1];
  if (!modal.contains(document.activeElement)) {
    e.preventDefault();
    first.focus();
  } else if (e.shiftKey && document.activeElement === first) {
    e.preventDefault();
    last.focus();
  } else if (!e.shiftKey && document.activeElement === last) {
    e.preventDefault();
    first.focus();
  }
}

Alpine.data('app', () =>
  compose(shell(), auth(), vms(), vmForm(), vmPage(), volumes(), isos(), backups(), users(), audit(), jobs(), cloudInit(), consoles(), monitoring(), {
    async init() {
      this.initShell();
      this.initConsole();
      whenSignedOut((message) => this.signedOut(message));
      window.addEventListener('keydown', (e) => {
        if (e.key === 'Tab') trapFocus(e);
        if (e.key === 'Escape') {
          this.confirming = null;
          this.formOpen = false;
          this.deleting = null;
          this.accountOpen = false;
        }
      });
      window.addEventListener('hashchange', () => this.onRoute());
      document.addEventListener('visibilitychange', () => this.chartsVisible());
      await this.loadUser();
      this.afterLogin();
    },

    /** Loads what the view the URL names shows. */
    onRoute() {
      if (!this.ready()) return;
      if (this.route !== 'vm') this.leaveVmPage();
      if (this.chartsFor && this.chartsFor !== (this.route === 'monitoring' ? 'monitoring' : 'page:' + this.routeParam)) this.closeCharts();
      const open = {
        vm: 'openVmPage', volumes: 'openVolumes', isos: 'openIsos', backups: 'openBackups', monitoring: 'openMonitoring',
        users: 'openUsers', audit: 'openAudit', console: 'openPoppedConsole',
      }[this.route];
      if (open) this[open]();
    },

    afterLogin() {
      if (this.ready()) {
        this.startDashboard();
        this.onRoute();
      }
    },
  }),
);

window.Alpine = Alpine;
Alpine.start();
