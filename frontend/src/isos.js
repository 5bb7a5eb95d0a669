// The ISO library: what VMs may boot from, uploads (admins) with progress and cancel, deletes.

import { del, get, token } from './api.js';

export function isos() {
  return {
    isoList: [],
    upload: null,

    async openIsos() {
      try {
        this.isoList = await get('/api/isos');
      } catch (e) {
        this.toast('error', 'ISOs: ' + e.message);
      }
    },

    sizeLabel(bytes) {
      const mib = bytes / (1024 * 1024);
      return mib >= 1024 ? (mib / 1024).toFixed(1) + ' GiB' : mib.toFixed(1) + ' MiB';
    },

    uploadPercent() {
      return this.upload ? Math.round(this.upload.fraction * 100) : 0;
    },

    uploadWidth() {
      return 'width: ' + this.uploadPercent() + '%';
    },

    pickIso(event) {
      const file = event.target.files[0];
      if (file) this.uploadIso(file);
      event.target.value = '';
    },

    dropIso(event) {
      const file = event.dataTransfer.files[0];
      if (file) this.uploadIso(file);
    },

    /** XMLHttpRequest, not fetch: only it reports upload progress. */
    uploadIso(file) {
      const form = new FormData();
      form.append('file', file, file.name);
      const xhr = new XMLHttpRequest();
      this.upload = { name: file.name, fraction: 0, xhr };
      xhr.upload.onprogress = (e) => {
        if (e.lengthComputable && this.upload) this.upload.fraction = e.loaded / e.total;
      };
      xhr.onload = () => {
        let detail = '';
        try {
          detail = JSON.parse(xhr.responseText).detail || '';
        } catch {
          detail = xhr.statusText;
        }
        if (xhr.status >= 200 && xhr.status < 300) this.toast('ok', file.name + ' uploaded');
        else this.toast('error', file.name + ': ' + (detail || 'HTTP ' + xhr.status));
        this.upload = null;
        this.openIsos();
      };
      xhr.onerror = () => {
        this.toast('error', file.name + ': the upload failed');
        this.upload = null;
      };
      xhr.onabort = () => {
        this.toast('ok', file.name + ': upload cancelled');
        this.upload = null;
      };
      xhr.open('POST', '/api/isos');
      xhr.setRequestHeader('Authorization', 'Bearer ' + token());
      xhr.send(form);
    },

    cancelUpload() {
      if (this.upload) this.upload.xhr.abort();
    },

    isSeed(iso) {
      return iso.path.includes('/cloudinit/');
    },

    /** Only uploads (in the data directory's images/) can be deleted here. */
    deletable(iso) {
      return this.isAdmin() && iso.path.includes('/images/');
    },

    async deleteIso(iso) {
      const path = '/api/isos/' + encodeURIComponent(iso.name);
      await this.attempt('iso', iso.name, () => del(path), iso.name + ' deleted');
      await this.openIsos();
    },
  };
}
