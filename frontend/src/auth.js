// Signing in and out, and the password change a new account must make before anything else.

import { ApiError, get, post, setToken, token } from './api.js';

export function auth() {
  return {
    user: null,
    checked: false,
    loginForm: { username: '', password: '' },
    loginError: '',
    passwordForm: { current: '', next: '', again: '' },
    passwordError: '',
    busy: '',

    async loadUser() {
      if (!token()) {
        this.checked = true;
        return;
      }
      try {
        this.user = await get('/api/auth/me');
      } catch {
        this.user = null;
      }
      this.checked = true;
    },

    signedIn() {
      return this.checked && this.user !== null;
    },

    needsLogin() {
      return this.checked && this.user === null;
    },

    mustChange() {
      return this.signedIn() && this.user.must_change_password;
    },

    ready() {
      return this.signedIn() && !this.user.must_change_password;
    },

    isAdmin() {
      return this.signedIn() && this.user.is_admin;
    },

    /** A view only admins have, asked for by someone else (by URL): it is not shown. */
    adminOnlyRoute() {
      return (this.route === 'users' || this.route === 'audit') && !this.isAdmin();
    },

    async login() {
      this.busy = 'login';
      this.loginError = '';
      try {
        const answer = await post('/api/auth/login', this.loginForm);
        setToken(answer.access_token);
        this.loginForm.password = '';
        await this.loadUser();
        this.afterLogin();
      } catch (e) {
        if (e instanceof ApiError && e.status === 429) {
          this.loginError = 'Too many failed attempts: try again in ' + e.retryAfter + ' s.';
        } else {
          this.loginError = e.message;
        }
      } finally {
        this.busy = '';
      }
    },

    accountOpen: false,

    openAccount() {
      this.passwordForm = { current: '', next: '', again: '' };
      this.passwordError = '';
      this.accountOpen = true;
    },

    closeAccount() {
      this.accountOpen = false;
    },

    async changePassword() {
      this.passwordError = '';
      if (this.passwordForm.next !== this.passwordForm.again) {
        this.passwordError = 'The two new passwords differ.';
        return;
      }
      this.busy = 'password';
      try {
        await post('/api/auth/change-password', {
          current_password: this.passwordForm.current,
          new_password: this.passwordForm.next,
        });
        const forced = this.user.must_change_password;
        this.passwordForm = { current: '', next: '', again: '' };
        this.accountOpen = false;
        await this.loadUser();
        this.toast('ok', 'Password changed');
        if (forced) this.afterLogin();
      } catch (e) {
        this.passwordError = e.message;
      } finally {
        this.busy = '';
      }
    },

    async logout() {
      try {
        await post('/api/auth/logout');
      } catch {
        // Signed out locally either way.
      }
      this.signedOut('Signed out.');
    },

    signedOut(message) {
      setToken(null);
      this.user = null;
      this.loginError = message;
      this.stopLive();
    },
  };
}
