// The dashboard: stat cards, host bars, and a card per VM with its quick actions; kept live by the
// metrics push (or a 10 s refresh while the push is down).

import { del, get, getBlob, post } from './api.js';
import { connectLive } from './live.js';

const POLL_MS = 10000;
/** Screen thumbnails of running VMs are refreshed this often while the dashboard shows. */
const THUMB_MS = 10000;
const THUMB_WIDTH = 320;
const GIB = 1024 * 1024 * 1024;

function percent(x) {
  return Math.round(Number(x) || 0) + '%';
}

export function vms() {
  return {
    vms: [],
    host: null,
    vmMetrics: {},
    volumeCount: 0,
    search: '',
    stateFilter: 'all',
    liveMode: 'connecting',
    live: null,
    poller: null,
    working: {},
    confirming: null,

    thumbs: {},
    thumbTimer: null,

    startDashboard() {
      this.refresh();
      this.loadJobs();
      clearInterval(this.thumbTimer);
      this.thumbTimer = setInterval(() => this.refreshThumbs(), THUMB_MS);
      setTimeout(() => this.refreshThumbs(), 1000);
      this.live = connectLive({
        ticket: async () => (await get('/api/metrics/ticket')).ticket,
        onMessage: (m) => this.onLive(m),
        onMode: (mode) => this.setLiveMode(mode),
      });
    },

    stopLive() {
      clearInterval(this.thumbTimer);
      this.thumbTimer = null;
      if (this.live) this.live.close();
      this.live = null;
      clearInterval(this.poller);
      this.poller = null;
    },

    setLiveMode(mode) {
      this.liveMode = mode;
      clearInterval(this.poller);
      this.poller = null;
      if (mode === 'polling') {
        this.poller = setInterval(() => this.refresh(), POLL_MS);
      } else {
        this.refresh();
      }
    },

    liveLabel() {
      return { live: 'Live', polling: 'Refreshing every 10 s', connecting: 'Connecting…' }[this.liveMode];
    },

    liveClass() {
      return this.liveMode === 'live' ? 'dot dot-running' : 'dot dot-stopped';
    },

    async refresh() {
      try {
        const [list, host, volumes] = await Promise.all([
          get('/api/vms'),
          get('/api/system/metrics'),
          get('/api/volumes'),
        ]);
        this.vms = list;
        this.host = host;
        this.volumeCount = volumes.length;
      } catch (e) {
        if (e.status !== 401) this.toast('error', 'Refreshing: ' + e.message);
      }
    },

    onLive(m) {
      if (m.type === 'snapshot' || m.type === 'metrics') {
        if (m.host) this.host = Object.assign({}, this.host || {}, m.host);
        const byId = {};
        for (const v of m.vms || []) byId[v.vm_id] = v;
        this.vmMetrics = byId;
        this.chartsLive(m);
      } else if (m.type === 'job') {
        this.onJob(m.job);
      } else if (m.type === 'vm_state') {
        const vm = this.vms.find((v) => v.id === m.vm_id);
        if (m.event === 'deleted') {
          this.vms = this.vms.filter((v) => v.id !== m.vm_id);
        } else if (vm) {
          vm.status = m.status;
          if (m.state) vm.state = m.state;
          vm.last_error = m.last_error;
        } else {
          this.refresh();
        }
      }
    },

    counts() {
      const running = this.vms.filter((v) => v.status === 'running').length;
      return { total: this.vms.length, running, stopped: this.vms.length - running, volumes: this.volumeCount };
    },

    filteredVms() {
      const q = this.search.trim().toLowerCase();
      return this.vms
        .filter((v) => this.stateFilter === 'all' || v.status === this.stateFilter)
        .filter((v) => !q || v.name.toLowerCase().includes(q))
        .sort((a, b) => a.name.localeCompare(b.name));
    },

    hostBar(kind) {
      const h = this.host;
      if (!h) return { label: '—', width: 'width: 0%' };
      const value = { cpu: h.cpu_percent, memory: h.memory_percent, disk: h.disk_percent }[kind];
      return { label: percent(value), width: 'width: ' + Math.min(100, Number(value) || 0) + '%' };
    },

    hostDetail(kind) {
      const h = this.host;
      if (!h) return '';
      if (kind === 'memory') return h.memory_used_gb.toFixed(1) + ' / ' + h.memory_total_gb.toFixed(1) + ' GB';
      if (kind === 'disk') return h.disk_used_gb.toFixed(0) + ' / ' + h.disk_total_gb.toFixed(0) + ' GB';
      return (h.cpu_per_core || []).length + ' cores';
    },

    /** The screens of the running VMs the dashboard shows (cached by the server for a few seconds). */
    async refreshThumbs() {
      if (this.route !== 'dashboard' || document.hidden) return;
      const running = this.filteredVms().filter((v) => v.status === 'running').slice(0, 24);
      const next = {};
      await Promise.all(
        running.map(async (vm) => {
          try {
            const blob = await getBlob('/api/vms/' + vm.id + '/screenshot?width=' + THUMB_WIDTH);
            next[vm.id] = URL.createObjectURL(blob);
          } catch {
            // No screen right now (starting, stopping): the card goes without.
          }
        }),
      );
      for (const url of Object.values(this.thumbs)) URL.revokeObjectURL(url);
      this.thumbs = next;
    },

    thumb(vm) {
      return vm.status === 'running' ? this.thumbs[vm.id] || '' : '';
    },

    thumbAlt(vm) {
      return 'Screen of ' + vm.name;
    },

    // The lifecycle state (paused, starting… crashed); `status` alone from an older controller.
    stateOf(vm) {
      return vm.state || vm.status;
    },

    statusClass(vm) {
      const dot = {
        running: 'dot dot-running',
        paused: 'dot dot-paused',
        starting: 'dot dot-busy',
        stopping: 'dot dot-busy',
        crashed: 'dot dot-error',
      }[this.stateOf(vm)];
      return dot || (vm.last_error ? 'dot dot-error' : 'dot dot-stopped');
    },

    isPaused(vm) {
      return this.stateOf(vm) === 'paused';
    },

    mayPause(vm) {
      return this.stateOf(vm) === 'running';
    },

    usage(vm) {
      const m = this.vmMetrics[vm.id];
      if (!m || vm.status !== 'running') return '';
      return 'CPU ' + percent(m.cpu_percent) + ' · RAM ' + (m.memory_bytes / GIB).toFixed(2) + ' GB';
    },

    addresses(vm) {
      return (vm.ip_addresses || []).join(', ');
    },

    isRunning(vm) {
      return vm.status === 'running';
    },

    isWorking(vm) {
      return Boolean(this.working[vm.id]);
    },

    async act(vm, what, path, done) {
      this.working = Object.assign({}, this.working, { [vm.id]: what });
      try {
        const answer = await post(path);
        if (answer && answer.vm) Object.assign(vm, answer.vm);
        this.toast('ok', done);
      } catch (e) {
        this.toast('error', vm.name + ': ' + e.message);
      } finally {
        const w = Object.assign({}, this.working);
        delete w[vm.id];
        this.working = w;
      }
    },

    startVm(vm) {
      return this.act(vm, 'start', '/api/vms/' + vm.id + '/start', vm.name + ' started');
    },

    stopVm(vm) {
      return this.act(vm, 'stop', '/api/vms/' + vm.id + '/stop', vm.name + ' stopped');
    },

    forceStopVm(vm) {
      return this.act(vm, 'stop', '/api/vms/' + vm.id + '/stop?force=true', vm.name + ' stopped');
    },

    pauseVm(vm) {
      return this.act(vm, 'pause', '/api/vms/' + vm.id + '/pause', vm.name + ' paused');
    },

    resumeVm(vm) {
      return this.act(vm, 'resume', '/api/vms/' + vm.id + '/resume', vm.name + ' resumed');
    },

    restartVm(vm) {
      return this.act(vm, 'restart', '/api/vms/' + vm.id + '/restart', vm.name + ' restarted');
    },

    selected: {},

    isSelected(vm) {
      return Boolean(this.selected[vm.id]);
    },

    toggleSelected(vm) {
      const next = Object.assign({}, this.selected);
      if (next[vm.id]) delete next[vm.id];
      else next[vm.id] = true;
      this.selected = next;
    },

    selectedVms() {
      return this.vms.filter((v) => this.selected[v.id]).sort((a, b) => a.name.localeCompare(b.name));
    },

    selectionLabel() {
      return this.selectedVms().length + ' selected';
    },

    hasSelection() {
      return this.selectedVms().length > 0;
    },

    clearSelection() {
      this.selected = {};
    },

    async bulk(action) {
      const list = this.selectedVms();
      const run = { start: (v) => this.startVm(v), stop: (v) => this.stopVm(v) }[action];
      await Promise.all(list.filter((v) => (action === 'start') !== this.isRunning(v)).map(run));
      this.clearSelection();
    },

    askBulkDelete() {
      const list = this.selectedVms();
      this.confirming = { bulk: list, name: list.length + ' VMs (' + list.map((v) => v.name).join(', ') + ')' };
    },

    askDelete(vm) {
      this.confirming = vm;
    },

    confirmText() {
      if (!this.confirming) return '';
      const disks = this.confirming.bulk ? 'their disks' : 'its disk';
      return 'Delete ' + this.confirming.name + ' with ' + disks + '? This cannot be undone.';
    },

    cancelConfirm() {
      this.confirming = null;
    },

    async confirmDelete() {
      const target = this.confirming;
      this.confirming = null;
      if (target.bulk) {
        this.clearSelection();
        await Promise.all(target.bulk.map((vm) => this.deleteOne(vm)));
        return;
      }
      await this.deleteOne(target);
    },

    async deleteOne(vm) {
      this.working = Object.assign({}, this.working, { [vm.id]: 'delete' });
      try {
        await del('/api/vms/' + vm.id + (vm.status === 'running' ? '?force=true' : ''));
        this.vms = this.vms.filter((v) => v.id !== vm.id);
        this.toast('ok', vm.name + ' deleted');
      } catch (e) {
        this.toast('error', vm.name + ': ' + e.message);
      }
    },
  };
}
