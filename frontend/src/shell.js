// The application shell: which view is shown (from the URL hash), the theme, and toasts.

const THEME_KEY = 'fastvm.theme';

export function shell() {
  return {
    route: 'dashboard',
    routeParam: '',
    routeExtra: '',
    theme: localStorage.getItem(THEME_KEY) || 'dark',
    toasts: [],
    sidebarOpen: false,
    nextToast: 1,

    initShell() {
      this.applyTheme();
      this.readRoute();
      window.addEventListener('hashchange', () => this.readRoute());
    },

    readRoute() {
      const [route, param, extra] = location.hash.replace(/^#\/?/, '').split('/');
      this.route = route || 'dashboard';
      this.routeParam = param || '';
      this.routeExtra = extra || '';
      this.sidebarOpen = false;
    },

    viewTitle() {
      const titles = {
        dashboard: 'Dashboard', volumes: 'Volumes', backups: 'Backups', isos: 'ISOs',
        monitoring: 'Monitoring', users: 'Users', audit: 'Audit', vm: 'Virtual machine', console: 'Console',
      };
      return titles[this.route] || 'Fast VM';
    },

    isAdminRoute(name) {
      return this.route === name && this.isAdmin();
    },

    isRoute(name) {
      return this.route === name;
    },

    navClass(name) {
      return this.route === name ? 'nav-link nav-active' : 'nav-link';
    },

    toggleSidebar() {
      this.sidebarOpen = !this.sidebarOpen;
    },

    toggleTheme() {
      this.theme = this.theme === 'dark' ? 'light' : 'dark';
      localStorage.setItem(THEME_KEY, this.theme);
      this.applyTheme();
      // Charts take their colours when made.
      if (this.chartsFor) this.showCharts(this.chartsFor);
    },

    applyTheme() {
      document.documentElement.classList.toggle('dark', this.theme === 'dark');
    },

    themeLabel() {
      return this.theme === 'dark' ? 'Light theme' : 'Dark theme';
    },

    /**
     * Runs one user action: its buttons are disabled (`busy`) while it runs, and it ends in a toast,
     * `done` on success or the server's message (after `what`) on failure. Resolves to success.
     */
    async attempt(busy, what, work, done) {
      this.busy = busy;
      try {
        await work();
        if (done) this.toast('ok', done);
        return true;
      } catch (e) {
        this.toast('error', what + ': ' + e.message);
        return false;
      } finally {
        this.busy = '';
      }
    },

    toast(kind, text) {
      const id = this.nextToast++;
      // A burst of actions keeps the newest few on screen.
      this.toasts = this.toasts.slice(-3).concat([{ id, kind, text }]);
      setTimeout(() => this.dismiss(id), kind === 'error' ? 8000 : 4000);
    },

    dismiss(id) {
      this.toasts = this.toasts.filter((t) => t.id !== id);
    },

    toastClass(t) {
      return t.kind === 'error' ? 'toast toast-error' : 'toast toast-ok';
    },
  };
}
