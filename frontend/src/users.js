// Users (admins): list, create with a role, delete (refused while they own things unless their
// things are deleted or handed over), set another user's password. Everyone: their own password.

import { del, get, post } from './api.js';

export function users() {
  return {
    userList: [],
    userForm: { username: '', password: '', is_admin: false },
    userError: '',
    deleting: null,
    newPasswords: {},

    async openUsers() {
      if (!this.isAdmin()) return;
      try {
        this.userList = await get('/api/auth/users');
      } catch (e) {
        this.toast('error', 'Users: ' + e.message);
      }
    },

    roleLabel(u) {
      return (u.is_admin ? 'admin' : 'user') + (u.must_change_password ? ' · must change password' : '');
    },

    async createUser() {
      this.busy = 'user';
      this.userError = '';
      try {
        await post('/api/auth/users', this.userForm);
        this.toast('ok', 'User ' + this.userForm.username + ' created');
        this.userForm = { username: '', password: '', is_admin: false };
        await this.openUsers();
      } catch (e) {
        this.userError = e.message;
      } finally {
        this.busy = '';
      }
    },

    setNewPassword(u, value) {
      this.newPasswords = Object.assign({}, this.newPasswords, { [u.username]: value });
    },

    async setPassword(u) {
      const body = { new_password: this.newPasswords[u.username] || '' };
      const path = '/api/auth/users/' + encodeURIComponent(u.username) + '/password';
      const done = 'Password of ' + u.username + ' set; their sessions are signed out';
      if (await this.attempt('user', u.username, () => post(path, body), done)) this.setNewPassword(u, '');
      await this.openUsers();
    },

    askDeleteUser(u) {
      this.deleting = u;
    },

    cancelDeleteUser() {
      this.deleting = null;
    },

    async deleteUser(owned) {
      const u = this.deleting;
      this.deleting = null;
      const path = '/api/auth/users/' + encodeURIComponent(u.username) + '?owned=' + owned;
      await this.attempt('user', u.username, () => del(path), 'User ' + u.username + ' deleted');
      await this.openUsers();
      await this.refresh();
    },
  };
}
