"""Drives a controller through the client openapi-python-client generated: every call must answer
200 with the body the document promises."""
import importlib
import sys

base, package = sys.argv[1], sys.argv[2]
api = importlib.import_module(package)
login = importlib.import_module(f"{package}.api.auth.login")
create_vm = importlib.import_module(f"{package}.api.vms.create_vm")
start_vm = importlib.import_module(f"{package}.api.vms.start_vm")
stop_vm = importlib.import_module(f"{package}.api.vms.stop_vm")
delete_vm = importlib.import_module(f"{package}.api.vms.delete_vm")
list_vms = importlib.import_module(f"{package}.api.vms.list_vms")
models = importlib.import_module(f"{package}.models")


def ok(response, what):
    assert response.status_code == 200, f"{what}: {response.status_code} {response.content!r}"
    assert response.parsed is not None, f"{what}: the body does not parse as the document says"
    return response.parsed


anonymous = api.Client(base_url=base)
token = ok(login.sync_detailed(client=anonymous, body=models.LoginRequest(username="admin", password="admin")), "login")
client = api.AuthenticatedClient(base_url=base, token=token.access_token)

spec = models.VmSpec(name="generated client", memory=256, cpus=1, disk_size=1)
made = ok(create_vm.sync_detailed(client=client, body=spec), "create")
vm_id = made.vm.id
started = ok(start_vm.sync_detailed(vm_id=vm_id, client=client), "start")
assert str(started.vm.status) in ("running", "VmStatus.RUNNING"), started.vm.status
stopped = ok(stop_vm.sync_detailed(vm_id=vm_id, client=client, force=True), "stop")
assert "stopped" in str(stopped.vm.status).lower(), stopped.vm.status
ok(delete_vm.sync_detailed(vm_id=vm_id, client=client), "delete")
assert all(v.id != vm_id for v in ok(list_vms.sync_detailed(client=client), "list")), "deleted"
print("generated Python client: login, create, start, stop, delete all answered 200")
