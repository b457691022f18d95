"""What the real engine and providers do with the program, that plain mocks let pass: device
lookups against a tailnet stand-in, the order the engine would run steps in, what an input change
does (update, replace, nothing), and what Tailscale refuses. Each test names the defect of the
real-homelab issue it guards against; executing the steps on real hosts is tests/hosts."""

import copy
import json

import pytest
import yaml

from components.render.tailnet_policy import PolicyError, build_policy, parse_hujson
from components.settings import validate
from tests.standin.engine import Engine, StepFailed
from tests.standin.providers import providers
from tests.standin.tailnet import Device, Tailnet, enrolled, validate_policy

from tests.helpers import fake_wheel_sets

from .pulumi_harness import ROOT, run_program, unwrap
from .test_program import SSH_KEY, wheels  # noqa: F401 - the wheels fixture

REMOTE = ("command:remote:Command", "command:remote:CopyToRemote")


def run(config, tailnet=None, **kw):
    return run_program(config, {"sshPrivateKey": SSH_KEY}, tailnet=tailnet, **kw)


def example_stack():
    stack = yaml.safe_load((ROOT / "Pulumi.homelab.yaml").read_text())["config"]
    return {key.split(":", 1)[1]: value for key, value in stack.items() if key.startswith("nx-farm:")}


def closure(run_, name):
    """Everything a resource waits for, directly or through what it waits for."""
    by_name = run_.by_name()
    seen, todo = set(), [name]
    while todo:
        for dep in by_name[todo.pop()].depends_on:
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def test_preview_of_the_example_stack_passes_with_a_subnet_routed_agent():
    """Defect 1: agent-wsl is no tailnet device; looking it up aborted `pulumi preview`."""
    result = run(example_stack(), preview=True)
    assert result.error is None, result.error
    names = result.by_name()
    assert "agent-wsl-tags" not in names and "agent-wsl-key" not in names
    assert {"agent-desk-tags", "agent-nuc-tags", "cache-tags"} <= set(names)
    assert "tailnet-acl" in closure(result, "agent-wsl-preflight"), "its route grant comes with the policy"


def test_devices_are_found_by_their_tailnet_address_not_by_hostname(raw_config):
    """Defect 2: `name` was silently the device's OS hostname, and the first of two devices won."""
    tailnet = Tailnet([
        Device("agent-1", ["100.64.0.99"]),          # a stale device left by a reinstall, same hostname
        Device("desk-01", ["100.64.0.11"]),          # agent-1 as it really is, under another hostname
        Device("agent-2", ["100.64.0.12"]), Device("cache", ["100.64.0.10"]),
    ])
    result = run(raw_config, tailnet)
    assert result.error is None, result.error
    device_ids = {r.name: unwrap(r.inputs)["deviceId"] for r in result.of_type("tailscale:index/deviceTags:DeviceTags")}
    assert device_ids["agent-1-tags"] == tailnet.device_at("100.64.0.11").node_id


def test_a_host_with_no_device_at_its_address_stops_the_program_naming_the_key(raw_config):
    tailnet = Tailnet([Device("cache", ["100.64.0.10"]), Device("agent-2", ["100.64.0.12"])])
    result = run(raw_config, tailnet)
    assert "nx-farm:agents[0].host: no tailnet device has the address 100.64.0.11" in str(result.error)
    assert "tailnetDevice: false" in str(result.error)


def test_every_step_on_a_host_waits_for_the_service_user_and_for_the_hosts_tags(raw_config):
    """Defect 3: the env file's chgrp ran beside the step creating the user.
    Defect 5: host steps ran before the device was tagged, so operators could not reach it yet."""
    result = run(raw_config)
    assert "agent-1-runtime" in closure(result, "agent-1-env")
    tags_of = {"100.64.0.10": "cache-tags", "100.64.0.11": "agent-1-tags", "100.64.0.12": "agent-2-tags"}
    remote = [r for r in result.resources if r.typ in REMOTE]
    assert len(remote) > 20
    for resource in remote:
        needed = tags_of[unwrap(resource.inputs)["connection"]["host"]]
        assert {needed, "tailnet-acl"} <= closure(result, resource.name), resource.name


def test_the_example_base_policy_is_one_tailscale_accepts_and_unowned_tags_stop_preview():
    """Defect 4: the example granted to tag:home-assistant, which had no tagOwners entry."""
    settings = validate(example_stack())
    base_text = (ROOT / settings.tailnet.base_policy_file).read_text()
    policy = build_policy(parse_hujson(base_text, "base"), settings)
    assert validate_policy(policy) == []
    broken = parse_hujson(base_text, "base")
    del broken["tagOwners"]["tag:home-assistant"]
    assert validate_policy(broken)  # the stand-in refuses it as Tailscale would...
    with pytest.raises(PolicyError, match="tag:home-assistant used but not in tagOwners"):
        build_policy(broken, settings)  # ...and the program says so before any resource


