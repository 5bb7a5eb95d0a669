// Cloud-init seeds: the form of `POST /api/cloudinit`; the seed made is offered as the second ISO of
// a new VM or of an existing (stopped) one.

import { post, put } from './api.js';

function lines(text) {
  return text.split('\n').map((l) => l.trim()).filter((l) => l);
}

function blankSeed() {
  return { hostname: '', username: '', password: '', keys: '', packages: '', runcmd: '', network: 'dhcp', static_ip: '', gateway: '', dns: '' };
}

export function cloudInit() {
  return {
    seedForm: blankSeed(),
    seedError: '',
    seedPath: '',
    seedTarget: '',

    seedIsStatic() {
      return this.seedForm.network === 'static';
    },

    async createSeed() {
      const f = this.seedForm;
      const body = { hostname: f.hostname };
      if (f.username.trim()) body.username = f.username.trim();
      if (f.password) body.password = f.password;
      if (lines(f.keys).length) body.ssh_authorized_keys = lines(f.keys);
      if (f.packages.trim()) body.packages = f.packages;
      if (lines(f.runcmd).length) body.runcmd = lines(f.runcmd);
      if (f.network === 'static') {
        body.static_ip = f.static_ip;
        if (f.gateway.trim()) body.gateway = f.gateway.trim();
        if (f.dns.trim()) body.dns = f.dns;
      }
      this.busy = 'seed';
      this.seedError = '';
      try {
        const answer = await post('/api/cloudinit', body);
        this.seedPath = answer.iso_path;
        this.seedForm = blankSeed();
        this.toast('ok', answer.message);
        await this.openIsos();
      } catch (e) {
        this.seedError = e.message;
      } finally {
        this.busy = '';
      }
    },

    stoppedVms() {
      return this.vms.filter((v) => v.status !== 'running');
    },

    async newVmWithSeed() {
      await this.openForm('create');
      this.form.secondary_iso_path = this.seedPath;
    },

    async seedToVm() {
      const vm = this.vms.find((v) => v.id === this.seedTarget);
      if (!vm) return;
      const path = '/api/vms/' + vm.id;
      const done = vm.name + ' gets the seed as its second ISO';
      if (await this.attempt('seed', vm.name, () => put(path, { secondary_iso_path: this.seedPath }), done)) {
        vm.secondary_iso_path = this.seedPath;
      }
    },
  };
}
