// Backups: every backup you may see; restore one as a new VM (or onto its original), delete it.

import { del, get, post } from './api.js';

export function backups() {
  return {
    backupList: [],
    restoreNames: {},

    async openBackups() {
      try {
        this.backupList = await get('/api/backups');
      } catch (e) {
        this.toast('error', 'Backups: ' + e.message);
      }
    },

    backupSize(b) {
      return b.size_mb.toFixed(1) + ' MB';
    },

    backupWhen(b) {
      return new Date(b.created).toLocaleString();
    },

    setRestoreName(b, name) {
      this.restoreNames = Object.assign({}, this.restoreNames, { [b.id]: name });
    },

    async restoreBackup(b) {
      const name = (this.restoreNames[b.id] || '').trim();
      const body = name ? { new_name: name } : {};
      const done = 'Restored' + (name ? ' as ' + name : ' onto ' + b.vm_name);
      await this.attempt('backup', 'Restore', () => post('/api/backups/' + b.id + '/restore', body), done);
      await this.refresh();
    },

    async deleteBackup(b) {
      await this.attempt('backup', b.backup_name, () => del('/api/backups/' + b.id), b.backup_name + ' deleted');
      await this.openBackups();
    },
  };
}
