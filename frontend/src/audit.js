// The audit log (admins): newest first, filtered by user and action, a page at a time.

import { get } from './api.js';

const PAGE = 50;

export function audit() {
  return {
    auditPage: { logs: [], total: 0, offset: 0 },
    auditFilter: { user: '', action: '' },

    async openAudit(offset) {
      if (!this.isAdmin()) return;
      const q = new URLSearchParams({ limit: String(PAGE), offset: String(offset || 0) });
      if (this.auditFilter.user.trim()) q.set('user', this.auditFilter.user.trim());
      if (this.auditFilter.action.trim()) q.set('action', this.auditFilter.action.trim());
      try {
        this.auditPage = await get('/api/audit-logs?' + q.toString());
      } catch (e) {
        this.toast('error', 'Audit: ' + e.message);
      }
    },

    auditRange() {
      const p = this.auditPage;
      if (p.total === 0) return 'No records';
      return p.offset + 1 + '–' + (p.offset + p.logs.length) + ' of ' + p.total;
    },

    hasNewer() {
      return this.auditPage.offset > 0;
    },

    hasOlder() {
      return this.auditPage.offset + this.auditPage.logs.length < this.auditPage.total;
    },

    newerPage() {
      return this.openAudit(Math.max(0, this.auditPage.offset - PAGE));
    },

    olderPage() {
      return this.openAudit(this.auditPage.offset + PAGE);
    },

    auditWhen(e) {
      return new Date(e.timestamp).toLocaleString();
    },

    resultClass(e) {
      return e.result === 'success' ? 'text-emerald-600 dark:text-emerald-400' : 'text-rose-600 dark:text-rose-400';
    },
  };
}