def test_a_live_policy_is_never_overwritten_unless_adopted(raw_config):
    """Defect 4: the Acl always overwrote; now the first up stops, and no host step has run."""
    acl = unwrap(run(raw_config).by_name()["tailnet-acl"].inputs)
    assert acl["overwriteExistingContent"] is False
    live = {"grants": [{"src": ["autogroup:member"], "dst": ["autogroup:self"], "ip": ["*"]}]}
    tailnet = enrolled(raw_config, policy=live)
    engine = Engine(providers([], tailnet, None), seed=1, jitter=0)
    with pytest.raises(StepFailed) as failed:
        engine.up(run(raw_config, tailnet))
    assert list(failed.value.failures) == ["tailnet-acl"] and "Overwrite Protected" in str(failed.value)
    assert not [name for name, _ in failed.value.steps if name.startswith(("agent-", "cache-")) and
                not name.startswith("cache-token")], "nothing ran on a host"
    assert tailnet.policy == live
    adopted = run({**raw_config, "tailnet": {"overwriteExistingPolicy": True}}).by_name()["tailnet-acl"]
    assert unwrap(adopted.inputs)["overwriteExistingContent"] is True


def test_tags_and_key_settings_stay_when_a_host_leaves(raw_config):
    """Defect 6: DeviceTags' delete sets no tags, which Tailscale refuses for a tagged device."""
    result = run(raw_config)
    for resource in result.of_type("tailscale:index/deviceTags:DeviceTags") + \
            result.of_type("tailscale:index/deviceKey:DeviceKey"):
        assert resource.options["retain_on_delete"], resource.name
    tailnet = enrolled(raw_config)
    device = tailnet.device_at("100.64.0.11")
    tailnet.set_policy(json.loads(unwrap(result.by_name()["tailnet-acl"].inputs)["acl"]), if_match=None)
    tailnet.set_tags(device.node_id, ["tag:nx-agent"])
    with pytest.raises(Exception, match="reauthorizing"):
        tailnet.set_tags(device.node_id, [])  # what the provider's delete would have done


@pytest.mark.parametrize("change", ["host", "hostKey"])
def test_a_new_address_or_host_key_ships_the_wheels_again(raw_config, change):
    """Defect 7: CopyToRemote copies on update only for a new archive or remotePath."""
    from tests.helpers import host_key

    engine = Engine({}, seed=0)
    before = run(raw_config)
    for resource in before.resources:
        if resource.custom:
            engine.import_resource(resource.typ, resource.name, engine._plan([resource])[1][resource.name])
    moved = copy.deepcopy(raw_config)
    moved["agents"][0][change] = "100.64.0.21" if change == "host" else host_key(9)
    engine.providers = providers([], enrolled(moved), None)
    ops = engine.plan(run(moved))
    assert ops["agent-1-wheels"] == "replace"
    assert ops["agent-1-runtime"] == ops["agent-1-env"] == "update"  # run again on the new connection
    assert ops["agent-2-wheels"] == ops["agent-2-runtime"] == "same"


def test_the_engine_floor_is_pinned_for_the_options_the_program_uses(raw_config):
    """Defect 8: replacementTrigger (key rotation) is ignored silently by engines before 3.215."""
    from packaging.specifiers import SpecifierSet

    result = run(raw_config)
    assert any("replacement_trigger" in r.options for r in result.resources)
    required = SpecifierSet(yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["requiredPulumiVersion"])
    assert "3.214.0" not in required and "3.215.0" in required


def test_removals_leave_a_host_alone_once_another_name_owns_it(raw_config):
    """Defect 9 (executed on real hosts in tests/hosts): every delete checks the owner mark."""
    result = run(raw_config)
    for resource in result.resources:
        if resource.typ == "command:remote:Command" and resource.inputs.get("delete"):
            delete = unwrap(resource.inputs)["delete"]
            assert delete.startswith("owner=$(cat /etc/nx-farm/"), resource.name
    assert "echo agent-1 > /etc/nx-farm/agent.owner" in unwrap(result.by_name()["agent-1-runtime"].inputs)["create"]


def test_another_checkout_of_the_repository_changes_no_sops_step(raw_config):
    """Defect 10: the local commands recorded this checkout's absolute `dir`."""
    engine = Engine({"command:local:": providers([], enrolled(raw_config), None)["command:local:"]}, seed=0)
    for resource in run(raw_config).resources:
        if resource.typ == "command:local:Command":
            engine.import_resource(resource.typ, resource.name, {**unwrap(resource.inputs), "dir": "/home/bob/nx-farm"})
    ops = {name: op for name, op in engine.plan(run(raw_config)).items() if name.startswith("sops-")}
    assert ops and set(ops.values()) == {"same"}, ops


