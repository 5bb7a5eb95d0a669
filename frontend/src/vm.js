// One VM's page (`#/vm/<id>`): its configuration, the last error, the QEMU and serial logs, and its
// snapshots (taken live, with RAM, while it runs).

import { del, get, post } from './api.js';

export function vmPage() {
  return {
    page: { id: '', logs: { qemu_log: '', serial_log: '' }, snapshots: [], snapshotName: '', loading: false },

    /** The VM the page shows, as the dashboard's list has it (so the push keeps it current). */
    current() {
      return this.vms.find((v) => v.id === this.routeParam) || null;
    },

    async openVmPage() {
      const id = this.routeParam;
      if (!id || this.page.id === id) return;
      this.page = { id, logs: { qemu_log: '', serial_log: '' }, snapshots: [], snapshotName: '', loading: true };
      await Promise.all([this.loadLogs(), this.loadSnapshots()]);
      this.page.loading = false;
    },

    async loadLogs() {
      try {
        this.page.logs = await get('/api/vms/' + this.page.id + '/logs?lines=200');
      } catch (e) {
        this.toast('error', 'Logs: ' + e.message);
      }
    },

    async loadSnapshots() {
      try {
        this.page.snapshots = await get('/api/vms/' + this.page.id + '/snapshots');
      } catch (e) {
        this.toast('error', 'Snapshots: ' + e.message);
      }
    },

    specRows() {
      const vm = this.current();
      if (!vm) return [];
      const yes = (b) => (b ? 'on' : 'off');
      return [
        { label: 'State', value: vm.status },
        { label: 'Owner', value: vm.owner },
        { label: 'vCPUs', value: String(vm.cpus) + ' (' + vm.cpu_model + ')' },
        { label: 'Memory', value: vm.memory + ' MiB' },
        { label: 'Disk', value: vm.disk_size + ' GB' },
        { label: 'Firmware', value: vm.firmware + ' · Secure Boot ' + yes(vm.secure_boot_enabled) + ' · TPM ' + yes(vm.tpm_enabled) },
        { label: 'Display', value: vm.display_type },
        { label: 'Runtime', value: vm.runtime + (vm.accel ? ' · ' + vm.accel : '') },
        { label: 'Boot ISO', value: vm.iso_path || '—' },
        { label: 'Second ISO', value: vm.secondary_iso_path || '—' },
        { label: 'Networks', value: (vm.networks || []).map((n) => n.type + ' ' + (n.mac_address || '')).join(', ') || '—' },
        { label: 'Addresses', value: (vm.ip_addresses || []).join(', ') || '—' },
      ];
    },

    async takeSnapshot() {
      const name = this.page.snapshotName.trim();
      if (!name) return;
      const path = '/api/vms/' + this.page.id + '/snapshots';
      if (await this.attempt('snapshot', 'Snapshot', () => post(path, { name, description: '' }), 'Snapshot ' + name + ' taken')) {
        this.page.snapshotName = '';
      }
      await this.loadSnapshots();
    },

    restoreSnapshot(s) {
      const path = '/api/vms/' + this.page.id + '/snapshots/' + s.id + '/restore';
      return this.attempt('snapshot', 'Restore', () => post(path), 'Snapshot ' + s.name + ' restored');
    },

    async deleteSnapshot(s) {
      const path = '/api/vms/' + this.page.id + '/snapshots/' + s.id;
      await this.attempt('snapshot', 'Delete', () => del(path), 'Snapshot ' + s.name + ' deleted');
      await this.loadSnapshots();
    },

    snapshotKind(s) {
      return s.vm_state ? 'with RAM' : 'disks only';
    },
  };
}
