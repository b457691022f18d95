"""The delete-side snippets (components/render/systemd.py) run by real systemd on a throwaway host."""

import pytest

from components.render.systemd import remove_unit, stop_for_good, update_unit_file


def crashing(restart: str) -> str:
    return f"[Service]\nExecStart=/bin/false\nRestart={restart}\nRestartSec=60\n\n[Install]\nWantedBy=multi-user.target\n"


def state(host, unit):
    return host.ssh(f"systemctl is-active {unit}", check=False).stdout.strip()


@pytest.mark.parametrize("restart", ["no", "on-failure"])  # failed; crashed and waiting 60 s to restart
def test_a_removed_unit_is_not_left_failed(start_host, restart):
    host = start_host("sysd1", "10.231.0.31")
    unit = "nxfarm-crashing.service"
    host.ssh(f"install -m 0644 /dev/stdin /etc/systemd/system/{unit} && systemctl daemon-reload && "
             f"systemctl enable --now {unit}", stdin=crashing(restart))
    host.ssh(f"for i in $(seq 50); do systemctl show -p Result {unit} | grep -q exit-code && exit 0; "
             "sleep 0.1; done; exit 1")

    host.ssh(remove_unit(unit))

    assert state(host, unit) in ("inactive", "unknown")
    assert unit not in host.ssh("systemctl list-units --failed --all --plain --no-legend").stdout
    assert host.ssh(f"test -e /etc/systemd/system/{unit}", check=False).returncode


def test_stop_for_good_leaves_units_disabled_and_stopped_in_order(start_host):
    host = start_host("sysd2", "10.231.0.32")
    units = {"nxfarm-a.service": "[Service]\nExecStart=/bin/sleep 600\n\n[Install]\nWantedBy=multi-user.target\n",
             "nxfarm-a.timer": "[Timer]\nOnUnitActiveSec=1h\nUnit=nxfarm-a.service\n\n[Install]\nWantedBy=timers.target\n"}
    for unit, text in units.items():
        host.ssh(f"install -m 0644 /dev/stdin /etc/systemd/system/{unit}", stdin=text)
    host.ssh("systemctl daemon-reload && systemctl enable --now nxfarm-a.service nxfarm-a.timer")
    assert [state(host, unit) for unit in units] == ["active", "active"]

    host.ssh(stop_for_good("nxfarm-a.timer", "nxfarm-a.service", "nxfarm-missing.service"))

    for unit in units:
        assert state(host, unit) == "inactive"
        assert host.ssh(f"systemctl is-enabled {unit}", check=False).stdout.strip() == "disabled"


def test_an_update_restarts_the_unit_only_when_its_file_changed(start_host):
    host = start_host("sysd3", "10.231.0.33")
    unit = "nxfarm-b.service"
    text = "[Service]\nExecStart=/bin/sleep 600\n\n[Install]\nWantedBy=multi-user.target\n"
    host.ssh(f"install -m 0644 /dev/stdin /etc/systemd/system/{unit} && systemctl daemon-reload && "
             f"systemctl enable --now {unit}", stdin=text)

    def main_pid():
        return host.ssh(f"systemctl show -p MainPID --value {unit}").stdout.strip()

    first = main_pid()
    host.ssh(update_unit_file(unit, restart=True), stdin=text)
    assert main_pid() == first
    host.ssh(update_unit_file(unit, restart=False), stdin=text.replace("600", "601"))
    assert main_pid() == first and "sleep 601" in host.ssh(f"cat /etc/systemd/system/{unit}").stdout
    host.ssh(update_unit_file(unit, restart=True), stdin=text.replace("600", "602"))
    assert main_pid() != first and "sleep 602" in host.ssh(f"ps -o args= -p {main_pid()}").stdout
    assert not host.ssh("find /tmp -maxdepth 1 -name 'tmp.*'").stdout  # the staged copies are gone


def test_preflight_names_what_a_host_lacks_before_anything_is_installed(start_host):
    """components/render/host.py's check, run by real sshd and Debian packages."""
    import shlex

    from components.render.host import preflight_script
    from components.settings import AgentSettings
    from tests.helpers import AGE_A, host_key

    host = start_host("sysd3", "10.231.0.33")
    agent = AgentSettings(name="a", host=host.ip, host_key=host_key(), age_recipient=AGE_A)
    check = lambda: host.ssh(f"sh -c {shlex.quote(preflight_script(agent, 'nx-farm:agents (name: a)'))}",  # noqa: E731
                             check=False)
    assert check().stdout.strip() == "ok: python 3.11, x86_64"

    # sshd without the sftp subsystem (pulumi-command copies over SFTP)
    host.ssh("sed -i 's/^Subsystem/#Subsystem/' /etc/ssh/sshd_config")
    failed = check()
    assert failed.returncode == 1 and "nx-farm:agents (name: a): sshd has no sftp subsystem" in failed.stderr
    host.ssh("sed -i 's/^#Subsystem/Subsystem/' /etc/ssh/sshd_config")

    # python3 without python3-venv (Debian splits ensurepip out of python3)
    host.ssh("dpkg --remove --force-depends python3.11-venv >/dev/null 2>&1")
    failed = check()
    assert failed.returncode == 1 and "python3-venv is missing: apt install python3-venv" in failed.stderr