def test_ssh_rsa_host_keys_are_refused_with_the_fix(raw_config):
    """Defect 11: the provider would offer only SHA-1 `ssh-rsa`, which OpenSSH 8.8+ refuses."""
    raw = copy.deepcopy(raw_config)
    raw["agents"][1]["hostKey"] = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7"
    result = run(raw)
    assert "nx-farm:agents[1].hostKey: ssh-rsa host keys cannot be pinned" in str(result.error)
    assert "ssh-keyscan -t ed25519" in str(result.error) and result.resources == []


def test_a_dns_named_host_must_say_whether_it_is_a_device(raw_config):
    raw = copy.deepcopy(raw_config)
    raw["agents"][1].update(host="agent-2.lan", tailnetDevice=True)
    assert "agents[1]: tailnetDevice: true needs host to be the device's tailnet IP" in str(run(raw).error)
    raw["agents"][1]["tailnetDevice"] = False
    result = run(raw)
    assert result.error is None and "agent-2-tags" not in result.by_name()


def test_preflight_checks_what_the_deploy_needs_before_anything_is_installed(raw_config, wheels):
    fake_wheel_sets(wheels, ["cp313-aarch64"])
    result = run({**raw_config, "agents": [{**raw_config["agents"][0], "python": "3.13", "arch": "aarch64"}]})
    check = unwrap(result.by_name()["agent-1-preflight"].inputs)["create"]
    for needed in ("python3-venv", "sftp", "'3.13'", "aarch64", "nx-farm:agents (name: agent-1)"):
        assert needed in check, needed
    assert "agent-1-preflight" in closure(result, "agent-1-wheels")
    fewer = run({**raw_config, "agents": raw_config["agents"][1:]}).by_name()
    assert unwrap(fewer["agent-2-preflight"].inputs) == unwrap(run(raw_config).by_name()["agent-2-preflight"].inputs), \
        "removing another agent changes nothing of this one's"
    assert "cache-preflight" in closure(result, "cache-scheduler-wheels")


def test_each_host_gets_the_wheel_set_of_its_python_and_cpu(raw_config, wheels):
    fake_wheel_sets(wheels, ["cp313-aarch64", "cp312-x86_64"])
    raw = copy.deepcopy(raw_config)
    raw["cacheHost"].update(python="3.12")
    raw["agents"][1].update(python="3.13", arch="aarch64")
    names = run(raw).by_name()
    source = lambda name: unwrap(names[name].inputs)["source"][1]  # noqa: E731
    assert source("agent-1-wheels") == f"{wheels}/agent/cp311-x86_64/"
    assert source("agent-2-wheels") == f"{wheels}/agent/cp313-aarch64/"
    assert source("cache-wheels") == f"{wheels}/cache/cp312-x86_64/"
    assert source("cache-scheduler-wheels") == f"{wheels}/agent/cp312-x86_64/"


def test_a_host_no_wheel_set_fits_stops_the_program_naming_host_and_wheel(raw_config, wheels):
    fake_wheel_sets(wheels, ["cp313-aarch64"])
    next((wheels / "agent" / "cp313-aarch64").glob("cryptography-*.whl")).unlink()
    raw = copy.deepcopy(raw_config)
    raw["agents"][1].update(python="3.13", arch="aarch64")
    raw["agents"][0].update(python="3.12")
    result = run(raw)
    assert result.resources == []
    lines = str(result.error).splitlines()
    assert "nx-farm:agents[0]: no wheel of nxfarm fits Python 3.12 on x86_64" in lines[1]
    assert "nx-farm:agents[1]: no wheel of cryptography==50.0.2 fits Python 3.13 on aarch64" in lines[2]


def test_a_compiled_wheel_for_another_platform_does_not_count(raw_config, wheels):
    """A cp311 x86_64 wheel in the aarch64 set (a copy mistake) is no wheel for that host."""
    fake_wheel_sets(wheels, ["cp313-aarch64"])
    target = wheels / "agent" / "cp313-aarch64"
    next(target.glob("psutil-*.whl")).rename(target / "psutil-7.2.2-cp311-cp311-manylinux_2_17_x86_64.whl")
    raw = copy.deepcopy(raw_config)
    raw["agents"][1].update(python="3.13", arch="aarch64")
    assert "no wheel of psutil==7.2.2 fits Python 3.13 on aarch64" in str(run(raw).error)
