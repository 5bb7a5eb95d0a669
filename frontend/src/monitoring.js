// The Monitoring view (host and one VM, 10 min / 1 h / 24 h) and a VM page's charts: history from
// the API, then live points from the metrics push. Charts are drawn only while they are on screen
// and the tab is visible. Chart.js (charts.js) is fetched when charts first show.

import { get } from './api.js';

const KIB = 1024;
const pct = (v) => (Number(v) || 0).toFixed(0) + ' %';
const gb = (v) => (Number(v) || 0).toFixed(1) + ' GB';
const mib = (v) => (Number(v) || 0).toFixed(0) + ' MiB';
function rate(v) {
  const x = Number(v) || 0;
  if (x >= KIB * KIB) return (x / KIB / KIB).toFixed(1) + ' MB/s';
  if (x >= KIB) return (x / KIB).toFixed(0) + ' KB/s';
  return x.toFixed(0) + ' B/s';
}

const BLUE = '#0ea5e9';
const GREEN = '#10b981';
const AMBER = '#f59e0b';

// Host and VM points name their throughput alike.
const THROUGHPUT = [
  { key: 'disk', title: 'Disk I/O', format: rate, least: KIB, series: [
    { label: 'Read', color: BLUE, value: (p) => p.disk_read_bytes_per_s },
    { label: 'Write', color: AMBER, value: (p) => p.disk_write_bytes_per_s }] },
  { key: 'net', title: 'Network', format: rate, least: KIB, series: [
    { label: 'Received', color: BLUE, value: (p) => p.net_rx_bytes_per_s },
    { label: 'Sent', color: AMBER, value: (p) => p.net_tx_bytes_per_s }] },
];

const HOST_CHARTS = [
  { key: 'cpu', title: 'CPU', format: pct, max: 100, series: [{ label: 'CPU', color: BLUE, value: (p) => p.cpu_percent }] },
  { key: 'memory', title: 'Memory used', format: gb, least: 1, series: [{ label: 'Used', color: GREEN, value: (p) => p.memory_used_gb }] },
  ...THROUGHPUT,
];

const VM_CHARTS = [
  // A VM with several vCPUs goes past 100 %: one busy vCPU is 100 %.
  { key: 'cpu', title: 'CPU', format: pct, least: 100, series: [{ label: 'CPU', color: BLUE, value: (p) => p.cpu_percent }] },
  { key: 'memory', title: 'Memory (QEMU process)', format: mib, least: 256, series: [{ label: 'Memory', color: GREEN, value: (p) => p.memory_bytes / KIB / KIB }] },
  ...THROUGHPUT,
];

export const RANGES = [{ minutes: 10, label: '10 min' }, { minutes: 60, label: '1 h' }, { minutes: 1440, label: '24 h' }];

// Chart objects stay outside Alpine's reactive state (its proxies would wrap Chart.js internals).
let drawn = [];
let watcher = null;
/** Bumped whenever charts go: a showCharts that resumes after an await and finds it changed gives way. */
let generation = 0;

