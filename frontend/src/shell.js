// The application shell: which view is shown (from the URL hash), the theme, and toasts.

const THEME_KEY = 'fastvm.theme';

export function shell() {
  return {
    route: 'dashboard',
    routeParam: '',
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
      const [route, param] = location.hash.replace(/^#\/?/, '').split('/');
      this.route = route || 'dashboard';
      this.routeParam = param || '';
      this.sidebarOpen = false;
    },

    viewTitle() {
      const titles = {
        dashboard: 'Dashboard', volumes: 'Volumes', backups: 'Backups', isos: 'ISOs',
        monitoring: 'Monitoring', users: 'Users', audit: 'Audit', vm: 'Virtual machine',
      };
      return titles[this.route] || 'Fast VM';
    },

    /** Views still to come (Monitoring, Users, Audit for admins). */
    placeholderRoute() {
      return ['monitoring', 'users', 'audit'].includes(this.route) && !this.adminOnlyRoute();
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
    },

    applyTheme() {
      document.documentElement.classList.toggle('dark', this.theme === 'dark');
    },

    themeLabel() {
      return this.theme === 'dark' ? 'Light theme' : 'Dark theme';
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
