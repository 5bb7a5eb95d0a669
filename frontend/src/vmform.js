// One form for creating, editing and cloning a VM, with every field of the spec. Sensible defaults
// make "name + Create" enough; the server's message is shown next to the field it names, and nothing
// typed is lost on an error.

import { get, post, put } from './api.js';

const DEVICES = ['disk', 'cdrom', 'network'];

function blankNic() {
  return { type: 'nat', model: 'virtio', bridge_name: '', parent_interface: '', mac_address: '', port_forwards: [] };
}

function fromSpec(vm) {
  const tri = (v) => (v === true ? 'on' : v === false ? 'off' : 'default');
  return {
    name: vm.name,
    memory: vm.memory,
    cpus: vm.cpus,
    disk_size: vm.disk_size,
    iso_path: vm.iso_path || '',
    secondary_iso_path: vm.secondary_iso_path || '',
    os_type: vm.os_type,
    cpu_model: vm.cpu_model,
    display_type: vm.display_type,
    firmware: vm.firmware,
    secure_boot: tri(vm.secure_boot),
    tpm: tri(vm.tpm),
    boot: DEVICES.map((d) => ({ device: d, on: vm.boot_order.includes(d) })).sort(
      (a, b) => rank(vm.boot_order, a.device) - rank(vm.boot_order, b.device),
    ),
    networks: (vm.networks || []).map((n) => ({
      type: n.type,
      model: n.model,
      bridge_name: n.bridge_name || '',
      parent_interface: n.parent_interface || '',
      mac_address: n.mac_address || '',
      port_forwards: (n.port_forwards || []).map((f) => ({ ...f })),
    })),
  };
}

function rank(order, device) {
  const i = order.indexOf(device);
  return i < 0 ? 99 + DEVICES.indexOf(device) : i;
}

function defaults() {
  return fromSpec({
    name: '', memory: 2048, cpus: 1, disk_size: 20, os_type: 'linux', cpu_model: 'host', display_type: 'qxl',
    firmware: 'uefi', boot_order: ['disk', 'cdrom'], networks: [blankNic()],
  });
}

export function vmForm() {
  return {
    formOpen: false,
    formMode: 'create',
    formVm: null,
    form: defaults(),
    formErrors: {},
    formError: '',
    isos: [],
    bridges: [],
    interfaces: [],

    async openForm(mode, vm) {
      this.formMode = mode;
      this.formVm = vm || null;
      this.form = vm ? fromSpec(vm) : defaults();
      if (mode === 'clone') this.form.name = vm.name + ' clone';
      this.formErrors = {};
      this.formError = '';
      this.formOpen = true;
      const [isos, bridges, interfaces] = await Promise.all(
        ['/api/isos', '/api/bridges', '/api/interfaces'].map((p) => get(p).catch(() => [])),
      );
      this.isos = isos;
      this.bridges = bridges;
      this.interfaces = interfaces;
    },

    openCreate() {
      return this.openForm('create');
    },

    closeForm() {
      this.formOpen = false;
    },

    formTitle() {
      return { create: 'New virtual machine', edit: 'Edit ' + (this.formVm ? this.formVm.name : ''), clone: 'Clone ' + (this.formVm ? this.formVm.name : '') }[this.formMode];
    },

    submitLabel() {
      return { create: 'Create', edit: 'Save', clone: 'Clone' }[this.formMode];
    },

    isCloning() {
      return this.formMode === 'clone';
    },

    /** The server's message for `field` (its messages start with the field they are about). */
    fieldError(field) {
      return this.formErrors[field] || '';
    },

    moveBoot(i, by) {
      const list = this.form.boot.slice();
      const j = i + by;
      if (j < 0 || j >= list.length) return;
      [list[i], list[j]] = [list[j], list[i]];
      this.form.boot = list;
    },

    addNic() {
      this.form.networks = this.form.networks.concat([blankNic()]);
    },

    removeNic(i) {
      this.form.networks = this.form.networks.filter((_, k) => k !== i);
    },

    addForward(nic) {
      nic.port_forwards = nic.port_forwards.concat([{ host_port: 8080, guest_port: 80, protocol: 'tcp' }]);
    },

    removeForward(nic, i) {
      nic.port_forwards = nic.port_forwards.filter((_, k) => k !== i);
    },

    nicIs(nic, type) {
      return nic.type === type;
    },

    spec() {
      const f = this.form;
      const tri = (v) => (v === 'on' ? true : v === 'off' ? false : null);
      return {
        name: f.name,
        memory: Number(f.memory),
        cpus: Number(f.cpus),
        disk_size: Number(f.disk_size),
        iso_path: f.iso_path || null,
        secondary_iso_path: f.secondary_iso_path || null,
        os_type: f.os_type,
        cpu_model: f.cpu_model,
        display_type: f.display_type,
        firmware: f.firmware,
        secure_boot: tri(f.secure_boot),
        tpm: tri(f.tpm),
        boot_order: f.boot.filter((b) => b.on).map((b) => b.device),
        networks: f.networks.map((n) => {
          const nic = { type: n.type, model: n.model };
          if (n.type === 'bridge') nic.bridge_name = n.bridge_name;
          if (n.type === 'macvtap') nic.parent_interface = n.parent_interface;
          if (n.mac_address.trim()) nic.mac_address = n.mac_address.trim();
          if (n.type === 'nat') {
            nic.port_forwards = n.port_forwards.map((p) => ({
              host_port: Number(p.host_port), guest_port: Number(p.guest_port), protocol: p.protocol,
            }));
          }
          return nic;
        }),
      };
    },

    async submitForm() {
      this.busy = 'form';
      this.formErrors = {};
      this.formError = '';
      try {
        let answer;
        if (this.formMode === 'create') answer = await post('/api/vms', this.spec());
        else if (this.formMode === 'edit') answer = await put('/api/vms/' + this.formVm.id, this.spec());
        else {
          const f = this.form;
          answer = await post('/api/vms/' + this.formVm.id + '/clone', { name: f.name, memory: Number(f.memory), cpus: Number(f.cpus) });
        }
        const i = this.vms.findIndex((v) => v.id === answer.vm.id);
        if (i >= 0) this.vms.splice(i, 1, answer.vm);
        else this.vms.push(answer.vm);
        this.formOpen = false;
        this.toast('ok', answer.message || answer.vm.name + ' saved');
      } catch (e) {
        // "networks[0].bridge_name: ..." belongs to networks; "memory: ..." to memory.
        const field = /^([a-z_]+)[[.:]/.exec(e.message);
        if (field) this.formErrors = { [field[1]]: e.message };
        this.formError = e.message;
      } finally {
        this.busy = '';
      }
    },
  };
}
