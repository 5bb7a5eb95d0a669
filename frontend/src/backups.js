// Backups: every backup you may see; restore one as a new VM (or onto its original), delete it.

import { del, get, post, token } from './api.js';

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

    /** Restores an uploaded archive as a new VM (XMLHttpRequest: it reports upload progress). */
    pickArchive(event) {
      const file = event.target.files[0];
      event.target.value = '';
      if (!file) return;
      const form = new FormData();
      if (this.archiveName.trim()) form.append('new_name', this.archiveName.trim());
      form.append('file', file, file.name);
      const xhr = new XMLHttpRequest();
      this.archiveUpload = { name: file.name, fraction: 0, xhr };
      xhr.upload.onprogress = (e) => {
        if (e.lengthComputable && this.archiveUpload) this.archiveUpload.fraction = e.loaded / e.total;
      };
      xhr.onload = () => {
        let body = {};
        try {
          body = JSON.parse(xhr.responseText);
        } catch {
          body = { detail: xhr.statusText };
        }
        if (xhr.status >= 200 && xhr.status < 300) this.toast('ok', body.message);
        else this.toast('error', file.name + ': ' + (body.detail || 'HTTP ' + xhr.status));
        this.archiveUpload = null;
        this.archiveName = '';
        this.openBackups();
        this.refresh();
      };
      xhr.onerror = () => {
        this.toast('error', file.name + ': the upload failed');
        this.archiveUpload = null;
      };
      xhr.onabort = () => {
        this.archiveUpload = null;
      };
      xhr.open('POST', '/api/vms/restore');
      xhr.setRequestHeader('Authorization', 'Bearer ' + token());
      xhr.send(form);
    },

    cancelArchive() {
      if (this.archiveUpload) this.archiveUpload.xhr.abort();
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
