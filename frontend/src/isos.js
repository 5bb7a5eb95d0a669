// The ISO library: what VMs may boot from, uploads (admins) with progress and cancel, deletes.

import { del, get, upload } from './api.js';

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

    async uploadIso(file) {
      const form = new FormData();
      form.append('file', file, file.name);
      const sending = upload('/api/isos', form, (fraction) => {
        if (this.upload) this.upload.fraction = fraction;
      });
      this.upload = { name: file.name, fraction: 0, sending };
      try {
        await sending.done;
        this.toast('ok', file.name + ' uploaded');
      } catch (e) {
        this.toast(e.aborted ? 'ok' : 'error', file.name + ': ' + (e.aborted ? 'upload cancelled' : e.message));
      }
      this.upload = null;
      await this.openIsos();
    },

    cancelUpload() {
      if (this.upload) this.upload.sending.abort();
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
