// One VM's page (`#/vm/<id>`): its configuration, the last error, the QEMU and serial logs, and its
// snapshots (taken live, with RAM, while it runs).

import { del, get, post } from './api.js';

function emptyPage(id) {
  return {
    id,
    logs: { qemu_log: '', serial_log: '' },
    snapshots: [],
    snapshotName: '',
    backups: [],
    schedule: null,
    scheduleForm: { kind: 'cron', cron: '0 3 * * *', interval: 86400, keep: 7 },
    volumes: [],
    freeVolumes: [],
    attachId: '',
    newVolume: { name: '', size_gb: 10 },
    guest: null,
  };
}

export function vmPage() {
  return {
    page: emptyPage(''),

    /** The VM the page shows, as the dashboard's list has it (so the push keeps it current). */
    current() {
      return this.vms.find((v) => v.id === this.routeParam) || null;
    },

    /** The page's terminal goes with it (a console stays: it lives beside every view). */
    leaveVmPage() {
      this.closeSerial();
      this.page.id = '';
    },

    async openVmPage() {
      const id = this.routeParam;
      if (!id || this.page.id === id) return;
      this.closeSerial();
      this.page = emptyPage(id);
      this.showCharts('page:' + id);
      await Promise.all([this.loadLogs(), this.loadSnapshots(), this.loadVmBackups(), this.loadSchedule(), this.loadVmVolumes(), this.loadGuest()]);
    },

    async loadLogs() {
      this.loadGuest();
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
        { label: 'State', value: vm.state || vm.status },
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

    serialTerm: null,
    serialState: '',

    /** Opens the serial terminal below the logs; its code is fetched only now. */
    async openSerial() {
      if (this.serialTerm) return;
      this.serialState = 'connecting';
      try {
        const access = await get('/api/vms/' + this.page.id + '/serial');
        const { openTerminal } = await import('./terminal.js');
        const element = document.getElementById('serial-terminal');
        this.serialTerm = openTerminal(element, access.ws_url, (why) => {
          // Closed from here: nothing to report.
          if (this.serialTerm) this.serialState = 'Disconnected: ' + why;
        });
        this.serialState = 'connected';
      } catch (e) {
        this.serialState = 'Could not open: ' + e.message;
      }
    },

    closeSerial() {
      if (this.serialTerm) this.serialTerm.close();
      this.serialTerm = null;
      this.serialState = '';
    },

    serialOpen() {
      return this.serialState !== '';
    },

    serialNote() {
      return this.serialState === 'connected' || this.serialState === 'connecting' ? '' : this.serialState;
    },

    async loadGuest() {
      try {
        this.page.guest = await get('/api/vms/' + this.page.id + '/guest-info');
      } catch (e) {
        this.page.guest = { available: false, reason: e.message };
      }
    },

    guestRows() {
      const g = this.page.guest;
      if (!g || !g.available) return [];
      const rows = [
        { label: 'Hostname', value: g.hostname || '—' },
        { label: 'OS', value: [g.os, g.kernel].filter((x) => x).join(' · ') || '—' },
        { label: 'Addresses', value: (g.ip_addresses || []).join(', ') || '—' },
      ];
      for (const f of g.filesystems || []) {
        const used = f.total_bytes ? Math.round((100 * (f.used_bytes || 0)) / f.total_bytes) + '% used' : '';
        rows.push({ label: f.mountpoint, value: f.type + (used ? ' · ' + used : '') });
      }
      return rows;
    },

    guestReason() {
      const g = this.page.guest;
      return g && !g.available ? 'Guest agent: ' + (g.reason || 'no answer') : '';
    },

    async restoreOntoThis(b) {
      const done = b.vm_name + ' restored from its backup';
      await this.attempt('backup', 'Restore', () => post('/api/backups/' + b.id + '/restore', {}), done);
      await this.refresh();
    },

    async deleteVmBackup(b) {
      await this.attempt('backup', b.backup_name, () => del('/api/backups/' + b.id), b.backup_name + ' deleted');
      await this.loadVmBackups();
    },

    async createAndAttach() {
      const f = this.page.newVolume;
      const ok = await this.attempt('volume', 'Volume', async () => {
        const made = await post('/api/volumes', { name: f.name, size_gb: Number(f.size_gb), format: 'qcow2' });
        await post('/api/vms/' + this.page.id + '/volumes/' + made.volume.id);
      }, 'Volume ' + f.name + ' created and attached');
      if (ok) this.page.newVolume = { name: '', size_gb: 10 };
      await this.loadVmVolumes();
    },

    async loadVmBackups() {
      try {
        this.page.backups = (await get('/api/backups')).filter((b) => b.vm_id === this.page.id);
      } catch (e) {
        this.toast('error', 'Backups: ' + e.message);
      }
    },

    async backUpNow() {
      const vm = this.current();
      await this.attempt('backup', 'Backup', () => post('/api/vms/' + vm.id + '/backup'), 'Backup of ' + vm.name + ' made');
      await this.loadVmBackups();
    },

    backupJob() {
      return this.jobOf('backup', this.page.id);
    },

    async loadSchedule() {
      try {
        this.page.schedule = await get('/api/vms/' + this.page.id + '/backup-schedule');
      } catch {
        this.page.schedule = null;
      }
    },

    scheduleLabel() {
      const s = this.page.schedule;
      if (!s) return 'No schedule';
      const when = s.cron ? 'cron ' + s.cron + ' (UTC)' : 'every ' + s.interval + ' s';
      return when + ', keeping ' + s.keep + '; next ' + new Date(s.next_run).toLocaleString();
    },

    scheduleUsesCron() {
      return this.page.scheduleForm.kind === 'cron';
    },

    async saveSchedule() {
      const f = this.page.scheduleForm;
      const body = f.kind === 'cron' ? { cron: f.cron, keep: Number(f.keep) } : { interval: Number(f.interval), keep: Number(f.keep) };
      await this.attempt('schedule', 'Schedule', () => post('/api/vms/' + this.page.id + '/backup-schedule', body), 'Backup schedule set');
      await this.loadSchedule();
    },

    async removeSchedule() {
      await this.attempt('schedule', 'Schedule', () => del('/api/vms/' + this.page.id + '/backup-schedule'), 'Backup schedule removed');
      await this.loadSchedule();
    },

    async loadVmVolumes() {
      try {
        const all = await get('/api/volumes');
        this.page.volumes = all.filter((v) => v.attached_to === this.page.id);
        this.page.freeVolumes = all.filter((v) => !v.attached_to);
      } catch (e) {
        this.toast('error', 'Volumes: ' + e.message);
      }
    },

    async attachHere() {
      const id = this.page.attachId;
      if (!id) return;
      await this.attempt('volume', 'Attach', () => post('/api/vms/' + this.page.id + '/volumes/' + id), 'Volume attached');
      this.page.attachId = '';
      await this.loadVmVolumes();
    },

    async detachHere(v) {
      await this.attempt('volume', v.name, () => del('/api/vms/' + this.page.id + '/volumes/' + v.id), 'Volume ' + v.name + ' detached');
      await this.loadVmVolumes();
    },

    snapshotKind(s) {
      return s.vm_state ? 'with RAM' : 'disks only';
    },
  };
}
