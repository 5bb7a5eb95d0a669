// Volumes: standalone disks, created here and attached to (or detached from) VMs, hot-plugged when
// the VM runs.

import { del, get, post } from './api.js';

export function volumes() {
  return {
    volumeList: [],
    volumeForm: { name: '', size_gb: 10, format: 'qcow2' },
    volumeError: '',
    attachTarget: {},

    async openVolumes() {
      try {
        this.volumeList = await get('/api/volumes');
      } catch (e) {
        this.toast('error', 'Volumes: ' + e.message);
      }
    },

    vmName(id) {
      const vm = this.vms.find((v) => v.id === id);
      return vm ? vm.name : id;
    },

    attachedLabel(v) {
      return v.attached_to ? 'attached to ' + this.vmName(v.attached_to) : 'not attached';
    },

    async createVolume() {
      this.busy = 'volume';
      this.volumeError = '';
      try {
        const f = this.volumeForm;
        const answer = await post('/api/volumes', { name: f.name, size_gb: Number(f.size_gb), format: f.format });
        this.toast('ok', 'Volume ' + answer.volume.name + ' created');
        this.volumeForm = { name: '', size_gb: 10, format: 'qcow2' };
        await this.openVolumes();
      } catch (e) {
        this.volumeError = e.message;
      } finally {
        this.busy = '';
      }
    },

    setAttachTarget(v, vmId) {
      this.attachTarget = Object.assign({}, this.attachTarget, { [v.id]: vmId });
    },

    async attachVolume(v) {
      const vmId = this.attachTarget[v.id];
      if (!vmId) return;
      await this.volumeAction(v, () => post('/api/vms/' + vmId + '/volumes/' + v.id), 'attached');
    },

    detachVolume(v) {
      return this.volumeAction(v, () => del('/api/vms/' + v.attached_to + '/volumes/' + v.id), 'detached');
    },

    deleteVolume(v) {
      return this.volumeAction(v, () => del('/api/volumes/' + v.id), 'deleted');
    },

    async volumeAction(v, request, done) {
      await this.attempt('volume', v.name, request, 'Volume ' + v.name + ' ' + done);
      await this.openVolumes();
    },
  };
}
