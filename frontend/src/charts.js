// Chart.js line charts of metric series, loaded when a view with charts opens. Only the parts a
// line chart needs are registered (tree-shaken); time is a linear axis of Unix seconds, so no date
// adapter is needed.

import { Chart, Filler, Legend, LineController, LineElement, LinearScale, PointElement, Tooltip } from 'chart.js';

Chart.register(LineController, LineElement, PointElement, LinearScale, Filler, Legend, Tooltip);

const clock = (ts, withSeconds) =>
  new Date(ts * 1000).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: withSeconds ? '2-digit' : undefined, hour12: false });

/**
 * A chart in `canvas` of the `series` ([{ label, color, value(point) }]) of metric points
 * (objects with `ts`), showing the last `seconds`; `format(value)` labels the y axis, which goes
 * at least up to `least` (so that an idle or empty chart has a readable scale).
 */
export function lineChart(canvas, { series, format, seconds, max, least }) {
  const dark = document.documentElement.classList.contains('dark');
  const grid = dark ? 'rgba(148,163,184,0.15)' : 'rgba(100,116,139,0.2)';
  const text = dark ? '#94a3b8' : '#475569';
  // A canvas holds one chart: whatever drew here before goes first.
  const before = Chart.getChart(canvas);
  if (before) before.destroy();
  const chart = new Chart(canvas, {
    type: 'line',
    data: {
      datasets: series.map((s) => ({
        label: s.label, data: [], borderColor: s.color, backgroundColor: s.color + '33',
        fill: series.length === 1, borderWidth: 1.5, pointRadius: 0, tension: 0.2,
      })),
    },
    options: {
      animation: false,
      responsive: true,
      maintainAspectRatio: false,
      parsing: false,
      normalized: true,
      interaction: { mode: 'index', intersect: false },
      scales: {
        x: { type: 'linear', grid: { color: grid }, ticks: { color: text, maxTicksLimit: 6, callback: (v) => clock(v, false) } },
        y: { min: 0, max, suggestedMax: least, grid: { color: grid }, ticks: { color: text, maxTicksLimit: 5, callback: (v) => format(v) } },
      },
      plugins: {
        legend: { display: series.length > 1, labels: { color: text, boxWidth: 12 } },
        tooltip: { callbacks: { title: (items) => clock(items[0].parsed.x, true), label: (i) => i.dataset.label + ': ' + format(i.parsed.y) } },
      },
    },
  });
  const trim = (now) => {
    for (const d of chart.data.datasets) {
      const from = d.data.findIndex((p) => p.x >= now - seconds);
      if (from > 0) d.data.splice(0, from);
    }
  };
  return {
    /** Replaces the points (history). */
    set(points) {
      chart.data.datasets.forEach((d, i) => {
        d.data = points.map((p) => ({ x: p.ts, y: series[i].value(p) ?? 0 }));
      });
      if (points.length) trim(points[points.length - 1].ts);
    },
    /** Adds one live point (older ones leave the window). */
    push(point) {
      chart.data.datasets.forEach((d, i) => {
        const last = d.data[d.data.length - 1];
        if (!last || point.ts > last.x) d.data.push({ x: point.ts, y: series[i].value(point) ?? 0 });
      });
      trim(point.ts);
    },
    points() {
      return chart.data.datasets[0].data.length;
    },
    draw() {
      const xs = chart.data.datasets[0].data;
      const end = xs.length ? xs[xs.length - 1].x : Math.floor(Date.now() / 1000);
      chart.options.scales.x.min = end - seconds;
      chart.options.scales.x.max = end;
      chart.update('none');
    },
    destroy() {
      chart.destroy();
    },
  };
}