export function monitoring() {
  return {
    monRange: 10,
    monVm: '',
    /** Per chart id: its latest value as text, and how many points it holds (tests read these). */
    chartLatest: {},
    chartPoints: {},
    chartsFor: '',

    hostCharts() {
      return HOST_CHARTS.map((c) => ({ id: 'host-' + c.key, title: c.title }));
    },

    vmCharts(prefix) {
      return VM_CHARTS.map((c) => ({ id: prefix + '-' + c.key, title: c.title }));
    },

    ranges() {
      return RANGES;
    },

    rangeClass(minutes) {
      return this.monRange === minutes ? 'btn-primary' : 'btn-quiet';
    },

    async openMonitoring() {
      if (!this.monVm) {
        const running = this.vms.find((v) => v.status === 'running');
        this.monVm = (running || this.vms[0] || { id: '' }).id;
      }
      await this.showCharts('monitoring');
    },

    async setRange(minutes) {
      this.monRange = minutes;
      await this.showCharts('monitoring');
    },

    async pickMonVm(id) {
      this.monVm = id;
      await this.showCharts('monitoring');
    },

    /** What `where` shows: the Monitoring view (host and the picked VM) or a VM's page. */
    groups(where) {
      if (where === 'monitoring') {
        const g = [{ prefix: 'host', defs: HOST_CHARTS, source: 'host' }];
        if (this.monVm) g.push({ prefix: 'vm', defs: VM_CHARTS, source: this.monVm });
        return { minutes: this.monRange, groups: g };
      }
      // 'page:<vm id>'
      return { minutes: 10, groups: [{ prefix: 'page', defs: VM_CHARTS, source: where.slice(5) }] };
    },

    async showCharts(where) {
      this.closeCharts();
      const mine = generation;
      this.chartsFor = where;
      const { minutes, groups } = this.groups(where);
      const vmId = where === 'monitoring' ? '' : groups[0].source;
      const [{ lineChart }, history] = await Promise.all([
        import('./charts.js'),
        where === 'monitoring'
          ? get('/api/metrics/history?minutes=' + minutes)
          : get('/api/vms/' + vmId + '/metrics/history?minutes=' + minutes),
      ]).catch((e) => {
        this.toast('error', 'Metrics: ' + e.message);
        return [null, null];
      });
      if (!lineChart || mine !== generation) return;
      // A page opened by its URL draws once the VM list has come.
      const first = 'chart-' + groups[groups.length - 1].prefix + '-cpu';
      for (let i = 0; i < 50 && !document.getElementById(first); i++) await new Promise((r) => setTimeout(r, 100));
      if (mine !== generation) return;
      watcher = new IntersectionObserver((entries) => {
        for (const entry of entries) {
          const c = drawn.find((d) => d.canvas === entry.target);
          if (c) c.visible = entry.isIntersecting;
          if (c && c.visible) this.drawChart(c);
        }
      });
      for (const g of groups) {
        const points = g.source === 'host' ? history.host || [] : Array.isArray(history) ? history : (history.vms || {})[g.source] || [];
        for (const def of g.defs) {
          const id = g.prefix + '-' + def.key;
          const canvas = document.getElementById('chart-' + id);
          if (!canvas) continue;
          const chart = lineChart(canvas, { series: def.series, format: def.format, seconds: minutes * 60, max: def.max, least: def.least });
          chart.set(points);
          const c = { id, def, source: g.source, canvas, chart, visible: true };
          drawn.push(c);
          watcher.observe(canvas);
          this.drawChart(c, points[points.length - 1]);
        }
      }
    },

    drawChart(c, last) {
      if (document.visibilityState !== 'visible' || !c.visible) return;
      c.chart.draw();
      if (last) this.chartLatest[c.id] = c.def.series.map((s) => c.def.format(s.value(last))).join(' · ');
      this.chartPoints[c.id] = c.chart.points();
    },

    /** A metrics push: each chart takes its source's new point. */
    chartsLive(m) {
      if (drawn.length === 0) return;
      const byVm = {};
      for (const v of m.vms || []) byVm[v.vm_id] = v;
      for (const c of drawn) {
        const point = c.source === 'host' ? m.host : byVm[c.source];
        if (!point) continue;
        c.chart.push(point);
        this.drawChart(c, point);
      }
    },

    chartsVisible() {
      for (const c of drawn) this.drawChart(c);
    },

    closeCharts() {
      generation++;
      if (watcher) watcher.disconnect();
      watcher = null;
      for (const c of drawn) c.chart.destroy();
      drawn = [];
      this.chartsFor = '';
    },

    latestOf(id) {
      return this.chartLatest[id] || '—';
    },

    pointsOf(id) {
      return String(this.chartPoints[id] || 0);
    },
  };
}
