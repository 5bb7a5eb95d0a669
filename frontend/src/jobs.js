// Long work (backups, restores, clones, uploads) as jobs: kept current by the push's `job` messages
// (and `GET /api/jobs` on load), shown in a panel and as progress bars where they were started.

import { get } from './api.js';

const KEEP = 20;

export function jobs() {
  return {
    jobList: [],
    jobsOpen: false,

    async loadJobs() {
      try {
        this.jobList = (await get('/api/jobs')).slice(0, KEEP);
      } catch {
        // The push brings them as they change.
      }
    },

    onJob(job) {
      const rest = this.jobList.filter((j) => j.id !== job.id);
      this.jobList = [job].concat(rest).slice(0, KEEP);
    },

    runningJobs() {
      return this.jobList.filter((j) => j.state === 'running');
    },

    jobsLabel() {
      const n = this.runningJobs().length;
      return n ? 'Jobs (' + n + ' running)' : 'Jobs';
    },

    toggleJobs() {
      this.jobsOpen = !this.jobsOpen;
    },

    /** The newest job of `kind` for the VM, if any (its progress shows on the VM's page). */
    jobOf(kind, vmId) {
      return this.jobList.find((j) => j.kind === kind && j.vm_id === vmId) || null;
    },

    jobPercent(job) {
      return job ? Math.round(job.progress * 100) : 0;
    },

    jobWidth(job) {
      return 'width: ' + this.jobPercent(job) + '%';
    },

    jobLine(job) {
      if (job.state === 'failed') return job.kind + ' failed: ' + (job.message || 'no reason given');
      if (job.state === 'succeeded') return job.kind + ' done';
      return job.kind + ': ' + job.phase + ' (' + this.jobPercent(job) + '%)';
    },

    jobClass(job) {
      return job.state === 'failed' ? 'error-text' : 'text-sm';
    },
  };
}
