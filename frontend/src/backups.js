// Backups: every backup you may see; verify one, restore it as a new VM (or onto its original),
// delete it.

import { del, get, post, upload } from './api.js';

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

    /** How it was taken: what it read and what it added to the store (older archives say nothing). */
    backupKind(b) {
      if (b.bytes_read === null || b.bytes_read === undefined) return 'archive';
      const mb = (n) => (n / 1048576).toFixed(1) + ' MB';
      const how = b.incremental ? 'incremental' : 'full';
      return how + ', read ' + mb(b.bytes_read) + ', new ' + mb(b.bytes_written);
    },

    /** Re-reads every chunk of the backup; the list then shows what was found. */
    async verifyBackup(b) {
      await this.attempt('backup', 'Verify', async () => {
        const v = await post('/api/backups/' + b.id + '/verify');
        if (!v.ok) throw new Error(v.message);
        return v;
      }, b.vm_name + ': backup verified');
      await this.openBackups();
    },

    backupWhen(b) {
      return new Date(b.created).toLocaleString();
    },

    /** A plain link with a short-lived ticket: the browser streams the archive to disk itself. */
    async downloadBackup(b) {
      try {
        const t = await post('/api/backups/' + b.id + '/download-ticket');
        const a = document.createElement('a');
        a.href = t.url;
        a.download = b.backup_name;
        document.body.appendChild(a);
        a.click();
        a.remove();
      } catch (e) {
        this.toast('error', 'Download: ' + e.message);
      }
    },

    archiveUpload: null,
    archiveName: '',

    archivePercent() {
      return this.archiveUpload ? Math.round(this.archiveUpload.fraction * 100) : 0;
    },

    archiveWidth() {
      return 'width: ' + this.archivePercent() + '%';
    },

    /** Restores an uploaded archive as a new VM, with the upload's progress. */
    async pickArchive(event) {
      const file = event.target.files[0];
      event.target.value = '';
      if (!file) return;
      const form = new FormData();
      if (this.archiveName.trim()) form.append('new_name', this.archiveName.trim());
      form.append('file', file, file.name);
      const sending = upload('/api/vms/restore', form, (fraction) => {
        if (this.archiveUpload) this.archiveUpload.fraction = fraction;
      });
      this.archiveUpload = { name: file.name, fraction: 0, sending };
      try {
        const answer = await sending.done;
        this.toast('ok', answer.message);
      } catch (e) {
        if (!e.aborted) this.toast('error', file.name + ': ' + e.message);
      }
      this.archiveUpload = null;
      this.archiveName = '';
      await Promise.all([this.openBackups(), this.refresh()]);
    },

    cancelArchive() {
      if (this.archiveUpload) this.archiveUpload.sending.abort();
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
