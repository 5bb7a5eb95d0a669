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
      this.busy = 'backup';
      try {
        const answer = await post('/api/backups/' + b.id + '/restore', name ? { new_name: name } : {});
        this.toast('ok', answer.message);
        await this.refresh();
      } catch (e) {
        this.toast('error', 'Restore: ' + e.message);
      } finally {
        this.busy = '';
      }
    },

    async deleteBackup(b) {
      this.busy = 'backup';
      try {
        await del('/api/backups/' + b.id);
        this.toast('ok', b.backup_name + ' deleted');
        await this.openBackups();
      } catch (e) {
        this.toast('error', e.message);
      } finally {
        this.busy = '';
      }
    },
  };
}
